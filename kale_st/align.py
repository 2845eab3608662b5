"""``align``: prune a copy of the query encoder and align it to the frozen original on queries only."""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.base.modules import Router
from sentence_transformers.sentence_transformer.evaluation import MSEEvaluator
from sentence_transformers.sentence_transformer.losses import MSELoss
from torch import nn

from kale_st.loss import DEFAULT_SHIFT_WEIGHT, DEFAULT_TEMPERATURE, KALELoss
from kale_st.pair import AsymmetricPair
from kale_st.pruning import prune_layers, pruning_info
from kale_st.queries import QueriesLike, load_queries

logger = logging.getLogger(__name__)

#: Alignment losses by name: each builds the loss for a student. One line to add another.
LOSSES: dict[str, Callable[..., nn.Module]] = {
    "kale": lambda student, temperature, shift_weight: KALELoss(student, temperature, shift_weight),
    "mse": lambda student, temperature, shift_weight: MSELoss(student),
}


def align(
    model: SentenceTransformer,
    queries: QueriesLike,
    *,
    layers: int | list[int] = 2,
    strategy: str = "spread",
    loss: str = "kale",
    temperature: float = DEFAULT_TEMPERATURE,
    shift_weight: float = DEFAULT_SHIFT_WEIGHT,
    epochs: float = 20,
    batch_size: int = 64,
    learning_rate: float = 3e-4,
    seed: int = 42,
    eval_queries: QueriesLike | None = None,
    query_column: str | None = None,
    output_dir: str | os.PathLike | None = None,
    **training_args: Any,
) -> AsymmetricPair:
    """Compress the query side of ``model`` with KALE: prune a copy, align it to the original on queries.

    Args:
        model: A trained SentenceTransformer (teacher and document encoder at once), or a query/document
            ``Router`` model (its query route is the teacher, its document route is kept). Never modified.
        queries: Alignment queries: a list of strings, a ``datasets.Dataset`` or a text/JSONL file path.
        layers: Layers the student keeps: a count (picked by ``strategy``) or exact indices.
        strategy: Layer-selection strategy (see :data:`kale_st.STRATEGIES`).
        loss: ``"kale"`` (:class:`KALELoss`) or ``"mse"`` (sentence-transformers' ``MSELoss``).
        temperature, shift_weight: :class:`KALELoss` settings.
        epochs, batch_size, learning_rate, seed: Training recipe (defaults measured on SciFact, see README).
        eval_queries: Held-out queries: student-teacher MSE and cosine are reported before and after.
        query_column: Text column of a Dataset/JSONL ``queries`` (default ``query``, ``text`` or ``sentence``).
        output_dir: If set, the pair is saved there (``query/``, ``document/``, ``kale_pair.json``).
        **training_args: Extra ``SentenceTransformerTrainingArguments`` (for example ``max_steps``).

    Returns:
        An :class:`AsymmetricPair`: ``query_model`` the aligned student, ``document_model`` the input model.

    Example:
        >>> pair = kale_st.align(SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2"), queries)  # doctest: +SKIP
        >>> pair.encode_query(["is pruning lossless?"]).shape  # doctest: +SKIP
        (1, 384)
    """
    if loss not in LOSSES:
        raise ValueError(f"Unknown loss {loss!r}: use one of {sorted(LOSSES)}.")
    texts = load_queries(queries, query_column)
    held_out = load_queries(eval_queries, query_column) if eval_queries is not None else None
    if output_dir is not None and Path(output_dir).exists() and any(Path(output_dir).iterdir()):
        raise ValueError(f"output_dir {str(output_dir)!r} exists and is not empty: pass a new or empty folder.")

    teacher = query_encoder(model)
    student = prune_layers(teacher, layers, strategy=strategy)
    prompt = teacher.prompts.get("query") or None
    start = time.perf_counter()
    targets = teacher.encode_query(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=len(texts) > 1000)
    train_dataset = Dataset.from_dict({"query": texts, "label": targets.astype(np.float32).tolist()})
    before = _agreement(teacher, student, held_out, batch_size) if held_out else None

    train_loss = LOSSES[loss](student, temperature, shift_weight)
    with tempfile.TemporaryDirectory(prefix="kale-train-") as scratch:
        args = SentenceTransformerTrainingArguments(
            output_dir=scratch,
            num_train_epochs=epochs,
            per_device_train_batch_size=batch_size,
            learning_rate=learning_rate,
            warmup_steps=0.1,
            seed=seed,
            data_seed=seed,
            prompts=prompt,
            save_strategy="no",
            report_to="none",
            logging_steps=max(1, len(texts) // batch_size),
            **training_args,
        )
        trainer = SentenceTransformerTrainer(model=student, args=args, train_dataset=train_dataset, loss=train_loss)
        trainer.train()
        is_main_process = trainer.is_world_process_zero()
    student.eval()
    seconds = time.perf_counter() - start

    info = pruning_info(student)
    metadata = {
        "source_model": info["source_model"],
        "num_layers": info["num_layers"],
        "kept_layers": info["kept_layers"],
        "strategy": info["strategy"],
        "loss": type(train_loss).__name__,
        "loss_config": train_loss.get_config_dict() if hasattr(train_loss, "get_config_dict") else {},
        "num_queries": len(texts),
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
        "alignment_seconds": round(seconds, 1),
    }
    if held_out:
        metadata["agreement"] = {"before": before, "after": _agreement(teacher, student, held_out, batch_size)}
        logger.info("Student-teacher agreement on %d held-out queries: %s", len(held_out), metadata["agreement"])
    pair = AsymmetricPair(query_model=student, document_model=model, metadata=metadata)
    if output_dir is not None and is_main_process:
        pair.save(output_dir)
    return pair


def query_encoder(model: SentenceTransformer) -> SentenceTransformer:
    """A standalone copy of the model's query encoder: the model itself, or a Router's query route."""
    router = model[0] if len(model) and isinstance(model[0], Router) else None
    if router is None:
        return model
    if "query" not in router.sub_modules:
        raise ValueError(f"This Router has no 'query' route (routes: {list(router.sub_modules)}).")
    modules = [*router.sub_modules["query"], *list(model)[1:]]
    return SentenceTransformer(modules=copy.deepcopy(modules), device=str(model.device), prompts=model.prompts)


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
