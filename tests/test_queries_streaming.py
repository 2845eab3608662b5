"""Streaming inputs of any size: ``iter_queries`` / ``iter_corpus`` and ``pseudo_queries`` over a streamed corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Dataset, IterableDataset
from test_pseudo_queries import CORPUS

from kale_st.queries import iter_corpus, iter_queries, load_corpus, load_queries, pseudo_queries

QUERIES = [f"query number {i}" for i in range(2500)]  # more than one read batch of a dataset


def test_iter_queries_reads_files_lazily_and_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({"text": q}) + "\n" for q in QUERIES[:5]) + "{broken\n")
    stream = iter_queries(path)
    assert [next(stream) for _ in range(5)] == QUERIES[:5]  # read before the broken line is reached
    with pytest.raises(ValueError, match=r"q.jsonl:6 is not valid JSON"):
        next(stream)
    path.write_text(json.dumps({"text": "a"}) + "\n" + json.dumps({"title": "b"}) + "\n")
    with pytest.raises(ValueError, match=r"q.jsonl:2 has no 'text' field"):
        load_queries(path)


def test_iter_queries_of_datasets_streamed_or_not_and_of_generators() -> None:
    dataset = Dataset.from_dict({"id": list(range(len(QUERIES))), "query": QUERIES})
    assert list(iter_queries(dataset)) == QUERIES
    assert list(iter_queries(dataset.to_iterable_dataset(num_shards=3))) == QUERIES
    unknown_columns = IterableDataset.from_generator(lambda: ({"sentence": q} for q in QUERIES[:10]))
    assert list(iter_queries(unknown_columns)) == QUERIES[:10]  # columns known only once read
    assert list(iter_queries(q for q in QUERIES[:3])) == QUERIES[:3]
    with pytest.raises(ValueError, match="no column 'text'"):
        list(iter_queries(dataset.to_iterable_dataset(), column="text"))
    with pytest.raises(ValueError, match=r"queries\[2\] is a NoneType"):
        list(iter_queries(iter(["a", "b", None])))


def test_iter_corpus_matches_load_corpus_for_every_form(tmp_path: Path) -> None:
    records = [{"_id": str(i), "title": f"Title {i}" if i % 2 else "", "text": text} for i, text in enumerate(CORPUS)]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    dataset = Dataset.from_list(records)
    expected = load_corpus(tmp_path)
    assert expected[1].startswith("Title 1. D1S0") and expected[0] == CORPUS[0]
    assert list(iter_corpus(tmp_path)) == list(iter_corpus(dataset)) == expected
    assert list(iter_corpus(dataset.to_iterable_dataset())) == expected


class CountingCorpus(list):
    """A list that counts how often it is read from the start."""

    passes = 0

    def __iter__(self):
        self.passes += 1
        return super().__iter__()


def test_pseudo_queries_stream_the_corpus_twice_with_the_same_result_from_any_form(tmp_path: Path) -> None:
    (tmp_path / "corpus.txt").write_text("\n".join(CORPUS) + "\n")
    corpus = CountingCorpus(CORPUS)
    queries = pseudo_queries(corpus, 25, seed=7)
    assert corpus.passes == 2  # counted, then cut: never held whole
    assert queries == pseudo_queries(tmp_path / "corpus.txt", 25, seed=7)
    assert queries == pseudo_queries(Dataset.from_dict({"text": CORPUS}).to_iterable_dataset(), 25, seed=7)
    with pytest.raises(ValueError, match="reads the corpus twice"):
        pseudo_queries(iter(CORPUS), 5)
