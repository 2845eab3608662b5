"""Read alignment queries from a list, a ``datasets.Dataset`` or a text/JSONL file; or make pseudo-queries from a
corpus when there are none (label-free alignment)."""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from datasets import Dataset

logger = logging.getLogger(__name__)

QueriesLike = Sequence[str] | Dataset | str | os.PathLike
CorpusLike = Sequence[str] | Mapping[str, str] | Dataset | str | os.PathLike
_TEXT_COLUMNS = ("query", "text", "sentence")
_CORPUS_COLUMNS = ("text", "sentence", "query")
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
    if isinstance(queries, (str, os.PathLike)):
        texts = _read_file(Path(queries), column)
    elif isinstance(queries, Dataset):
        texts = queries[_pick_column(queries.column_names, column, "Dataset")]
    elif isinstance(queries, Sequence):
        texts = list(queries)
    else:
        raise ValueError(
            f"queries must be a list of strings, a datasets.Dataset or a file path, got {type(queries).__name__}."
        )
    if not texts:
        raise ValueError("queries is empty: alignment needs at least one query.")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"queries[{i}] is a {type(text).__name__} ({text!r}), not a string: pass text only.")
    return texts


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


def _read_file(path: Path, column: str | None) -> list[str]:
    if not path.is_file():
        raise ValueError(f"queries file {str(path)!r} does not exist: pass a list of strings or an existing file.")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix != ".jsonl":
        return [line.strip() for line in lines]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number} is not valid JSON ({error.msg}): one JSON object per line.") from None
    if all(isinstance(record, str) for record in records):
        return records
    name = _pick_column(sorted({key for r in records if isinstance(r, dict) for key in r}), column, f"file {path}")
    missing = [n for n, r in enumerate(records, 1) if not isinstance(r, dict) or name not in r]
    if missing:
        raise ValueError(f"{path}: line(s) {missing[:5]} have no {name!r} field; every line needs one.")
    return [record[name] for record in records]


def load_corpus(corpus: CorpusLike, column: str | None = None) -> list[str]:
    """Return the documents of ``corpus`` as a non-empty list of strings.

    Args:
        corpus: A list of strings; a dict id -> text (as :func:`kale_st.evaluation.load_beir` gives); a
            ``datasets.Dataset``; a BEIR folder (its ``corpus.jsonl``); a ``.jsonl`` file (one object per line, the
            text under ``column``, a ``title`` put in front as its own sentence); or a text file (one document a line).
        column: The text column of a Dataset or JSONL file; default: the first of ``text``, ``sentence``, ``query``.
    """
    if isinstance(corpus, (str, os.PathLike)):
        path = Path(corpus)
        if path.is_dir():
            path = path / "corpus.jsonl"
        if not path.is_file():
            raise ValueError(f"corpus {str(corpus)!r} does not exist: pass a list of texts, a file or a BEIR folder.")
        if path.suffix == ".jsonl":
            records = _read_jsonl(path)
            if all(isinstance(record, str) for record in records):
                texts = records
            else:
                name = _pick_column(sorted({k for r in records if isinstance(r, dict) for k in r}), column,
                                    f"file {path}", _CORPUS_COLUMNS)
                texts = [_with_title(r.get("title"), r.get(name)) for r in records if isinstance(r, dict)]
        else:
            texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif isinstance(corpus, Dataset):
        name = _pick_column(corpus.column_names, column, "Dataset", _CORPUS_COLUMNS)
        titles = corpus["title"] if "title" in corpus.column_names and name != "title" else [None] * len(corpus)
        texts = [_with_title(title, text) for title, text in zip(titles, corpus[name])]
    elif isinstance(corpus, Mapping):
        texts = list(corpus.values())
    elif isinstance(corpus, Sequence):
        texts = list(corpus)
    else:
        raise ValueError(
            "corpus must be a list of texts, a dict id -> text, a datasets.Dataset, a file or a BEIR folder, "
            f"got {type(corpus).__name__}."
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"corpus document {i} is a {type(text).__name__} ({text!r}), not a string: pass texts.")
    texts = [text for text in texts if text.strip()]
    if not texts:
        raise ValueError("corpus is empty: pseudo-queries need at least one document with text.")
    return texts


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
    if isinstance(num_queries, bool) or not isinstance(num_queries, int) or num_queries < 1:
        raise ValueError(f"num_queries={num_queries!r}: make at least 1 pseudo-query.")
    if not 1 <= min_words <= max_words:
        raise ValueError(f"min_words={min_words}, max_words={max_words}: need 1 <= min_words <= max_words.")
    documents = load_corpus(corpus, column)
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    spans = {index: _spans(documents[index], random.Random(f"{seed}:{index}"), min_words, max_words) for index in order}
    found: dict[str, str] = {}
    while len(found) < num_queries and spans:
        for index in list(spans):
            span = next(spans[index], None)
            if span is None:
                del spans[index]
                continue
            found.setdefault(span.lower(), span)
            if len(found) == num_queries:
                break
    if not found:
        raise ValueError(
            f"corpus has no sentence of {min_words} words or more: no pseudo-queries (lower min_words or pass queries)."
        )
    if len(found) < num_queries:
        logger.warning("The corpus gave %d distinct pseudo-queries, fewer than the %d asked for.", len(found),
                       num_queries)
    return list(found.values())


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


def _read_jsonl(path: Path) -> list[object]:
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number} is not valid JSON ({error.msg}): one JSON object per line.") from None
    return records
