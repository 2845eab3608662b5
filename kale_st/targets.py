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
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from datasets import Dataset, Features, List, Value, concatenate_datasets
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator
from tqdm.auto import tqdm

from kale_st.evaluation import fingerprint
from kale_st.precision import autocast, resolve_precision

logger = logging.getLogger(__name__)

#: Encoding batch size: on CPU, small batches of length-sorted queries encode fastest (MiniLM, 2 cores: 200 queries/s
#: at 32, 185 at 64, 123 at 256).
ENCODE_BATCH_SIZE = 32
#: Texts encoded per call to ``encode_query`` and rows per Arrow record batch (about 15 MB of 384-d targets).
DEFAULT_CHUNK_SIZE = 10_000
#: The same with token embeddings, which take about 22 times the room (SciFact's queries hold 22 tokens on average).
TOKEN_CHUNK_SIZE = 1_000
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
    token_embeddings: bool = False,
) -> Dataset:
    """The alignment dataset: column ``query`` (the texts) and ``label`` (``teacher.encode_query``, float32); with
    ``token_embeddings``, also ``token_label``: the teacher's contextual token embeddings of each text (its last
    layer's outputs before pooling, one row per real token, float16), the targets of ``KALELoss``'s token term.

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
        token_embeddings: Keep the token embeddings too (on disk: tokens x width x 2 bytes a text, about 34 KB for a
            22-token query of a 768-d teacher), so the token term needs no teacher pass while training.

    Returns:
        A memory-mapped ``datasets.Dataset`` in the order of ``texts``; ``label`` is a fixed-size float32 list.

    Example:
        >>> targets = teacher_targets(teacher, open("queries.txt"), cache_dir=".cache/kale_st")  # doctest: +SKIP
    """
    if isinstance(texts, str):
        raise ValueError("texts is a single string: pass a list or an iterable of query strings.")
    if chunk_size < 1 or batch_size < 1:
        raise ValueError(f"chunk_size={chunk_size}, batch_size={batch_size}: both must be at least 1.")
    if token_embeddings:
        chunk_size = min(chunk_size, TOKEN_CHUNK_SIZE)
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
            key = _fingerprint(teacher, texts_digest, precision, token_embeddings)
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
            _encode_shard(teacher, work, rank, start, stop, batch_size, chunk_size, show and rank == 0, device,
                          token_embeddings)
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


class TokenTargetsCollator(SentenceTransformerDataCollator):
    """sentence-transformers' data collator for targets with a ``token_label`` column (:func:`teacher_targets` with
    ``token_embeddings=True``): a batch's label becomes a dict shaped like the teacher's own output,
    ``sentence_embedding`` ``(batch, width)`` and ``token_embeddings`` ``(batch, tokens, width)``, each text's token
    targets placed where the batch's attention mask keeps its tokens (zeros on padding), as :class:`KALELoss` reads it.

    Example:
        >>> collator = TokenTargetsCollator(preprocess_fn=student.preprocess)  # doctest: +SKIP
        >>> SentenceTransformerTrainer(model=student, train_dataset=targets, loss=KALELoss(student, token_weight=1.0),
        ...                            data_collator=collator)  # doctest: +SKIP
    """

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        tokens = [torch.as_tensor(row["token_label"], dtype=torch.float32) for row in features]
        batch = super().__call__([{k: v for k, v in row.items() if k != "token_label"} for row in features])
        masks = [value for key, value in batch.items() if key.endswith("_attention_mask")]
        if len(masks) != 1:
            raise ValueError(f"Token targets go with one text column (the queries); this batch has {len(masks)}.")
        mask = masks[0].bool()
        if mask.sum(1).tolist() != [len(t) for t in tokens]:
            raise ValueError("The token targets do not match the student's tokenization of the same texts (token "
                             "counts differ): encode them with the student's tokenizer, sequence length and prompt.")
        target = torch.zeros(*mask.shape, tokens[0].shape[-1])
        target[mask] = torch.cat(tokens)
        batch["label"] = {"sentence_embedding": batch["label"], "token_embeddings": target}
        return batch


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


def _fingerprint(teacher: SentenceTransformer, texts_digest: str, precision: str, token_embeddings: bool) -> str:
    """Teacher (weights, configuration, prompts) x texts x precision x token embeddings: what the targets depend on."""
    prompts = json.dumps([teacher.prompts, teacher.default_prompt_name], sort_keys=True, default=str)
    parts = ("encode_query", fingerprint(teacher, {}), prompts, texts_digest)
    if precision != "fp32":  # float32 targets keep the fingerprint they had before precision was an option
        parts += (precision,)
    if token_embeddings:  # and those without token embeddings the one they had before them
        parts += ("token_embeddings",)
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
    token_embeddings: bool,
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
            embeddings, tokens = _encode(teacher, chunk, batch_size, device, token_embeddings)
            width = embeddings.shape[1]
            if writer is None:  # the width is known once the teacher has encoded something
                columns = {"query": Value("string"), "label": List(Value("float32"), length=width)}
                if token_embeddings:
                    columns["token_label"] = List(List(Value("float16"), length=tokens[0].shape[1]))
                schema = Features(columns).arrow_schema
                writer = pa.ipc.new_stream(sink, schema)
            arrays = [pa.array(chunk, pa.string()), _fixed_size(embeddings)]
            if token_embeddings:
                offsets = np.concatenate([[0], np.cumsum([len(t) for t in tokens])]).astype(np.int32)
                arrays.append(pa.ListArray.from_arrays(pa.array(offsets), _fixed_size(np.concatenate(tokens))))
            writer.write_batch(pa.record_batch(arrays, schema=schema))
            bar.update(len(chunk))
        writer.close()
    partial.replace(work / f"shard-{rank:05d}.arrow")


def _encode(
    teacher: SentenceTransformer, texts: list[str], batch_size: int, device: torch.device | None, tokens: bool
) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """The teacher's query embeddings of ``texts`` (float32) and, with ``tokens``, each text's token embeddings over
    its real tokens (float16, ``(tokens, width)``)."""
    if not tokens:
        embeddings = teacher.encode_query(
            texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False, device=device
        )
        return np.ascontiguousarray(embeddings, dtype=np.float32), None
    outputs = teacher.encode_query(texts, batch_size=batch_size, output_value=None, show_progress_bar=False,
                                   device=device)
    embeddings = torch.stack([out["sentence_embedding"] for out in outputs]).float().cpu().numpy()
    token_rows = [out["token_embeddings"][out["attention_mask"].bool()].cpu().to(torch.float16).numpy()
                  for out in outputs]
    return embeddings, token_rows


def _fixed_size(rows: np.ndarray) -> pa.FixedSizeListArray:
    """A ``(n, width)`` array as an Arrow array of ``n`` fixed-size lists."""
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(rows).reshape(-1)), rows.shape[1])


def _publish(work: Path, final: Path, num_rows: int, world: int) -> None:
    """Move the finished shards into ``final`` (a rename: a reader never sees a half-written cache)."""
    (work / "queries.arrow").unlink()
    (work / _INFO).write_text(json.dumps({"num_rows": num_rows, "processes": world}) + "\n")
    try:
        work.rename(final)
    except OSError:  # another run published the same targets first: theirs are identical
        logger.info("Teacher targets were published by another run; using those.")
