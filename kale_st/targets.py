"""Teacher targets on disk: the teacher's query embeddings, encoded in chunks into a memory-mapped Arrow dataset.

Alignment data can be far larger than memory (a million queries x 384 float32 is 1.5 GB): the texts are streamed
into Arrow files, encoded a chunk at a time, and the dataset the Trainer reads is memory-mapped, so memory stays flat
in the number of queries. Under ``torchrun`` / ``accelerate launch`` each process encodes its share and every
process reads the same files. With ``cache_dir`` the result is kept under a fingerprint of the teacher (weights,
configuration, prompts) and of the texts, and a later run with the same teacher and texts reuses it.

Example:
    >>> targets = teacher_targets(teacher, ["what is KALE", "dense retrieval latency"], cache_dir=".cache/kale_st")  # doctest: +SKIP
    >>> targets.column_names, len(targets[0]["label"])  # doctest: +SKIP
    (['query', 'label'], 384)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from datasets import Dataset, Features, List, Value, concatenate_datasets
from sentence_transformers import SentenceTransformer
from tqdm.auto import tqdm

from kale_st.evaluation import fingerprint
from kale_st.precision import autocast, resolve_precision

logger = logging.getLogger(__name__)

#: Encoding batch size: on CPU, small batches of length-sorted queries encode fastest (MiniLM, 2 cores: 200 queries/s
#: at 32, 185 at 64, 123 at 256).
ENCODE_BATCH_SIZE = 32
#: Texts encoded per call to ``encode_query`` and rows per Arrow record batch (about 15 MB of 384-d targets).
DEFAULT_CHUNK_SIZE = 10_000
_INFO = "targets.json"


def teacher_targets(
    teacher: SentenceTransformer,
    texts: Iterable[str],
    *,
    batch_size: int = ENCODE_BATCH_SIZE,
    cache_dir: str | os.PathLike | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    show_progress_bar: bool | None = None,
    precision: str = "fp32",
) -> Dataset:
    """The alignment dataset: column ``query`` (the texts) and ``label`` (``teacher.encode_query``, float32).

    Args:
        teacher: The frozen query encoder; it encodes with its own device, dtype and ``query`` prompt.
        texts: The queries: a list, or any iterable or generator of strings (read once, a chunk at a time).
        batch_size: Encoding batch size.
        cache_dir: Folder of the cache: the dataset is kept in ``targets-<fingerprint>/`` there and reused when the
            same teacher meets the same texts. ``None``: a temporary folder, removed with the returned dataset.
            Under several machines, a folder every machine sees (as for any ``datasets`` cache).
        chunk_size: Texts per encoding call and per Arrow record batch: memory is bounded by one chunk.
        show_progress_bar: A progress bar with an ETA on the main process; default when there is more than a chunk.
        precision: ``"fp32"``: the teacher's own outputs; ``"bf16"``: encoded under bfloat16 autocast (1.5x faster
            where the hardware has bfloat16, :mod:`kale_st.precision`); ``"auto"``: ``"bf16"`` there, else ``"fp32"``.

    Returns:
        A memory-mapped ``datasets.Dataset`` in the order of ``texts``; ``label`` is a fixed-size float32 list.

    Example:
        >>> targets = teacher_targets(teacher, open("queries.txt"), cache_dir=".cache/kale_st")  # doctest: +SKIP
    """
    if isinstance(texts, str):
        raise ValueError("texts is a single string: pass a list or an iterable of query strings.")
    if chunk_size < 1 or batch_size < 1:
        raise ValueError(f"chunk_size={chunk_size}, batch_size={batch_size}: both must be at least 1.")
    state = distributed_state(teacher)
    world = state.num_processes if state else 1
    rank = state.process_index if state else 0
    device = state.device if state is not None and world > 1 else None  # under DDP each rank encodes on its own
    precision = resolve_precision(precision, device or teacher.device)
    if cache_dir is None and world > int(os.environ.get("LOCAL_WORLD_SIZE", world)):
        raise ValueError("Several machines share the teacher targets through files: pass cache_dir=<a folder every "
                         "machine sees>.")
    # The main process reads the texts once into an Arrow file (hashing them) and tells the others where it is.
    plan: list[object] = [None]
    if rank == 0:
        root = Path(cache_dir) if cache_dir is not None else Path(tempfile.mkdtemp(prefix="kale-targets-"))
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".targets-", dir=root))
        try:
            num_rows, texts_digest = _write_texts(texts, work / "queries.arrow", chunk_size)
            key = _fingerprint(teacher, texts_digest, precision)
            final = root / f"targets-{key}"
            plan = [{"root": str(root), "work": str(work), "final": str(final), "rows": num_rows,
                     "cached": (final / _INFO).is_file()}]  # decided once, so every process takes the same branch
        except ValueError as error:  # bad texts: every process raises it, none waits for the others forever
            shutil.rmtree(work, ignore_errors=True)
            plan = [{"error": str(error)}]
    if state is not None and world > 1:
        plan = broadcast_object_list(plan)
    if "error" in plan[0]:
        raise ValueError(plan[0]["error"])
    work, final, num_rows = Path(plan[0]["work"]), Path(plan[0]["final"]), plan[0]["rows"]

    if not plan[0]["cached"]:
        start, stop = rank * num_rows // world, (rank + 1) * num_rows // world
        show = (num_rows > chunk_size) if show_progress_bar is None else show_progress_bar
        with autocast(precision, device or teacher.device):
            _encode_shard(teacher, work, rank, start, stop, batch_size, chunk_size, show and rank == 0, device)
        if state is not None:
            state.wait_for_everyone()
        if rank == 0:
            _publish(work, final, num_rows, world)
    elif rank == 0:
        logger.info("Teacher targets for %d texts read from the cache.", num_rows)
    if state is not None:
        state.wait_for_everyone()
    if rank == 0:
        shutil.rmtree(work, ignore_errors=True)
    dataset = load_targets(final)
    if cache_dir is None and rank == 0:
        weakref.finalize(dataset, shutil.rmtree, plan[0]["root"], ignore_errors=True)
    return dataset


def load_targets(folder: str | os.PathLike) -> Dataset:
    """The memory-mapped dataset of a ``targets-<fingerprint>/`` folder written by :func:`teacher_targets`."""
    folder = Path(folder)
    if not (folder / _INFO).is_file():
        raise ValueError(f"{folder.name!r} is not a teacher-targets folder (no {_INFO}): make one with teacher_targets.")
    shards = [Dataset.from_file(str(path)) for path in sorted(folder.glob("shard-*.arrow"))]
    return shards[0] if len(shards) == 1 else concatenate_datasets(shards)


def distributed_state(teacher: SentenceTransformer) -> PartialState | None:
    """Accelerate's process state under torchrun / accelerate launch (initialized as the Trainer will), else None."""
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not launched and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    return PartialState(cpu=teacher.device.type == "cpu")


