"""``align``: prune a copy of the query encoder and align it to the frozen original on queries only."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import tempfile
import time
from array import array
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import broadcast_object_list
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer.evaluation import MSEEvaluator
from sentence_transformers.sentence_transformer.losses import MSELoss
from torch import nn
from transformers.trainer_utils import get_last_checkpoint

from kale_st.loss import DEFAULT_TEMPERATURE, KALELoss
from kale_st.pair import AsymmetricPair, task_model
from kale_st.precision import resolve_precision
from kale_st.pruning import check_layers, num_layers, prune_layers, pruning_info, restore_lineage
from kale_st.queries import (
    CorpusLike,
    QueriesLike,
    cut_pseudo_queries,
    iter_queries,
    load_corpus,
    load_queries,
)
from kale_st.recipe import (
    EVALUATIONS,
    PATIENCE_FROM,
    EarlyStopping,
    held_out_size,
    real_query_copies,
    recipe_for,
    without_dropout,
)
from kale_st.sampler import LengthGroupedBatchSampler
from kale_st.static import static_student
from kale_st.targets import ENCODE_BATCH_SIZE, TokenTargetsCollator, distributed_state, teacher_targets

logger = logging.getLogger(__name__)

#: Alignment losses by name: each builds the loss for a student at a temperature. One line to add another.
#: ``kale-tokens`` adds a token-level term (:class:`KALELoss` ``token_weight``).
LOSSES: dict[str, Callable[..., nn.Module]] = {
    "kale": lambda student, temperature: KALELoss(student, temperature),
    "kale-tokens": lambda student, temperature: KALELoss(student, temperature, token_weight=TOKEN_WEIGHT),
    "mse": lambda student, temperature: MSELoss(student),
}
#: Losses that align contextual token embeddings (a static student, ``layers=0``, has none): their teacher targets
#: keep the teacher's token embeddings too, so training runs no teacher pass.
TOKEN_LOSSES = {"kale-tokens"}
#: ``kale-tokens``' weight of the token term (README "Defaults that transfer", levers).
TOKEN_WEIGHT = 1.0
#: How many pseudo-queries ``align(model, corpus=...)`` makes by default.
DEFAULT_PSEUDO_QUERIES = 10_000
#: With fewer alignment queries the default layer choice is ``spread``: ``search``'s probe needs 2 per fold.
SEARCH_MIN_QUERIES = 8
#: The layer search samples at most this many of the first alignment queries.
SEARCH_SAMPLE_LIMIT = 50_000
#: In ``checkpoint_dir``: the student's layers and lineage, written when a run starts, read when it resumes.
STUDENT_FILE = "kale_student.json"
#: Name of the early-stopping evaluator (its metrics read ``eval_<name>_negative_mse``).
STOPPING_NAME = "held-out-alignment"


def align(
    model: SentenceTransformer,
    queries: QueriesLike | None = None,
    *,
    corpus: CorpusLike | None = None,
    num_pseudo_queries: int = DEFAULT_PSEUDO_QUERIES,
    layers: int | list[int] = 2,
    strategy: str | None = None,
    loss: str = "kale",
    temperature: float = DEFAULT_TEMPERATURE,
    max_steps: int | None = None,
    epochs: float | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    early_stopping: bool = True,
    seed: int = 42,
    eval_queries: QueriesLike | None = None,
    query_column: str | None = None,
    output_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume_from_checkpoint: bool | str | None = None,
    base_model: str | None = None,
    precision: str = "auto",
    dropout: bool | None = None,
    real_query_share: float | None = None,
    **training_args: Any,
) -> AsymmetricPair:
    """Compress the query side of ``model`` with KALE: prune a copy, align it to the original on queries.

    The run is bounded by a step budget, not by epochs, so its cost does not grow with the number of queries beyond
    encoding them once with the teacher; it stops earlier when the student's agreement with the teacher on a held-out
    slice of the alignment queries (carved automatically, label-free) stops improving (:mod:`kale_st.recipe`). The
    queries are streamed into the teacher targets on disk, so memory does not grow with them either.

    Args:
        model: A trained SentenceTransformer (teacher and document encoder at once), or a query/document
            ``Router`` model (its query route is the teacher, its document route is kept). Never modified.
        queries: Alignment queries: a list of strings, a ``datasets.Dataset``, a text/JSONL file path, or any iterable
            of strings (a generator, a streamed dataset), read once.
        corpus: Documents to cut pseudo-queries from (:func:`kale_st.pseudo_queries`), ideally those the document
            encoder indexed: a list of strings, a dict id -> text, a Dataset, a text/JSONL file or a BEIR folder.
            With ``queries`` the pseudo-queries join the real ones; without, they are the whole alignment set.
        num_pseudo_queries: How many pseudo-queries to make from ``corpus`` (seeded by ``seed``).
        real_query_share: With ``queries`` and ``corpus``: the real queries are trained on several times each when
            needed, so that they make up at least this share of the training rows (the student serves real queries;
            pseudo-queries stand in for them). ``0``: each once; ``None``: the recipe's (0.2; 0 for 0 or 1 kept
            layers). README "Defaults that transfer".
        layers: Layers the student keeps: a count (picked by ``strategy``) or exact indices.
        strategy: Layer-selection strategy (see :data:`kale_st.STRATEGIES`); ``None``: ``search``, which measures
            candidate layer sets on a sample of the alignment queries (the real ones when there are enough), or
            ``spread`` under :data:`SEARCH_MIN_QUERIES` queries.
        loss: ``"kale"`` (:class:`KALELoss`, the paper's), ``"kale-tokens"`` (plus a token-level term; the teacher's
            token embeddings are encoded with its targets and kept on disk, about 34 KB a 22-token query of a 768-d
            teacher) or ``"mse"`` (sentence-transformers' ``MSELoss``).
        temperature: :class:`KALELoss` softmax temperature.
        max_steps, learning_rate, batch_size: Training recipe; ``None`` takes :func:`kale_st.recipe.recipe_for` the
            kept layer count and the teacher's depth (a 12-layer teacher: a budget of 600 steps, a 6-layer one 300).
            ``epochs`` instead of a step budget trains that many passes over the training rows (real queries repeated).
        early_stopping: Hold out a slice of the alignment queries (5 %, at most 500; none under 640 queries) and stop
            when the student's agreement with the teacher on it stops improving (patience counts from half the budget
            on), keeping the best student.
        seed: Seed of the Trainer, of the pseudo-queries and of the held-out slice (same seed, same student on CPU).
        eval_queries: Held-out queries: student-teacher MSE and cosine are reported before and after.
        query_column: Text column of a Dataset/JSONL ``queries`` (default ``query``, ``text`` or ``sentence``) or
            ``corpus`` (default ``text``).
        output_dir: If set, the pair is saved there (``query/``, ``document/``, ``kale_pair.json``).
        cache_dir: Where the teacher's targets are kept and reused by later runs with the same teacher and queries
            (:func:`kale_st.targets.teacher_targets`); default ``checkpoint_dir/targets`` with ``checkpoint_dir``, else
            a temporary folder. Several machines: a shared folder.
        checkpoint_dir: If set, the Trainer saves a checkpoint there (safetensors, the last 2 kept) every twelfth of
            the run (when early stopping evaluates), and the student's layers in ``kale_student.json``, so a long run
            can resume. A new run needs a folder without checkpoints.
        resume_from_checkpoint: ``True``: resume from the latest ``checkpoint-*`` of ``checkpoint_dir``; a path: from
            that checkpoint. The resumed run rebuilds the same student (no new layer search) and goes on with the
            Trainer's optimizer, scheduler and random state and the early-stopping state of the checkpoint.
        base_model: Hub id ``model`` is an unchanged copy of, for a local folder (``None``: inferred, see
            :func:`kale_st.pruning.source_name`); the pair's ``source_model``, its cards' ``base_model`` and titles.
        dropout: ``False``: the student trains with every dropout module off, as the teacher's targets were encoded
            and as the student serves; ``True``: with the dropout of its configuration; ``None``: the recipe's (off,
            but on for 1 kept layer; README "Defaults that transfer"). The saved student's configuration is unchanged.
        precision: ``"auto"``: the teacher's targets and the training steps in bfloat16 autocast where the hardware
            computes bfloat16 (a CPU with AVX512-BF16 or AMX, a bf16 GPU; 1.5x faster on 2 such cores), float32
            elsewhere; ``"bf16"`` or ``"fp32"`` to choose (:mod:`kale_st.precision`). The saved student is float32
            either way.
        **training_args: Extra ``SentenceTransformerTrainingArguments`` (for example ``warmup_steps=0.2``). Transformer
            students train on batches of near-equal token length (:mod:`kale_st.sampler`); ``batch_sampler=
            "batch_sampler"`` trains on sentence-transformers' random batches instead.

    Returns:
        An :class:`AsymmetricPair`: ``query_model`` the aligned student, ``document_model`` the input model. Its
        ``metadata`` records the steps trained and why training stopped.

    Example:
        >>> pair = kale_st.align(SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2"), queries)  # doctest: +SKIP
        >>> pair.encode_query(["is pruning lossless?"]).shape  # doctest: +SKIP
        (1, 384)
        >>> pair = kale_st.align(model, queries, corpus="benchmarks/data/scifact")  # plus pseudo-queries  # doctest: +SKIP
    """
    if loss not in LOSSES:
        raise ValueError(f"Unknown loss {loss!r}: use one of {sorted(LOSSES)}.")
    if loss in TOKEN_LOSSES and layers == 0:
        raise ValueError(f"loss={loss!r} aligns contextual token embeddings, which a static student (layers=0) does "
                         "not have: use loss='kale', or keep at least one layer.")
    if queries is None and corpus is None:
        raise ValueError("align needs queries=..., corpus=... (the documents to make pseudo-queries from), or both.")
    if real_query_share is not None and not 0 <= real_query_share < 1:
        raise ValueError(f"real_query_share={real_query_share}: pass a share of the training rows, from 0 to under 1.")
    if max_steps is not None and epochs is not None:
        raise ValueError(f"max_steps={max_steps} and epochs={epochs}: pass a step budget or a number of epochs, not both.")
    checkpoint = _checkpoint(checkpoint_dir, resume_from_checkpoint)
    plan = _student_plan(checkpoint, layers) if checkpoint is not None else None
    held_out = load_queries(eval_queries, query_column) if eval_queries is not None else None
    if output_dir is not None and Path(output_dir).exists() and any(Path(output_dir).iterdir()):
        raise ValueError(f"output_dir {str(output_dir)!r} exists and is not empty: pass a new or empty folder.")

    teacher = task_model(model, "query")
    precision = resolve_precision(precision, teacher.device)
    if layers != 0 and plan is None:
        check_layers(teacher, layers, base_model=base_model)  # a bad ``layers`` fails now, before any encoding
    recipe = recipe_for(layers if isinstance(layers, int) else len(layers), num_layers(teacher) if layers != 0 else 0)
    learning_rate = recipe.learning_rate if learning_rate is None else learning_rate
    batch_size = recipe.batch_size if batch_size is None else batch_size
    dropout = recipe.dropout if dropout is None else dropout
    real_query_share = recipe.real_query_share if real_query_share is None else real_query_share
    if epochs is None:
        max_steps = recipe.max_steps if max_steps is None else max_steps
    prompt = teacher.prompts.get("query") or None
    if checkpoint_dir is not None and cache_dir is None:
        cache_dir = Path(checkpoint_dir) / "targets"  # a resumed run reads them back instead of encoding again
    start = time.perf_counter()
    source: dict[str, Any] = {"query_source": "queries" if corpus is None else "pseudo" if queries is None else "both"}
    texts = _alignment_queries(queries, corpus, num_pseudo_queries, query_column, seed, source)
    # Every text, on disk, memory-mapped.
    tokens = loss in TOKEN_LOSSES
    dataset = teacher_targets(teacher, texts, cache_dir=cache_dir, precision=precision, token_embeddings=tokens)
    source = _from_main_process(source, teacher)  # only the main process read the texts and counted them
    student = _student(teacher, dataset, layers, strategy, plan, source.get("real_queries", len(dataset)), base_model)
    if checkpoint_dir is not None:
        _write_json(Path(checkpoint_dir) / STUDENT_FILE, {"layers": layers, "lineage": pruning_info(student)})
    slice_size = held_out_size(len(dataset)) if early_stopping else 0
    train_dataset, stopping, train_rows = _carve(dataset, slice_size, seed)
    # The real queries come first in the dataset: with many more pseudo-queries, each is trained on several times.
    real_rows = int(np.searchsorted(train_rows, source.get("real_queries", 0)))
    copies = real_query_copies(real_rows, len(train_dataset) - real_rows, real_query_share)
    train_dataset = _repeat_first(train_dataset, real_rows, copies)
    # Targets read as tensors: the collator stacks them instead of building each from a Python list (6x faster).
    targets = ["label", "token_label"] if tokens else ["label"]
    train_dataset = train_dataset.with_format("torch", columns=targets, output_all_columns=True)
    before = _agreement(teacher, student, held_out) if held_out else None

    total_steps = max_steps if epochs is None else math.ceil(epochs * len(train_dataset) / batch_size)
    interval = max(1, total_steps // EVALUATIONS)
    stopper = None
    if stopping is not None:
        stopper = EarlyStopping(student, f"eval_{STOPPING_NAME}_negative_mse", min_step=int(PATIENCE_FROM * total_steps))
    if stopper is not None and checkpoint is not None:
        stopper.load(checkpoint)
    train_loss = LOSSES[loss](student, temperature)
    scratch = tempfile.TemporaryDirectory(prefix="kale-train-") if checkpoint_dir is None else None
    with scratch or nullcontext(str(checkpoint_dir)) as training_dir:
        settings = {
            "num_train_epochs": epochs or 1,
            "max_steps": max_steps if epochs is None else -1,
            "per_device_train_batch_size": batch_size,
            # Transformer students pad each batch to its longest query: batch queries of near-equal length.
            **({} if layers == 0 else {"batch_sampler": partial(LengthGroupedBatchSampler,
                                                                tokenizer=student.tokenizer)}),
            "learning_rate": learning_rate,
            "warmup_steps": 0.1,
            "seed": seed,
            "data_seed": seed,
            "prompts": prompt,
            "save_strategy": "no" if checkpoint_dir is None else "steps",
            "report_to": "none",
            "logging_steps": interval,
            # Train where the model lives; on CPU this is also what makes torchrun/accelerate use gloo DDP.
            "use_cpu": teacher.device.type == "cpu",
            # A static student's gradients are far under the Trainer's clipping norm (1.0): skip computing it.
            **({"max_grad_norm": 0.0} if layers == 0 else {}),
            "bf16": precision == "bf16" and not training_args.get("fp16"),  # fp16=True: the Trainer's float16 instead
        }
        if checkpoint_dir is not None:
            settings |= {"save_steps": interval, "save_total_limit": 2}
        evaluator = None
        if stopper is not None:
            evaluator = StoredTargetsMSEEvaluator(stopping["query"], np.asarray(stopping["label"], dtype=np.float32),
                                                  batch_size=ENCODE_BATCH_SIZE, name=STOPPING_NAME)
            settings |= {"eval_strategy": "steps", "eval_steps": interval}
        args = SentenceTransformerTrainingArguments(output_dir=training_dir, **{**settings, **training_args})
        collator = None
        if tokens:  # the labels carry the teacher's token embeddings beside its query embeddings
            collator = TokenTargetsCollator(preprocess_fn=student.preprocess, prompts=args.prompts,
                                            router_mapping=args.router_mapping)
        trainer = SentenceTransformerTrainer(
            model=student,
            args=args,
            train_dataset=train_dataset,
            loss=train_loss,
            evaluator=evaluator,
            callbacks=[stopper] if stopper is not None else None,
            data_collator=collator,
        )
        with nullcontext() if dropout else without_dropout(student):
            trainer.train(resume_from_checkpoint=checkpoint)
        # Mixed precision wrapped the student's forward in autocast: the returned student runs in float32, as saved.
        trainer.accelerator.unwrap_model(student, keep_fp32_wrapper=False)
    student.eval()
    seconds = time.perf_counter() - start

    info = pruning_info(student)
    metadata = {
        "source_model": info["source_model"],
        "num_layers": info["num_layers"],
        "kept_layers": info["kept_layers"],
        "strategy": info["strategy"],
        **({"layer_search": info["search"]} if "search" in info else {}),
        "loss": type(train_loss).__name__,
        "loss_config": train_loss.get_config_dict() if hasattr(train_loss, "get_config_dict") else {},
        **source,
        "num_queries": len(dataset),
        "real_query_share": real_query_share,
        "real_query_copies": copies,
        **({"epochs": epochs} if epochs is not None else {"max_steps": max_steps}),
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
        "precision": precision,
        # The training steps' own precision: a user's fp16=True or bf16=True in training_args overrides align's.
        "training_precision": "fp16" if args.fp16 else "bf16" if args.bf16 else "fp32",
        "dropout": dropout,
        "training_steps": trainer.state.global_step,
        "stop_reason": stopper.stop_reason if stopper else ("epochs" if epochs is not None else "step budget"),
        **({"early_stopping": {"held_out_queries": len(stopping), **stopper.summary()}} if stopper else {}),
        "world_size": args.world_size,
        "alignment_seconds": round(seconds, 1),
    }
    if held_out:
        metadata["agreement"] = {"before": before, "after": _agreement(teacher, student, held_out)}
        logger.info("Student-teacher agreement on %d held-out queries: %s", len(held_out), metadata["agreement"])
    # A Router model's document route becomes a plain document model: the pair saves and loads as two plain models.
    pair = AsymmetricPair(query_model=student, document_model=task_model(model, "document"), metadata=metadata)
    if output_dir is not None:
        if trainer.accelerator.is_main_process:
            pair.save(output_dir)
        trainer.accelerator.wait_for_everyone()  # every rank returns once the folder is complete
    return pair


def _alignment_queries(
    queries: QueriesLike | None,
    corpus: CorpusLike | None,
    num_pseudo_queries: int,
    column: str | None,
    seed: int,
    source: dict[str, Any],
) -> Iterator[str]:
    """Stream the alignment texts: the real queries, then pseudo-queries from ``corpus`` that are not among them.

    Memory keeps 8 bytes a real query (the hash of its lowercased text, for the dedupe), never the texts. With a corpus,
    ``source`` gets ``real_queries``, ``pseudo_queries`` and ``corpus_documents`` once the stream is exhausted.
    """
    real = array("q")
    if queries is not None:
        for text in iter_queries(queries, column):
            real.append(hash(text.lower()))
            yield text
        if not real:
            raise ValueError("queries is empty: alignment needs at least one query.")
    if corpus is None:
        return
    if isinstance(corpus, Iterator):  # pseudo_queries reads the corpus twice
        corpus = load_corpus(corpus, column)
    pseudo, documents = cut_pseudo_queries(corpus, num_pseudo_queries, seed=seed, column=column)
    hashes = np.fromiter((hash(text.lower()) for text in pseudo), dtype=np.int64, count=len(pseudo))
    known = np.isin(hashes, np.frombuffer(real, dtype=np.int64))
    pseudo = [text for text, is_real in zip(pseudo, known) if not is_real]
    logger.info("Made %d pseudo-queries from %d corpus documents.", len(pseudo), documents)
    source |= {"real_queries": len(real), "pseudo_queries": len(pseudo), "corpus_documents": documents}
    yield from pseudo


def _from_main_process(source: dict[str, Any], teacher: SentenceTransformer) -> dict[str, Any]:
    """The main process's ``source`` on every process (under torchrun, only the main process reads the texts)."""
    state = distributed_state(teacher)
    return source if state is None or state.num_processes == 1 else broadcast_object_list([source])[0]


def _student(
    teacher: SentenceTransformer,
    dataset: Dataset,
    layers: int | list[int],
    strategy: str | None,
    plan: dict[str, Any] | None,
    real_queries: int,
    base_model: str | None,
) -> SentenceTransformer:
    """The student: a static token table (``layers=0``), the recorded layers of a resumed run (``plan``), or the
    teacher pruned by ``strategy``, a layer search measuring the first queries of ``dataset`` by default."""
    if layers == 0:  # no transformer layer: a static token table (kale_st.static)
        return static_student(teacher, base_model=base_model)
    if plan is not None:  # the layers the interrupted run chose: no new search
        student = prune_layers(teacher, plan["lineage"]["kept_layers"], base_model=base_model)
        restore_lineage(student, plan["lineage"])
        return student
    # A layer search samples the real queries when there are enough: pseudo-queries only stand in for them.
    count = real_queries if real_queries >= SEARCH_MIN_QUERIES else len(dataset)
    if strategy is None:
        strategy = "search" if count >= SEARCH_MIN_QUERIES else "spread"
    sample = list(dataset.select(range(min(count, SEARCH_SAMPLE_LIMIT)))["query"])
    return prune_layers(teacher, layers, strategy=strategy, queries=sample, base_model=base_model)


def _carve(dataset: Dataset, size: int, seed: int) -> tuple[Dataset, Dataset | None, np.ndarray]:
    """Split ``size`` seeded random rows off ``dataset``: (the other rows in their order, the held-out rows, the
    indices in ``dataset`` of the other rows)."""
    if size == 0:
        return dataset, None, np.arange(len(dataset))
    held = np.zeros(len(dataset), dtype=bool)
    held[random.Random(seed).sample(range(len(dataset)), size)] = True
    kept = np.flatnonzero(~held)
    return dataset.select(kept), dataset.select(np.flatnonzero(held)), kept


def _repeat_first(dataset: Dataset, rows: int, copies: int) -> Dataset:
    """``dataset`` with its first ``rows`` rows ``copies`` times (an index mapping: no data is copied)."""
    if copies == 1:
        return dataset
    return dataset.select(np.concatenate([np.tile(np.arange(rows), copies), np.arange(rows, len(dataset))]))


class StoredTargetsMSEEvaluator(MSEEvaluator):
    """sentence-transformers' ``MSEEvaluator`` whose teacher embeddings are given (the targets on disk), not encoded."""

    def __init__(self, queries: list[str], targets: np.ndarray, **kwargs: Any) -> None:
        self._targets = targets
        super().__init__(queries, queries, teacher_model=None, **kwargs)

    def embed_inputs(self, model: SentenceTransformer | None, sentences: list[str], **kwargs: Any) -> Any:
        return self._targets if model is None else super().embed_inputs(model, sentences, **kwargs)


def _checkpoint(checkpoint_dir: str | os.PathLike | None, resume: bool | str | None) -> str | None:
    """The checkpoint to resume from: ``resume`` (a path), the latest of ``checkpoint_dir`` (``True``), or none."""
    found = checkpoint_dir is not None and Path(checkpoint_dir).is_dir()
    latest = get_last_checkpoint(checkpoint_dir) if found else None
    if not resume:
        if latest is not None:
            raise ValueError(f"checkpoint_dir {str(checkpoint_dir)!r} holds checkpoints of an earlier run: pass "
                             "resume_from_checkpoint=True to go on from the latest, or a new folder.")
        return None
    if resume is not True:
        if not Path(resume).is_dir():
            raise ValueError(f"resume_from_checkpoint={str(resume)!r} is not a checkpoint folder (checkpoint-<step>).")
        return str(resume)
    if checkpoint_dir is None:
        raise ValueError("resume_from_checkpoint=True resumes from the latest checkpoint of checkpoint_dir: pass "
                         "checkpoint_dir=<the interrupted run's folder>, or a checkpoint path.")
    if latest is None:
        raise ValueError(f"checkpoint_dir {str(checkpoint_dir)!r} has no checkpoint-<step> folder to resume from: "
                         "start without resume_from_checkpoint.")
    return latest


def _student_plan(checkpoint: str, layers: int | list[int]) -> dict[str, Any]:
    """What the run that saved ``checkpoint`` recorded of its student (:data:`STUDENT_FILE`, next to it)."""
    path = Path(checkpoint).parent / STUDENT_FILE
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is missing: the run that saved {checkpoint!r} records its student's layers "
                         "there, and resuming rebuilds that student.")
    plan = json.loads(path.read_text())
    if plan["layers"] != (layers if isinstance(layers, int) else list(layers)):
        raise ValueError(f"The checkpoint's run had layers={plan['layers']!r}, this one layers={layers!r}: resume with "
                         "the same layers.")
    return plan


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` through a temporary file renamed into place: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(handle, "w") as file:
        json.dump(data, file, indent=2)
    os.replace(temporary, path)


def _agreement(teacher: SentenceTransformer, student: SentenceTransformer, queries: list[str]) -> dict[str, float]:
    """Student-teacher MSE (sentence-transformers' MSEEvaluator, x100) and mean cosine on ``queries``."""
    evaluator = MSEEvaluator(queries, queries, teacher_model=teacher, batch_size=ENCODE_BATCH_SIZE, name="held-out")
    mse = -evaluator(student)[evaluator.primary_metric]
    s = student.encode_query(queries, batch_size=ENCODE_BATCH_SIZE, convert_to_tensor=True)
    t = torch.as_tensor(evaluator.source_embeddings, device=s.device)
    cosine = torch.nn.functional.cosine_similarity(s, t).mean().item()
    return {"mse_x100": round(float(mse), 6), "cosine": round(cosine, 6)}
