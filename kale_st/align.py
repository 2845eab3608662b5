"""``align``: prune a copy of the query encoder and align it to the frozen original on queries only."""

from __future__ import annotations

import logging
import math
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer.evaluation import MSEEvaluator
from sentence_transformers.sentence_transformer.losses import MSELoss
from torch import nn

from kale_st.loss import DEFAULT_TEMPERATURE, KALELoss
from kale_st.pair import AsymmetricPair, task_model
from kale_st.pruning import num_layers, prune_layers, pruning_info
from kale_st.recipe import EVALUATIONS, EarlyStopping, held_out_size, recipe_for
from kale_st.queries import CorpusLike, QueriesLike, load_corpus, load_queries, pseudo_queries
from kale_st.static import static_student
from kale_st.targets import teacher_targets

logger = logging.getLogger(__name__)

#: Alignment losses by name: each builds the loss for a student. One line to add another.
LOSSES: dict[str, Callable[..., nn.Module]] = {
    "kale": lambda student, temperature: KALELoss(student, temperature),
    "mse": lambda student, temperature: MSELoss(student),
}
#: How many pseudo-queries ``align(model, corpus=...)`` makes by default.
DEFAULT_PSEUDO_QUERIES = 10_000
#: With fewer alignment queries the default layer choice is ``spread``: ``search``'s probe needs 2 per fold.
SEARCH_MIN_QUERIES = 8
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
    base_model: str | None = None,
    **training_args: Any,
) -> AsymmetricPair:
    """Compress the query side of ``model`` with KALE: prune a copy, align it to the original on queries.

    The run is bounded by a step budget, not by epochs, so its cost does not grow with the number of queries beyond
    encoding them once with the teacher; it stops earlier when the student's agreement with the teacher on a held-out
    slice of the alignment queries (carved automatically, label-free) stops improving (:mod:`kale_st.recipe`).

    Args:
        model: A trained SentenceTransformer (teacher and document encoder at once), or a query/document
            ``Router`` model (its query route is the teacher, its document route is kept). Never modified.
        queries: Alignment queries: a list of strings, a ``datasets.Dataset`` or a text/JSONL file path.
        corpus: Documents to cut pseudo-queries from (:func:`kale_st.pseudo_queries`), ideally those the document
            encoder indexed: a list of strings, a dict id -> text, a Dataset, a text/JSONL file or a BEIR folder.
            With ``queries`` the pseudo-queries join the real ones; without, they are the whole alignment set.
        num_pseudo_queries: How many pseudo-queries to make from ``corpus`` (seeded by ``seed``).
        layers: Layers the student keeps: a count (picked by ``strategy``) or exact indices.
        strategy: Layer-selection strategy (see :data:`kale_st.STRATEGIES`); ``None``: ``search``, which measures
            candidate layer sets on a sample of the alignment queries (the real ones when there are enough), or
            ``spread`` under :data:`SEARCH_MIN_QUERIES` queries.
        loss: ``"kale"`` (:class:`KALELoss`) or ``"mse"`` (sentence-transformers' ``MSELoss``).
        temperature: :class:`KALELoss` softmax temperature.
        max_steps, learning_rate, batch_size: Training recipe; ``None`` takes :func:`kale_st.recipe.recipe_for` the
            kept layer count. ``epochs`` instead of a step budget trains that many passes over the queries.
        early_stopping: Hold out a slice of the alignment queries (5 %, at most 500; none under 640 queries) and stop
            when the student's agreement with the teacher on it stops improving, keeping the best student.
        seed: Seed of the Trainer, of the pseudo-queries and of the held-out slice (same seed, same student on CPU).
        eval_queries: Held-out queries: student-teacher MSE and cosine are reported before and after.
        query_column: Text column of a Dataset/JSONL ``queries`` (default ``query``, ``text`` or ``sentence``) or
            ``corpus`` (default ``text``).
        output_dir: If set, the pair is saved there (``query/``, ``document/``, ``kale_pair.json``).
        cache_dir: Where the teacher's targets are kept and reused by later runs with the same teacher and queries
            (:func:`kale_st.targets.teacher_targets`); default a temporary folder. Several machines: a shared folder.
        base_model: Hub id ``model`` is an unchanged copy of, for a local folder (``None``: inferred, see
            :func:`kale_st.pruning.source_name`); the pair's ``source_model``, its cards' ``base_model`` and titles.
        **training_args: Extra ``SentenceTransformerTrainingArguments`` (for example ``bf16=True``).

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
    if queries is None and corpus is None:
        raise ValueError("align needs queries=..., corpus=... (the documents to make pseudo-queries from), or both.")
    if max_steps is not None and epochs is not None:
        raise ValueError(f"max_steps={max_steps} and epochs={epochs}: pass a step budget or a number of epochs, not both.")
    texts, source = _alignment_queries(queries, corpus, num_pseudo_queries, query_column, seed)
    held_out = load_queries(eval_queries, query_column) if eval_queries is not None else None
    if output_dir is not None and Path(output_dir).exists() and any(Path(output_dir).iterdir()):
        raise ValueError(f"output_dir {str(output_dir)!r} exists and is not empty: pass a new or empty folder.")

    teacher = task_model(model, "query")
    if layers == 0:  # no transformer layer: a static token table (kale_st.static)
        student = static_student(teacher, base_model=base_model)
    else:
        # A layer search samples the real queries when there are enough: pseudo-queries only stand in for them.
        sample = texts[: source.get("real_queries", len(texts))]
        sample = sample if len(sample) >= SEARCH_MIN_QUERIES else texts
        if strategy is None:
            strategy = "search" if len(sample) >= SEARCH_MIN_QUERIES else "spread"
        student = prune_layers(teacher, layers, strategy=strategy, queries=sample, base_model=base_model)
    recipe = recipe_for(num_layers(student))
    learning_rate = recipe.learning_rate if learning_rate is None else learning_rate
    batch_size = recipe.batch_size if batch_size is None else batch_size
    if epochs is None:
        max_steps = recipe.max_steps if max_steps is None else max_steps
    prompt = teacher.prompts.get("query") or None
    start = time.perf_counter()
    slice_size = held_out_size(len(texts)) if early_stopping else 0
    texts, stopping_queries = _carve(texts, slice_size, seed)
    train_dataset = teacher_targets(teacher, texts, batch_size=batch_size, cache_dir=cache_dir)  # on disk, mapped
    before = _agreement(teacher, student, held_out, batch_size) if held_out else None

    total_steps = max_steps if epochs is None else math.ceil(epochs * len(texts) / batch_size)
    stopper = EarlyStopping(student, f"eval_{STOPPING_NAME}_negative_mse") if stopping_queries else None
    train_loss = LOSSES[loss](student, temperature)
    with tempfile.TemporaryDirectory(prefix="kale-train-") as scratch:
        settings = {
            "num_train_epochs": epochs or 1,
            "max_steps": max_steps if epochs is None else -1,
            "per_device_train_batch_size": batch_size,
            "learning_rate": learning_rate,
            "warmup_steps": 0.1,
            "seed": seed,
            "data_seed": seed,
            "prompts": prompt,
            "save_strategy": "no",
            "report_to": "none",
            "logging_steps": max(1, total_steps // EVALUATIONS),
            # Train where the model lives; on CPU this is also what makes torchrun/accelerate use gloo DDP.
            "use_cpu": teacher.device.type == "cpu",
        }
        evaluator = None
        if stopper is not None:
            evaluator = MSEEvaluator(stopping_queries, stopping_queries, teacher_model=teacher, batch_size=batch_size,
                                     name=STOPPING_NAME)
            settings |= {"eval_strategy": "steps", "eval_steps": max(1, total_steps // EVALUATIONS)}
        args = SentenceTransformerTrainingArguments(output_dir=scratch, **{**settings, **training_args})
        trainer = SentenceTransformerTrainer(
            model=student,
            args=args,
            train_dataset=train_dataset,
            loss=train_loss,
            evaluator=evaluator,
            callbacks=[stopper] if stopper is not None else None,
        )
        trainer.train()
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
        "num_queries": len(texts) + len(stopping_queries),
        **({"epochs": epochs} if epochs is not None else {"max_steps": max_steps}),
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
        "training_steps": trainer.state.global_step,
        "stop_reason": stopper.stop_reason if stopper else ("epochs" if epochs is not None else "step budget"),
        **({"early_stopping": {"held_out_queries": len(stopping_queries), **stopper.summary()}} if stopper else {}),
        "world_size": args.world_size,
        "alignment_seconds": round(seconds, 1),
    }
    if held_out:
        metadata["agreement"] = {"before": before, "after": _agreement(teacher, student, held_out, batch_size)}
        logger.info("Student-teacher agreement on %d held-out queries: %s", len(held_out), metadata["agreement"])
    # A Router model's document route becomes a plain document model: the pair saves and loads as two plain models.
    pair = AsymmetricPair(query_model=student, document_model=task_model(model, "document"), metadata=metadata)
    if output_dir is not None:
        if trainer.accelerator.is_main_process:
            pair.save(output_dir)
        trainer.accelerator.wait_for_everyone()  # every rank returns once the folder is complete
    return pair


def _alignment_queries(
    queries: QueriesLike | None, corpus: CorpusLike | None, num_pseudo_queries: int, column: str | None, seed: int
) -> tuple[list[str], dict[str, Any]]:
    """The alignment texts: the real queries, then pseudo-queries from ``corpus`` that are not among them."""
    texts = load_queries(queries, column) if queries is not None else []
    source: dict[str, Any] = {"query_source": "queries" if corpus is None else "pseudo" if queries is None else "both"}
    if corpus is not None:
        documents = load_corpus(corpus, column)
        seen = {text.lower() for text in texts}
        pseudo = [q for q in pseudo_queries(documents, num_pseudo_queries, seed=seed) if q.lower() not in seen]
        logger.info("Made %d pseudo-queries from %d corpus documents.", len(pseudo), len(documents))
        source |= {"real_queries": len(texts), "pseudo_queries": len(pseudo), "corpus_documents": len(documents)}
        texts = texts + pseudo
    return texts, source


def _carve(texts: list[str], size: int, seed: int) -> tuple[list[str], list[str]]:
    """Split ``size`` seeded random texts off ``texts``: (the rest in their order, the held-out slice)."""
    if size == 0:
        return texts, []
    held = set(random.Random(seed).sample(range(len(texts)), size))
    return [t for i, t in enumerate(texts) if i not in held], [texts[i] for i in sorted(held)]


def _agreement(
    teacher: SentenceTransformer, student: SentenceTransformer, queries: list[str], batch_size: int
) -> dict[str, float]:
    """Student-teacher MSE (sentence-transformers' MSEEvaluator, x100) and mean cosine on ``queries``."""
    evaluator = MSEEvaluator(queries, queries, teacher_model=teacher, batch_size=batch_size, name="held-out")
    mse = -evaluator(student)[evaluator.primary_metric]
    s = student.encode_query(queries, batch_size=batch_size, convert_to_tensor=True)
    t = torch.as_tensor(evaluator.source_embeddings, device=s.device)
    cosine = torch.nn.functional.cosine_similarity(s, t).mean().item()
    return {"mse_x100": round(float(mse), 6), "cosine": round(cosine, 6)}