def _write_texts(texts: Iterable[str], path: Path, chunk_size: int) -> tuple[int, str]:
    """Stream ``texts`` into an Arrow file with one ``query`` column; return the row count and a digest of them."""
    digest, count, chunk = hashlib.sha256(), 0, []
    schema = Features({"query": Value("string")}).arrow_schema
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for text in texts:
            if not isinstance(text, str):
                raise ValueError(f"texts[{count}] is a {type(text).__name__} ({text!r}), not a string: pass text only.")
            digest.update(text.encode())
            digest.update(b"\0")
            chunk.append(text)
            count += 1
            if len(chunk) == chunk_size:
                writer.write_batch(pa.record_batch([pa.array(chunk, pa.string())], schema=schema))
                chunk = []
        if chunk:
            writer.write_batch(pa.record_batch([pa.array(chunk, pa.string())], schema=schema))
    if count == 0:
        raise ValueError("texts is empty: teacher targets need at least one query.")
    return count, digest.hexdigest()


def _fingerprint(teacher: SentenceTransformer, texts_digest: str, precision: str) -> str:
    """Teacher (weights, configuration, prompts) x texts x precision: what the targets depend on."""
    prompts = json.dumps([teacher.prompts, teacher.default_prompt_name], sort_keys=True, default=str)
    parts = ("encode_query", fingerprint(teacher, {}), prompts, texts_digest)
    if precision != "fp32":  # float32 targets keep the fingerprint they had before precision was an option
        parts += (precision,)
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def _encode_shard(
    teacher: SentenceTransformer,
    work: Path,
    rank: int,
    start: int,
    stop: int,
    batch_size: int,
    chunk_size: int,
    show_progress_bar: bool,
    device: torch.device | None,
) -> None:
    """Encode rows ``start:stop`` of the texts file into ``shard-<rank>.arrow``, a chunk at a time."""
    if start == stop:
        return
    texts = Dataset.from_file(str(work / "queries.arrow"))
    partial = work / f"shard-{rank:05d}.arrow.partial"
    writer = None
    with pa.OSFile(str(partial), "wb") as sink, tqdm(
        total=stop - start, unit="query", desc="teacher targets", disable=not show_progress_bar
    ) as bar:
        for begin in range(start, stop, chunk_size):
            chunk = texts[begin : min(begin + chunk_size, stop)]["query"]
            embeddings = teacher.encode_query(
                chunk, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False, device=device
            )
            embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
            if writer is None:  # the width is known once the teacher has encoded something
                label = List(Value("float32"), length=embeddings.shape[1])
                schema = Features({"query": Value("string"), "label": label}).arrow_schema
                writer = pa.ipc.new_stream(sink, schema)
            labels = pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1)), embeddings.shape[1])
            writer.write_batch(pa.record_batch([pa.array(chunk, pa.string()), labels], schema=schema))
            bar.update(len(chunk))
        writer.close()
    partial.replace(work / f"shard-{rank:05d}.arrow")


def _publish(work: Path, final: Path, num_rows: int, world: int) -> None:
    """Move the finished shards into ``final`` (a rename: a reader never sees a half-written cache)."""
    (work / "queries.arrow").unlink()
    (work / _INFO).write_text(json.dumps({"num_rows": num_rows, "processes": world}) + "\n")
    try:
        work.rename(final)
    except OSError:  # another run published the same targets first: theirs are identical
        logger.info("Teacher targets were published by another run; using those.")
