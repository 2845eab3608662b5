"""Before choosing ``layers=0``: which of your queries a static student serves like its teacher, without labels.

A static student averages one vector per token, so it cannot see word order or context. :func:`static_check` measures,
per query, how much of the teacher's top-k over your own index the student retrieves (``overlap``), the student's
cosine to the teacher, and how much the *teacher* itself moves when the query's words are reversed
(``order_sensitivity``, something no static model can follow), and groups the queries by length, negation and that
sensitivity. Run it on held-out queries of your own, with a static student aligned on the others.

Example:
    >>> pair = kale_st.align(teacher, train_queries, layers=0)  # doctest: +SKIP
    >>> docs = teacher.encode_document(corpus, convert_to_tensor=True)  # doctest: +SKIP
    >>> report = static_check(teacher, pair.query_model, held_out_queries, docs)  # doctest: +SKIP
    >>> report["overall"]["overlap"], report["groups"]["negation"]  # doctest: +SKIP
    >>> report["queries"][:5]  # the five queries the student serves worst  # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from sentence_transformers import SentenceTransformer

#: Words that negate a claim ("does not", "no effect", "without", "fails to", "n't").
NEGATION = re.compile(r"\b(?:not|no|never|none|neither|nor|without|cannot|lack|lacks|fail|fails|absent)\b|n't\b", re.I)
#: Query length groups, in the teacher's tokens (no special tokens): upper bounds, inclusive.
LENGTHS = ((8, "1-8 tokens"), (16, "9-16 tokens"), (32, "17-32 tokens"), (10**9, "over 32 tokens"))
#: Order sensitivity groups: ``1 - cos(teacher(q), teacher(q with its words reversed))``, upper bounds, inclusive.
ORDER = ((0.05, "order-insensitive (< 0.05)"), (0.15, "order 0.05-0.15"), (2.0, "order-sensitive (> 0.15)"))


def static_check(
    teacher: SentenceTransformer,
    student: SentenceTransformer,
    queries: Sequence[str],
    document_embeddings: torch.Tensor,
    *,
    k: int = 10,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Per-query agreement of ``student`` with ``teacher`` on an index made by the teacher (label-free).

    Args:
        teacher: The query encoder whose index ``document_embeddings`` is.
        student: The student to check (any query encoder; meant for ``align(..., layers=0)``).
        queries: Queries of your own that the student was not aligned on.
        document_embeddings: ``(documents, dim)`` embeddings of your corpus by the teacher's document side.
        k: Depth of the top-k overlap.

    Returns:
        ``{"overall": {...}, "groups": {group: {...}}, "queries": [...]}``: ``overall`` and each group have ``queries``
        (count), ``overlap`` (mean share of the teacher's top-k that the student also retrieves), ``cosine`` (mean
        student-teacher cosine) and ``low_overlap`` (share of queries with overlap below 0.5); ``queries`` holds one
        row per query (``query``, ``tokens``, ``negation``, ``order_sensitivity``, ``overlap``, ``cosine``), worst
        overlap first.
    """
    texts = list(queries)
    if not texts or any(not isinstance(text, str) for text in texts):
        raise ValueError("queries must be a non-empty list of strings (held-out queries of your own).")
    if document_embeddings.ndim != 2 or document_embeddings.shape[0] < k:
        raise ValueError(f"document_embeddings must be (documents, dim) with at least k={k} documents.")
    encode = lambda model, batch: model.encode_query(batch, batch_size=batch_size, convert_to_tensor=True).cpu().float()
    t, s = encode(teacher, texts), encode(student, texts)
    reversed_t = encode(teacher, [" ".join(text.split()[::-1]) for text in texts])
    documents = document_embeddings.cpu().float()
    top_t = teacher.similarity(t, documents).topk(k, dim=1).indices
    top_s = teacher.similarity(s, documents).topk(k, dim=1).indices
    cosine = torch.nn.functional.cosine_similarity(s, t)
    order = 1 - torch.nn.functional.cosine_similarity(t, reversed_t)
    tokens = [len(teacher.tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
    rows = [
        {
            "query": text,
            "tokens": tokens[i],
            "negation": bool(NEGATION.search(text)),
            "order_sensitivity": round(order[i].item(), 4),
            "overlap": len(set(top_t[i].tolist()) & set(top_s[i].tolist())) / k,
            "cosine": round(cosine[i].item(), 4),
        }
        for i, text in enumerate(texts)
    ]
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        for name in groups_of(row):
            groups.setdefault(name, []).append(row)
    order_of = [label for _, label in LENGTHS] + ["negation", "no negation"] + [label for _, label in ORDER]
    return {
        "overall": summarize(rows),
        "groups": {name: summarize(groups[name]) for name in order_of if name in groups},
        "queries": sorted(rows, key=lambda row: (row["overlap"], row["cosine"])),
    }


def groups_of(row: dict[str, Any]) -> list[str]:
    """The groups of a :func:`static_check` row: its length, negation and word-order sensitivity groups."""
    return [
        next(label for bound, label in LENGTHS if row["tokens"] <= bound),
        "negation" if row["negation"] else "no negation",
        next(label for bound, label in ORDER if row["order_sensitivity"] <= bound),
    ]


def summarize(rows: Sequence[dict[str, Any]], keys: Sequence[str] = ("overlap", "cosine")) -> dict[str, Any]:
    """Count, means of ``keys`` and the share of rows with overlap below 0.5."""
    summary: dict[str, Any] = {"queries": len(rows)}
    for key in keys:
        summary[key] = round(sum(row[key] for row in rows) / len(rows), 4)
    summary["low_overlap"] = round(sum(row["overlap"] < 0.5 for row in rows) / len(rows), 4)
    return summary
