"""Retrieval evaluation of a query encoder against a fixed document index (BEIR-format data).

Document embeddings are computed once per (document model, corpus) and cached on disk under a fingerprint
of both, so scoring many query encoders costs one corpus encoding.

Example:
    >>> data = load_beir("benchmarks/data/scifact", split="test")  # doctest: +SKIP
    >>> docs = document_embeddings(teacher, data.corpus, cache_dir=".cache/kale_st")  # doctest: +SKIP
    >>> evaluate_retrieval(student, data, docs)["ndcg@10"]  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator


@dataclass
class BeirData:
    """One split of a BEIR dataset: ``corpus`` id -> text, ``queries`` id -> text, ``relevant`` id -> doc ids."""

    corpus: dict[str, str]
    queries: dict[str, str]
    relevant: dict[str, set[str]]


def load_beir(folder: str | os.PathLike, split: str = "test") -> BeirData:
    """Read ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/{split}.tsv``; only the split's queries are kept."""
    root = Path(folder)
    qrels = root / "qrels" / f"{split}.tsv"
    for path in (root / "corpus.jsonl", root / "queries.jsonl", qrels):
        if not path.is_file():
            raise ValueError(f"{path} is missing: a BEIR folder has corpus.jsonl, queries.jsonl and qrels/{split}.tsv.")
    relevant: dict[str, set[str]] = {}
    with qrels.open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            if int(row["score"]) > 0:
                relevant.setdefault(row["query-id"], set()).add(row["corpus-id"])
    corpus = {}
    for line in (root / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
        doc = json.loads(line)
        corpus[doc["_id"]] = (doc.get("title", "") + " " + doc["text"]).strip()
    queries = {}
    for line in (root / "queries.jsonl").read_text(encoding="utf-8").splitlines():
        query = json.loads(line)
        if query["_id"] in relevant:
            queries[query["_id"]] = query["text"]
    return BeirData(corpus=corpus, queries=queries, relevant=relevant)


def fingerprint(model: SentenceTransformer, corpus: dict[str, str]) -> str:
    """A hash of the model's weights and configuration and of the corpus ids and texts."""
    digest = hashlib.sha256()
    digest.update(repr(model).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    for doc_id, text in corpus.items():
        digest.update(f"{doc_id}\0{text}\0".encode())
    return digest.hexdigest()[:32]


def document_embeddings(
    model: SentenceTransformer,
    corpus: dict[str, str],
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """Embeddings of ``corpus`` by ``model`` (in corpus order), read from or written to ``cache_dir``."""
    cache = Path(cache_dir) / f"documents-{fingerprint(model, corpus)}.safetensors" if cache_dir else None
    if cache is not None and cache.is_file():
        return load_file(cache)["embeddings"]
    embeddings = model.encode_document(
        list(corpus.values()), batch_size=batch_size, convert_to_tensor=True, show_progress_bar=True
    ).cpu()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(f".{os.getpid()}.tmp")
        save_file({"embeddings": embeddings.contiguous()}, partial)
        partial.replace(cache)
    return embeddings


def evaluate_retrieval(
    query_model: SentenceTransformer, data: BeirData, corpus_embeddings: torch.Tensor, batch_size: int = 64
) -> dict[str, float]:
    """nDCG@10, MRR@10 and Recall@100 of ``query_model`` searching ``corpus_embeddings``."""
    evaluator = InformationRetrievalEvaluator(
        queries=data.queries,
        corpus=data.corpus,
        relevant_docs=data.relevant,
        mrr_at_k=[10],
        ndcg_at_k=[10],
        accuracy_at_k=[1],
        precision_recall_at_k=[100],
        map_at_k=[100],
        batch_size=batch_size,
        score_functions={"cosine": query_model.similarity},
        write_csv=False,
    )
    scores = evaluator(query_model, corpus_embeddings=corpus_embeddings.to(query_model.device))
    return {
        "ndcg@10": scores["cosine_ndcg@10"],
        "mrr@10": scores["cosine_mrr@10"],
        "recall@100": scores["cosine_recall@100"],
    }
