"""Retrieval evaluation of a query encoder against a fixed document index (BEIR-format data).

Document embeddings are computed once per (document model, corpus) and cached on disk under a fingerprint
of both, so scoring many query encoders costs one corpus encoding.

Example:
    >>> data = load_beir("benchmarks/data/scifact", split="test")  # doctest: +SKIP
    >>> docs = document_embeddings(teacher, data.corpus, cache_dir=".cache/kale_st")  # doctest: +SKIP
    >>> evaluate_retrieval(student, data, docs)["ndcg@10"]  # doctest: +SKIP
    >>> evaluate(pair, data)["ndcg@10"]  # the same, documents by pair.document_model, cached  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import load_file, save_file
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

from kale_st.pair import AsymmetricPair

#: Where document embeddings are cached by default (relative to the working directory).
DEFAULT_CACHE = Path(".cache") / "kale_st"


@dataclass
class BeirData:
    """One split of a BEIR dataset: ``corpus`` id -> text, ``queries`` id -> text, ``relevant`` id -> doc ids."""

    corpus: dict[str, str]
    queries: dict[str, str]
    relevant: dict[str, set[str]]


def load_beir(source: str | os.PathLike, split: str = "test") -> BeirData:
    """One split of a BEIR dataset; only the split's queries are kept.

    ``source`` is a folder with ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/{split}.tsv``, or a Hugging Face
    dataset id in the BEIR layout (``BeIR/scifact``: configs ``corpus`` and ``queries``, qrels in ``BeIR/scifact-qrels``).
    """
    root = Path(source)
    if not root.exists() and str(source).count("/") == 1:
        return _load_beir_hub(str(source), split)
    qrels = root / "qrels" / f"{split}.tsv"
    for path in (root / "corpus.jsonl", root / "queries.jsonl", qrels):
        if not path.is_file():
            raise ValueError(f"{path} is missing: a BEIR folder has corpus.jsonl, queries.jsonl and qrels/{split}.tsv.")
    with qrels.open(encoding="utf-8") as handle:
        judgements = list(csv.DictReader(handle, delimiter="\t"))
    read = lambda name: [json.loads(line) for line in (root / name).read_text(encoding="utf-8").splitlines() if line]
    return _beir_data(read("corpus.jsonl"), read("queries.jsonl"), judgements)


def _load_beir_hub(dataset_id: str, split: str) -> BeirData:
    """The BEIR layout on the Hugging Face Hub, read with ``datasets``."""
    from datasets import load_dataset

    try:
        corpus = load_dataset(dataset_id, "corpus", split="corpus")
        queries = load_dataset(dataset_id, "queries", split="queries")
        judgements = load_dataset(f"{dataset_id}-qrels", split=split)
    except Exception as error:  # datasets raises many kinds (offline, missing config, missing split)
        raise ValueError(
            f"Could not load the BEIR dataset {dataset_id!r} (split {split!r}) from the Hugging Face Hub: {error}. "
            "Pass a local BEIR folder instead (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)."
        ) from error
    return _beir_data(corpus, queries, judgements)


def _beir_data(corpus: Iterable[dict], queries: Iterable[dict], judgements: Iterable[dict]) -> BeirData:
    relevant: dict[str, set[str]] = {}
    for row in judgements:
        if int(row["score"]) > 0:
            relevant.setdefault(str(row["query-id"]), set()).add(str(row["corpus-id"]))
    return BeirData(
        corpus={str(d["_id"]): (d.get("title", "") + " " + d["text"]).strip() for d in corpus},
        queries={str(q["_id"]): q["text"] for q in queries if str(q["_id"]) in relevant},
        relevant=relevant,
    )


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


class _Scorer(InformationRetrievalEvaluator):
    """sentence-transformers' retrieval evaluator, without recording its scores in the model's card: scoring a model
    leaves it as it was, and a pair's cards show the scores the caller records, named (``metadata["evaluation"]``)."""

    def store_metrics_in_model_card_data(self, *args: object, **kwargs: object) -> None:
        return None


def evaluate_retrieval(
    query_model: SentenceTransformer, data: BeirData, corpus_embeddings: torch.Tensor, batch_size: int = 64
) -> dict[str, float]:
    """nDCG@10, MRR@10 and Recall@100 of ``query_model`` searching ``corpus_embeddings`` (its card is not touched)."""
    evaluator = _Scorer(
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


def evaluate(
    model: SentenceTransformer | AsymmetricPair,
    data: BeirData,
    *,
    document_model: SentenceTransformer | None = None,
    cache_dir: str | os.PathLike | None = DEFAULT_CACHE,
    batch_size: int = 64,
) -> dict[str, float]:
    """Score a pair (its query model against its document model) or a query model (against ``document_model``,
    by default itself); the document embeddings come from the cache when the same model and corpus made them."""
    if isinstance(model, AsymmetricPair):
        query_model, document_model = model.query_model, document_model or model.document_model
    else:
        query_model, document_model = model, document_model or model
    corpus_embeddings = document_embeddings(document_model, data.corpus, cache_dir=cache_dir, batch_size=batch_size)
    return evaluate_retrieval(query_model, data, corpus_embeddings, batch_size=batch_size)
