"""kale_st.evaluation: BEIR loading, cached document embeddings (never stale), retrieval scores."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
from conftest import tiny_model

import kale_st
from kale_st.evaluation import document_embeddings, evaluate, evaluate_retrieval, load_beir

DOCS = {"d1": "the cat is fast", "d2": "a dog on the document", "d3": "dense retrieval with a model", "d4": "query and layer"}
QUERIES = {"q1": "the cat is fast", "q2": "dense retrieval with a model", "q9": "no judgement for this one"}
QRELS = [("q1", "d1", 1), ("q2", "d3", 1), ("q2", "d4", 0)]
SCIFACT = Path(__file__).parents[1] / "benchmarks" / "data" / "scifact"


def write_beir(root: Path, split: str = "test") -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in DOCS.items()))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in QUERIES.items()))
    lines = ["query-id\tcorpus-id\tscore", *(f"{q}\t{d}\t{s}" for q, d, s in QRELS)]
    (root / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


def test_load_beir_folder_keeps_the_split_queries_and_positive_judgements(tmp_path: Path) -> None:
    data = load_beir(write_beir(tmp_path / "beir"), "test")
    assert data.corpus == DOCS
    assert data.queries == {"q1": QUERIES["q1"], "q2": QUERIES["q2"]}  # q9 has no judgement in this split
    assert data.relevant == {"q1": {"d1"}, "q2": {"d3"}}  # score 0 is not relevant


def test_load_beir_bundled_scifact_sizes() -> None:
    test, train = load_beir(SCIFACT, "test"), load_beir(SCIFACT, "train")
    assert (len(test.corpus), len(test.queries), len(train.queries)) == (5183, 300, 807)
    assert not set(test.queries) & set(train.queries)


def test_load_beir_errors_name_the_missing_file(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "beir")
    with pytest.raises(ValueError, match=r"dev\.tsv is missing"):
        load_beir(root, "dev")


def test_load_beir_hub_layout_is_read_with_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    tables = {
        ("org/beir", "corpus", "corpus"): [{"_id": i, "title": "", "text": t} for i, t in DOCS.items()],
        ("org/beir", "queries", "queries"): [{"_id": i, "title": "", "text": t} for i, t in QUERIES.items()],
        ("org/beir-qrels", None, "test"): [{"query-id": q, "corpus-id": d, "score": s} for q, d, s in QRELS],
    }
    calls = []

    def fake_load_dataset(name: str, config: str | None = None, *, split: str) -> datasets.Dataset:
        calls.append((name, config, split))
        return datasets.Dataset.from_list(tables[(name, config, split)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_beir("org/beir", "test")
    assert sorted(calls) == sorted(tables)
    assert data.queries == {"q1": QUERIES["q1"], "q2": QUERIES["q2"]} and data.relevant == {"q1": {"d1"}, "q2": {"d3"}}

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("offline")))
    with pytest.raises(ValueError, match="Could not load the BEIR dataset 'org/beir'.*local BEIR folder"):
        load_beir("org/beir", "test")


def test_document_cache_is_reused_and_never_stale(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m")
    cache = tmp_path / "cache"
    first = document_embeddings(model, DOCS, cache_dir=cache)
    assert len(list(cache.iterdir())) == 1
    cached_file = next(cache.iterdir())
    # Reuse: a poisoned cache file is what comes back, so the corpus was not encoded again.
    from safetensors.torch import save_file

    save_file({"embeddings": torch.zeros_like(first)}, cached_file)
    assert torch.equal(document_embeddings(model, DOCS, cache_dir=cache), torch.zeros_like(first))
    # Never stale: other weights or another corpus get their own entry, computed fresh.
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    changed = document_embeddings(model, DOCS, cache_dir=cache)
    assert not torch.equal(changed, torch.zeros_like(first)) and not torch.allclose(changed, first)
    edited = document_embeddings(model, {**DOCS, "d4": "query and fast layer"}, cache_dir=cache)
    assert torch.allclose(edited[:3], changed[:3], atol=1e-6) and not torch.allclose(edited[3], changed[3])
    assert len(list(cache.iterdir())) == 3


def test_evaluate_pair_and_query_model(tmp_path: Path) -> None:
    data = load_beir(write_beir(tmp_path / "beir"), "test")
    model = tiny_model(tmp_path / "m")
    scores = evaluate(model, data, cache_dir=tmp_path / "cache")
    assert scores["ndcg@10"] == pytest.approx(1.0) and scores["mrr@10"] == pytest.approx(1.0)  # queries equal their docs
    pruned = kale_st.prune_layers(model, 1)
    pair = kale_st.AsymmetricPair(query_model=pruned, document_model=model)
    docs = document_embeddings(model, data.corpus)
    assert evaluate(pair, data, cache_dir=tmp_path / "cache") == evaluate_retrieval(pruned, data, docs)
    assert len(list((tmp_path / "cache").iterdir())) == 1  # one corpus encoding for both
