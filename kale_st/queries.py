"""Read alignment queries from a list, a ``datasets.Dataset`` or a text/JSONL file; or make pseudo-queries from a
corpus when there are none (label-free alignment). ``iter_queries`` / ``iter_corpus`` stream inputs of any size."""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from datasets import Dataset, IterableDataset

logger = logging.getLogger(__name__)

QueriesLike = Sequence[str] | Dataset | str | os.PathLike
CorpusLike = Sequence[str] | Mapping[str, str] | Dataset | str | os.PathLike
#: What the streaming readers take besides: a streamed dataset (``load_dataset(..., streaming=True)``, a Hub id too)
#: or any iterable of strings.
StreamLike = QueriesLike | IterableDataset | Iterable[str]
_TEXT_COLUMNS = ("query", "text", "sentence")
_CORPUS_COLUMNS = ("text", "sentence", "query")
_ROWS_PER_READ = 1024
# A sentence ends at . ! or ? followed by space and an upper-case letter, digit, bracket or quote ("e.g. the" stays).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[\"'])|\n+")


def load_queries(queries: QueriesLike, column: str | None = None) -> list[str]:
    """Return the queries as a non-empty list of strings.

    Args:
        queries: A list of strings; a ``datasets.Dataset``; or a path to a ``.jsonl`` file (one object per line,
            the text under ``column``) or to a text file (one query per non-empty line).
        column: The text column of a Dataset or JSONL file; default: the first of ``query``, ``text``, ``sentence``.

    Example:
        >>> load_queries(["what is KALE", "dense retrieval latency"])
        ['what is KALE', 'dense retrieval latency']
    """
    texts = list(iter_queries(queries, column))
    if not texts:
        raise ValueError("queries is empty: alignment needs at least one query.")
    return texts


def iter_queries(queries: StreamLike, column: str | None = None) -> Iterator[str]:
    """Stream the queries one at a time: files line by line, datasets in batches, for sets larger than memory.

    Takes what :func:`load_queries` takes, a streamed dataset (``load_dataset(hub_id, split="train",
    streaming=True)``) or any iterable of strings; a bad row is a ``ValueError`` when it is reached.

    Example:
        >>> list(iter_queries(["what is KALE", "dense retrieval latency"]))
        ['what is KALE', 'dense retrieval latency']
    """
    if isinstance(queries, (str, os.PathLike)):
        texts = _iter_file(Path(queries), column)
    elif isinstance(queries, (Dataset, IterableDataset)):
        texts = (text for _, text in _iter_dataset(queries, column, _TEXT_COLUMNS))
    elif isinstance(queries, Iterable) and not isinstance(queries, Mapping):
        texts = iter(queries)
    else:
        raise ValueError(
            f"queries must be a list of strings, a datasets.Dataset or a file path, got {type(queries).__name__}."
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"queries[{i}] is a {type(text).__name__} ({text!r}), not a string: pass text only.")
        yield text


def _pick_column(columns: list[str], column: str | None, source: str, names: Sequence[str] = _TEXT_COLUMNS) -> str:
    if column is not None:
        if column not in columns:
            raise ValueError(f"The {source} has no column {column!r}; its columns are {columns}. Pass column=one of them.")
        return column
    for name in names:
        if name in columns:
            return name
    raise ValueError(
        f"The {source} has no text column named {' or '.join(names)}; its columns are {columns}. "
        "Pass column=<the text column>."
    )


def _iter_dataset(
    dataset: Dataset | IterableDataset, column: str | None, names: Sequence[str]
) -> Iterator[tuple[object, object]]:
    """(title or None, text) of each row, read ``_ROWS_PER_READ`` rows at a time."""
    name = None
    if dataset.column_names is not None:  # a streamed dataset may only know its columns once read
        name = _pick_column(dataset.column_names, column, "Dataset", names)
    for batch in dataset.iter(batch_size=_ROWS_PER_READ):
        name = name or _pick_column(list(batch), column, "Dataset", names)
        titles = batch["title"] if "title" in batch and name != "title" and names is _CORPUS_COLUMNS else None
        yield from zip(titles or [None] * len(batch[name]), batch[name])


def _iter_file(path: Path, column: str | None, names: Sequence[str] = _TEXT_COLUMNS) -> Iterator[object]:
    """The texts of a text file (non-empty lines) or a JSONL file (strings, or objects with a text field)."""
    if not path.is_file():
        raise ValueError(f"queries file {str(path)!r} does not exist: pass a list of strings or an existing file.")
    for _, text in _iter_records(path, column, names):
        yield text


