"""Label-free alignment: pseudo-queries cut from a corpus, ``align(model, corpus=...)`` and ``kale-st align --corpus``."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import tiny_model
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from test_cli import fails, library_settings, run  # noqa: F401  (library_settings: autouse, restores logging)

import kale_st
import kale_st.cli.build
from kale_st.queries import load_corpus, pseudo_queries

WORDS = "cells proteins express signal pathway tumour growth receptor binding reduces increases patients".split()
# Ten documents of five sentences of 3, 12, 21, 30 and 39 words; no word appears twice in the corpus.
CORPUS = [
    " ".join(
        " ".join([f"D{d}S{s}"] + [f"{WORDS[(s + w) % len(WORDS)]}{d}x{w}" for w in range(2 + 9 * s)]) + "."
        for s in range(5)
    )
    for d in range(10)
]


def normalized(text: str) -> str:
    return " ".join(text.split())


def test_pseudo_queries_are_spans_of_the_corpus_within_the_length_bounds() -> None:
    queries = pseudo_queries(CORPUS, 30, seed=1, min_words=4, max_words=12)
    assert len(queries) == 30
    assert all(4 <= len(q.split()) <= 12 for q in queries)
    assert all(any(q in normalized(doc) for doc in CORPUS) for q in queries)  # contiguous words of a document
    assert all(not q.endswith(".") for q in queries)
    assert not any("S0 " in q for q in queries)  # the 3-word sentences are too short
    assert any(q.startswith("D") and len(q.split()) == 12 for q in queries)  # a 12-word sentence is taken whole
    # Round robin: the first 10 come from the 10 documents, one each.
    sources = [next(d for d, doc in enumerate(CORPUS) if q in normalized(doc)) for q in queries[:10]]
    assert sorted(sources) == list(range(10))


def test_pseudo_queries_are_deterministic_by_seed() -> None:
    assert pseudo_queries(CORPUS, 25, seed=3) == pseudo_queries(CORPUS, 25, seed=3)
    assert pseudo_queries(CORPUS, 25, seed=3) != pseudo_queries(CORPUS, 25, seed=4)
    assert pseudo_queries(CORPUS, 10, seed=3) == pseudo_queries(CORPUS, 25, seed=3)[:10]  # a prefix of a longer run


def test_pseudo_queries_are_deduplicated_and_stop_when_the_corpus_runs_out(caplog: pytest.LogCaptureFixture) -> None:
    corpus = ["Aspirin lowers the risk of cancer. ASPIRIN LOWERS THE RISK OF CANCER. Too short."] * 3
    with caplog.at_level(logging.WARNING, logger="kale_st"):
        queries = pseudo_queries(corpus, 10)
    assert [q.lower() for q in queries] == ["aspirin lowers the risk of cancer"]  # one of the two spellings
    assert "1 distinct pseudo-queries, fewer than the 10" in caplog.text


def test_sentences_split_at_sentence_ends_only() -> None:
    text = "Tumour growth was reduced, e.g. in mice. The effect held in 12 of 14 patients! Was it significant? Yes"
    assert sorted(pseudo_queries([text], 10, min_words=3)) == sorted(
        ["Tumour growth was reduced, e.g. in mice", "The effect held in 12 of 14 patients!", "Was it significant?"]
    )


def test_corpus_forms(tmp_path: Path) -> None:
    records = [{"_id": "d1", "title": "Aspirin and colon cancer risk", "text": "A trial of many adults over ten years."},
               {"_id": "d2", "title": "", "text": "Statins lower cholesterol in most patients."}]
    beir = tmp_path / "beir"
    beir.mkdir()
    (beir / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "docs.txt").write_text("first document here\n\n second document here \n")
    expected = ["Aspirin and colon cancer risk. A trial of many adults over ten years.",
                "Statins lower cholesterol in most patients."]
    assert load_corpus(beir) == load_corpus(beir / "corpus.jsonl") == expected
    assert load_corpus(Dataset.from_list(records)) == expected
    assert load_corpus({"a": "one", "b": "two"}) == ["one", "two"]
    assert load_corpus(tmp_path / "docs.txt") == ["first document here", "second document here"]
    assert "Aspirin and colon cancer risk" in pseudo_queries(beir, 10)  # a title is a sentence of its own


@pytest.mark.parametrize(
    ("corpus", "kwargs", "message"),
    [
        (CORPUS, {"num_queries": 0}, "at least 1 pseudo-query"),
        (CORPUS, {"min_words": 5, "max_words": 4}, "min_words <= max_words"),
        ([], {}, "corpus is empty"),
        (["", "  "], {}, "corpus is empty"),
        (["ok", 3], {}, "corpus document 1 is a int"),
        (["far too short", "also short."], {}, "no sentence of 4 words or more"),
        ("no/such/corpus.jsonl", {}, "does not exist"),
        (Dataset.from_dict({"body": ["a b c d"]}), {}, "no text column named text"),
        (42, {}, "corpus must be a list of texts"),
    ],
)
def test_bad_input_is_a_clear_error(corpus, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pseudo_queries(corpus, **kwargs)


def test_align_on_a_corpus_records_pseudo_queries(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m")
    pair = kale_st.align(model, corpus=dict(enumerate(CORPUS)), num_pseudo_queries=16, max_steps=1, batch_size=8)
    meta = pair.metadata
    assert (meta["query_source"], meta["num_queries"], meta["corpus_documents"]) == ("pseudo", 16, 10)
    assert meta["training_steps"] == 1 and kale_st.num_layers(pair.query_model) == 2
    real = kale_st.align(model, ["the cat is fast", "a dog"], max_steps=1).metadata
    assert real["query_source"] == "queries" and "corpus_documents" not in real


def test_align_reads_a_corpus_twice_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counting spans, then cutting them: the document count comes from the first pass, not from a third read."""
    reads = []
    original = kale_st.queries.iter_corpus

    def counting(corpus, column=None):
        reads.append(1)
        return original(corpus, column)

    monkeypatch.setattr(kale_st.queries, "iter_corpus", counting)
    meta = kale_st.align(tiny_model(tmp_path / "m"), corpus=CORPUS, num_pseudo_queries=16, max_steps=1).metadata
    assert meta["corpus_documents"] == 10 and len(reads) == 2


