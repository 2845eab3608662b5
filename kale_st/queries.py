"""Read alignment queries from a list, a ``datasets.Dataset`` or a text/JSONL file."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from datasets import Dataset

QueriesLike = Sequence[str] | Dataset | str | os.PathLike
_TEXT_COLUMNS = ("query", "text", "sentence")


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


def _pick_column(columns: list[str], column: str | None, source: str) -> str:
    if column is not None:
        if column not in columns:
            raise ValueError(f"The {source} has no column {column!r}; its columns are {columns}. Pass column=one of them.")
        return column
    for name in _TEXT_COLUMNS:
        if name in columns:
            return name
    raise ValueError(
        f"The {source} has no text column named {' or '.join(_TEXT_COLUMNS)}; its columns are {columns}. "
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