def _iter_records(path: Path, column: str | None, names: Sequence[str]) -> Iterator[tuple[object, object]]:
    """(title or None, text) of each non-empty line; of a JSONL file, the text field is picked on the first object."""
    name = None
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            if path.suffix != ".jsonl":
                yield None, line.strip()
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number} is not valid JSON ({error.msg}): one JSON object per line.") from None
            if not isinstance(record, dict):
                yield None, record
                continue
            name = name or _pick_column(sorted(record), column, f"file {path}", names)
            if name not in record:
                raise ValueError(f"{path}:{number} has no {name!r} field; every line needs one.")
            yield record.get("title") if name != "title" else None, record[name]


def load_corpus(corpus: CorpusLike, column: str | None = None) -> list[str]:
    """Return the documents of ``corpus`` as a non-empty list of strings.

    Args:
        corpus: A list of strings; a dict id -> text (as :func:`kale_st.evaluation.load_beir` gives); a
            ``datasets.Dataset``; a BEIR folder (its ``corpus.jsonl``); a ``.jsonl`` file (one object per line, the
            text under ``column``, a ``title`` put in front as its own sentence); or a text file (one document a line).
        column: The text column of a Dataset or JSONL file; default: the first of ``text``, ``sentence``, ``query``.
    """
    texts = list(iter_corpus(corpus, column))
    if not texts:
        raise ValueError("corpus is empty: pseudo-queries need at least one document with text.")
    return texts


def iter_corpus(corpus: CorpusLike | IterableDataset | Iterable[str], column: str | None = None) -> Iterator[str]:
    """Stream the non-blank documents of ``corpus`` (what :func:`load_corpus` takes, a streamed dataset or any
    iterable of strings) one at a time, files line by line.

    Example:
        >>> list(iter_corpus({"d1": "First document.", "d2": " ", "d3": "Second one."}))
        ['First document.', 'Second one.']
    """
    if isinstance(corpus, (str, os.PathLike)):
        path = Path(corpus)
        if path.is_dir():
            path = path / "corpus.jsonl"
        if not path.is_file():
            raise ValueError(f"corpus {str(corpus)!r} does not exist: pass a list of texts, a file or a BEIR folder.")
        texts = (_with_title(title, text) for title, text in _iter_records(path, column, _CORPUS_COLUMNS))
    elif isinstance(corpus, (Dataset, IterableDataset)):
        texts = (_with_title(title, text) for title, text in _iter_dataset(corpus, column, _CORPUS_COLUMNS))
    elif isinstance(corpus, Mapping):
        texts = iter(corpus.values())
    elif isinstance(corpus, Iterable):
        texts = iter(corpus)
    else:
        raise ValueError(
            "corpus must be a list of texts, a dict id -> text, a datasets.Dataset, a file or a BEIR folder, "
            f"got {type(corpus).__name__}."
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"corpus document {i} is a {type(text).__name__} ({text!r}), not a string: pass texts.")
        if text.strip():
            yield text


def pseudo_queries(
    corpus: CorpusLike,
    num_queries: int = 1000,
    *,
    seed: int = 0,
    min_words: int = 4,
    max_words: int = 20,
    column: str | None = None,
) -> list[str]:
    """Query-like texts cut from ``corpus``, for aligning without queries (``align(model, corpus=...)``).

    Each document is split into sentences; a sentence of ``min_words`` to ``max_words`` words is a pseudo-query as it
    is, a longer one gives a span of a random length in that range at a random place, a shorter one nothing. Documents
    are visited in a seeded random order, one pseudo-query each per round (so they cover as many documents as
    possible), until ``num_queries`` distinct ones (case-insensitive) are found; fewer if the corpus has no more.
    The same corpus and ``seed`` give the same pseudo-queries.

    The corpus is streamed, twice (count, then cut): memory holds a count per document and the pseudo-queries, never
    the corpus, so a file of any size works; a one-shot iterator does not (pass a list, a file or a dataset).

    Args:
        corpus: The documents (see :func:`load_corpus`): ideally those the document encoder already indexed.
        num_queries: How many pseudo-queries to make.
        seed: Seed of the document order, the sentence order within a document and the span choice.
        min_words, max_words: Length bounds of a pseudo-query, in whitespace-separated words.
        column: The text column of a Dataset or JSONL corpus.

    Example:
        >>> pseudo_queries(["Aspirin lowers the risk of colon cancer. It was tested in 1,000 adults."], 5, seed=0)
        ['It was tested in 1,000 adults', 'Aspirin lowers the risk of colon cancer']
    """
    return cut_pseudo_queries(corpus, num_queries, seed=seed, min_words=min_words, max_words=max_words,
                              column=column)[0]