def test_cli_align_streams_its_inputs(cli_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """``kale-st align`` hands align a stream of the --queries file and the --corpus path, never lists of them."""
    seen = {}

    def fake_align(model, queries=None, *, corpus=None, **kwargs):
        seen.update(queries=queries, corpus=corpus)
        raise SystemExit(0)

    monkeypatch.setattr(kale_st.cli.build, "align", fake_align)
    with pytest.raises(SystemExit):
        run("align", "--model", cli_files["model"], "--queries", cli_files["queries"], "--corpus", cli_files["beir"],
            "--max-queries", 4, "--output", cli_files["tmp"] / "pair")
    assert isinstance(seen["queries"], Iterator) and seen["corpus"] == str(cli_files["beir"])
    assert list(seen["queries"]) == ["the cat is fast", "a dog on the document", "dense retrieval with a model",
                                     "the cat is fast"]


def test_align_needs_queries_or_a_corpus(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"needs queries=\.\.\., corpus=\.\.\..*or both\.$"):
        kale_st.align(tiny_model(tmp_path / "m"))


def test_align_on_queries_and_a_corpus_adds_new_pseudo_queries(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m")
    real = ["the cat is fast", pseudo_queries(CORPUS, 1, seed=42)[0]]  # the second is also a pseudo-query
    meta = kale_st.align(model, real, corpus=CORPUS, num_pseudo_queries=16, max_steps=1, batch_size=8).metadata
    assert (meta["query_source"], meta["real_queries"], meta["corpus_documents"]) == ("both", 2, 10)
    assert meta["pseudo_queries"] == 15  # the duplicate of a real query is dropped
    assert meta["num_queries"] == 17


@pytest.fixture
def cli_files(tmp_path: Path) -> dict[str, Path]:
    tiny_model(tmp_path / "source").save(str(tmp_path / "model"))
    beir = tmp_path / "beir"
    beir.mkdir()
    (beir / "corpus.jsonl").write_text("".join(json.dumps({"_id": str(i), "text": t}) + "\n" for i, t in enumerate(CORPUS)))
    (tmp_path / "queries.txt").write_text("the cat is fast\na dog on the document\ndense retrieval with a model\n" * 3)
    return {"model": tmp_path / "model", "beir": beir, "queries": tmp_path / "queries.txt", "tmp": tmp_path}


def test_cli_align_with_a_corpus(cli_files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    output = cli_files["tmp"] / "pair"
    run("align", "--model", cli_files["model"], "--corpus", cli_files["beir"], "--pseudo-queries", 12, "--epochs", 1,
        "--batch-size", 4, "--output", output)
    captured = capsys.readouterr()
    assert "12 alignment queries (12 pseudo-queries from 10 documents)" in captured.out
    assert "pair saved to" in captured.out
    meta = json.loads((output / "kale_pair.json").read_text())
    assert (meta["query_source"], meta["num_queries"], meta["training_steps"]) == ("pseudo", 12, 3)


def test_cli_align_with_queries_and_a_corpus(cli_files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    output = cli_files["tmp"] / "pair"
    run("align", "--model", cli_files["model"], "--queries", cli_files["queries"], "--corpus", cli_files["beir"],
        "--pseudo-queries", 12, "--max-steps", 2, "--batch-size", 4, "--output", output)
    captured = capsys.readouterr()
    assert "the --queries and up to 12 pseudo-queries from the --corpus documents" in captured.err
    meta = json.loads((output / "kale_pair.json").read_text())
    counts = f"{meta['num_queries']} alignment queries ({meta['pseudo_queries']} pseudo-queries from 10 documents)"
    assert counts in captured.out
    assert (meta["query_source"], meta["real_queries"]) == ("both", 9)
    assert 0 < meta["pseudo_queries"] <= 12 and meta["num_queries"] == 9 + meta["pseudo_queries"]
    assert (meta["max_steps"], meta["training_steps"], meta["stop_reason"]) == (2, 2, "step budget")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["align", "--model", "{model}"], "pass --queries, --corpus (pseudo-queries from the documents) or both"),
        (["align", "--model", "{model}", "--corpus", "{beir}", "--max-queries", "3"], "--max-queries applies to --queries"),
        (["align", "--model", "{model}", "--corpus", "{tmp}/nothing"], "does not exist"),
        (["align", "--model", "{model}", "--queries", "{queries}", "--corpus", "{beir}", "--real-query-share", "1"],
         "argument --real-query-share: '1' is not a share from 0 to under 1"),
        (["prune", "--model", "{model}", "--layers", "2", "--strategy", "search", "--output", "{tmp}/o"], "pass queries="),
    ],
)
def test_cli_errors(argv: list[str], message: str, cli_files: dict[str, Path], capsys) -> None:
    line = fails(capsys, *(arg.format(**cli_files) for arg in argv))
    assert message in line, line


def test_cli_prune_with_search(cli_files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    output = cli_files["tmp"] / "pruned"
    run("prune", "--model", cli_files["model"], "--layers", 2, "--strategy", "search", "--queries", cli_files["queries"],
        "--output", output)
    assert "(search)" in capsys.readouterr().out
    info = kale_st.pruning_info(SentenceTransformer(str(output), device="cpu"))
    assert info["strategy"] == "search" and info["search"]["num_queries"] == 9
