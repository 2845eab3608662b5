"""``align``: prune a copy of the query encoder and align it to the frozen original on queries only."""

from __future__ import annotations

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
from sentence_transformers.sentence_transformer.evaluation import MSEEvaluator
from sentence_transformers.sentence_transformer.losses import MSELoss
from torch import nn

from kale_st.loss import DEFAULT_TEMPERATURE, KALELoss
from kale_st.pair import AsymmetricPair, task_model
from kale_st.pruning import num_layers, prune_layers, pruning_info
from kale_st.queries import CorpusLike, QueriesLike, load_corpus, load_queries, pseudo_queries

logger = logging.getLogger(__name__)

#: Alignment losses by name: each builds the loss for a student. One line to add another.
LOSSES: dict[str, Callable[..., nn.Module]] = {
    "kale": lambda student, temperature: KALELoss(student, temperature),
    "mse": lambda student, temperature: MSELoss(student),
}
#: Training recipe by number of kept layers, measured on SciFact (README): one layer needs a hotter, longer run.
RECIPES: dict[int, dict[str, float]] = {1: {"epochs": 40, "learning_rate": 3e-3, "batch_size": 32}}
DEFAULT_RECIPE: dict[str, float] = {"epochs": 20, "learning_rate": 1e-3, "batch_size": 64}
#: How many pseudo-queries ``align(model, corpus=...)`` makes by default.
DEFAULT_PSEUDO_QUERIES = 1000


def align(
    model: SentenceTransformer,
    queries: QueriesLike | None = None,
    *,
    corpus: CorpusLike | None = None,
    num_pseudo_queries: int = DEFAULT_PSEUDO_QUERIES,
    layers: int | list[int] = 2,
    strategy: str = "spread",
    loss: str = "kale",
    temperature: float = DEFAULT_TEMPERATURE,
    epochs: float | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
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
        corpus: Instead of ``queries`` (label-free alignment): documents to cut pseudo-queries from
            (:func:`kale_st.pseudo_queries`), ideally those the document encoder indexed: a list of strings, a dict
            id -> text, a Dataset, a text/JSONL file or a BEIR folder.
        num_pseudo_queries: How many pseudo-queries to make from ``corpus`` (seeded by ``seed``).
        layers: Layers the student keeps: a count (picked by ``strategy``) or exact indices.
        strategy: Layer-selection strategy (see :data:`kale_st.STRATEGIES`); ``search`` measures candidate
            layer sets on a sample of the alignment queries.
        loss: ``"kale"`` (:class:`KALELoss`) or ``"mse"`` (sentence-transformers' ``MSELoss``).
        temperature: :class:`KALELoss` softmax temperature.
        epochs, learning_rate, batch_size: Training recipe; ``None`` takes :data:`RECIPES` for the kept layer
            count (1 layer: 40 epochs at 3e-3, batch 32), else :data:`DEFAULT_RECIPE` (20 epochs at 1e-3, batch 64).
        seed: Seed of the Trainer (same seed, same student on CPU).
        eval_queries: Held-out queries: student-teacher MSE and cosine are reported before and after.
        query_column: Text column of a Dataset/JSONL ``queries`` (default ``query``, ``text`` or ``sentence``) or
            ``corpus`` (default ``text``).
        output_dir: If set, the pair is saved there (``query/``, ``document/``, ``kale_pair.json``).
        **training_args: Extra ``SentenceTransformerTrainingArguments`` (for example ``max_steps``).

    Returns:
        An :class:`AsymmetricPair`: ``query_model`` the aligned student, ``document_model`` the input model.

    Example:
        >>> pair = kale_st.align(SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2"), queries)  # doctest: +SKIP
        >>> pair.encode_query(["is pruning lossless?"]).shape  # doctest: +SKIP
        (1, 384)
        >>> pair = kale_st.align(model, corpus="benchmarks/data/scifact")  # no queries: pseudo-queries  # doctest: +SKIP
    """
    if loss not in LOSSES:
        raise ValueError(f"Unknown loss {loss!r}: use one of {sorted(LOSSES)}.")
    if (queries is None) == (corpus is None):
        raise ValueError(
            "align needs queries=... or, without queries, corpus=... (the documents to make pseudo-queries from)"
            + (", not both." if queries is not None else ".")
        )
    if queries is not None:
        texts, source = load_queries(queries, query_column), {"query_source": "queries"}
    else:
        documents = load_corpus(corpus, query_column)
        texts = pseudo_queries(documents, num_pseudo_queries, seed=seed)
        source = {"query_source": "pseudo", "corpus_documents": len(documents)}
        logger.info("Made %d pseudo-queries from %d corpus documents.", len(texts), len(documents))
    held_out = load_queries(eval_queries, query_column) if eval_queries is not None else None
    if output_dir is not None and Path(output_dir).exists() and any(Path(output_dir).iterdir()):
        raise ValueError(f"output_dir {str(output_dir)!r} exists and is not empty: pass a new or empty folder.")

    teacher = task_model(model, "query")
    student = prune_layers(teacher, layers, strategy=strategy, queries=texts)
    recipe = RECIPES.get(num_layers(student), DEFAULT_RECIPE)
    epochs = recipe["epochs"] if epochs is None else epochs
    learning_rate = recipe["learning_rate"] if learning_rate is None else learning_rate
    batch_size = int(recipe["batch_size"]) if batch_size is None else batch_size
    prompt = teacher.prompts.get("query") or None
    start = time.perf_counter()
    targets = teacher.encode_query(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=len(texts) > 1000)
    train_dataset = Dataset.from_dict({"query": texts, "label": targets.astype(np.float32).tolist()})
    before = _agreement(teacher, student, held_out, batch_size) if held_out else None

    train_loss = LOSSES[loss](student, temperature)
    with tempfile.TemporaryDirectory(prefix="kale-train-") as scratch:
        settings = {
            "num_train_epochs": epochs,
            "per_device_train_batch_size": batch_size,
            "learning_rate": learning_rate,
            "warmup_steps": 0.1,
            "seed": seed,
            "data_seed": seed,
            "prompts": prompt,
            "save_strategy": "no",
            "report_to": "none",
            "logging_steps": max(1, len(texts) // batch_size),
            # Train where the model lives; on CPU this is also what makes torchrun/accelerate use gloo DDP.
            "use_cpu": teacher.device.type == "cpu",
        }
        args = SentenceTransformerTrainingArguments(output_dir=scratch, **{**settings, **training_args})
        trainer = SentenceTransformerTrainer(model=student, args=args, train_dataset=train_dataset, loss=train_loss)
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
        "num_queries": len(texts),
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
        "training_steps": trainer.state.global_step,
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