def cut_pseudo_queries(
    corpus: CorpusLike,
    num_queries: int,
    *,
    seed: int = 0,
    min_words: int = 4,
    max_words: int = 20,
    column: str | None = None,
) -> tuple[list[str], int]:
    """:func:`pseudo_queries`, and the number of non-blank documents it read (counted in the same pass)."""
    if isinstance(num_queries, bool) or not isinstance(num_queries, int) or num_queries < 1:
        raise ValueError(f"num_queries={num_queries!r}: make at least 1 pseudo-query.")
    if not 1 <= min_words <= max_words:
        raise ValueError(f"min_words={min_words}, max_words={max_words}: need 1 <= min_words <= max_words.")
    if isinstance(corpus, Iterator):
        raise ValueError("pseudo_queries reads the corpus twice: pass a list, a file or a dataset, not an iterator.")

    def spans(index: int, text: str) -> list[str]:
        return list(_spans(text, random.Random(f"{seed}:{index}"), min_words, max_words))

    counts = np.fromiter((len(spans(i, text)) for i, text in enumerate(iter_corpus(corpus, column))), dtype=np.int64)
    if counts.size == 0:
        raise ValueError("corpus is empty: pseudo-queries need at least one document with text.")
    order = list(range(counts.size))
    random.Random(seed).shuffle(order)  # the visiting order; round r takes the r-th span of each document in it
    position = np.empty(counts.size, dtype=np.int64)
    position[order] = np.arange(counts.size)
    del order
    found: dict[str, str] = {}
    wanted = num_queries
    while True:
        take = _spans_to_take(counts, position, wanted)
        cut = []  # (round, position, span) of every span taken, read in one pass over the corpus
        for index, text in enumerate(iter_corpus(corpus, column)):
            if take[index]:
                cut.extend((r, position[index], span) for r, span in enumerate(spans(index, text)[: take[index]]))
        found = {}
        for _, _, span in sorted(cut):
            found.setdefault(span.lower(), span)
            if len(found) == num_queries:
                break
        if len(found) == num_queries or wanted >= counts.sum():
            break
        wanted += num_queries - len(found)  # duplicates: cut more (a prefix of the same order, so the same result)
    if not found:
        raise ValueError(
            f"corpus has no sentence of {min_words} words or more: no pseudo-queries (lower min_words or pass queries)."
        )
    if len(found) < num_queries:
        logger.warning("The corpus gave %d distinct pseudo-queries, fewer than the %d asked for.", len(found),
                       num_queries)
    return list(found.values()), int(counts.size)


def _spans_to_take(counts: np.ndarray, position: np.ndarray, wanted: int) -> np.ndarray:
    """Spans per document of the first ``wanted`` in round-robin order (whole rounds, then the start of one more)."""
    if wanted >= counts.sum():
        return counts.copy()
    low, high = 0, int(counts.max())  # the last round reached: sum(min(counts, rounds)) >= wanted
    while low < high:
        middle = (low + high) // 2
        low, high = (middle + 1, high) if np.minimum(counts, middle).sum() < wanted else (low, middle)
    take = np.minimum(counts, low - 1)
    remaining = wanted - int(take.sum())
    in_last_round = np.flatnonzero(counts >= low)
    take[in_last_round[np.argsort(position[in_last_round])[:remaining]]] += 1
    return take


def _spans(text: str, rng: random.Random, min_words: int, max_words: int) -> Iterator[str]:
    """A document's pseudo-queries, one per sentence long enough, in a random order (lazily: a generator)."""
    sentences = [sentence.split() for sentence in _SENTENCE_END.split(text)]
    sentences = [words for words in sentences if len(words) >= min_words]
    rng.shuffle(sentences)
    for words in sentences:
        if len(words) > max_words:
            length = rng.randint(min_words, max_words)
            start = rng.randint(0, len(words) - length)
            words = words[start : start + length]
        span = " ".join(words).rstrip(".,;:")
        if len(span.split()) >= min_words:
            yield span


def _with_title(title: object, text: object) -> object:
    """``Title. text``: the title becomes a sentence of its own."""
    if not isinstance(title, str) or not title.strip():
        return text
    title = title.strip()
    return f"{title}{'' if title[-1] in '.!?' else '.'} {text}" if isinstance(text, str) else text

