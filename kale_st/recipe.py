"""``align``'s training recipe: a step budget by kept-layer count and teacher depth, and early stopping on label-free
agreement.

The cost of ``align`` does not grow with the number of alignment queries beyond encoding them once: the student trains
for at most ``max_steps`` steps, and stops earlier when its agreement with the teacher on a held-out slice of the
alignment queries (carved automatically, no labels) stops improving.

Example:
    >>> recipe = recipe_for(2)
    >>> recipe.max_steps, recipe.learning_rate, recipe.batch_size, recipe.dropout, recipe.real_query_share
    (300, 0.0015, 128, False, 0.2)
    >>> recipe_for(2, teacher_layers=12).max_steps  # a 12-layer teacher: twice the budget of a 6-layer one
    600
    >>> held_out_size(10_000), held_out_size(500)
    (500, 0)
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """Step budget, peak learning rate, batch size, dropout (on or off while training), the least share of the
    training rows that real queries make up beside pseudo-queries (:func:`real_query_copies`) of an alignment run, and
    the least steps per teacher layer (a student pruned from a deeper teacher has more to learn; 0: ``max_steps``
    whatever the teacher)."""

    max_steps: int
    learning_rate: float
    batch_size: int
    dropout: bool = False
    real_query_share: float = 0.2
    steps_per_teacher_layer: int = 50


#: Recipe by number of kept layers, chosen on the SciFact validation split (benchmarks/DEFAULTS.md). For
#: ``layers=0``, a static token table, a high learning rate and a wide batch (init and learning rate chosen on
#: validation by ``benchmarks/static_student.py``, README "Zero layers"). Other counts take ``DEFAULT_RECIPE``.
#: Dropout is off while aligning (won for 2 and 3 layers on both teachers) except for 1 layer, whose 12 -> 1 student
#: of all-mpnet-base-v2 collapsed without it at this learning rate.
#: Real queries are repeated beside many pseudo-queries (``real_query_share``; won for 2 and 3 layers on both teachers)
#: except for 0 and 1 kept layers, where it was not measured.
#: Batches of 128 rather than 64 (the same steps, twice the queries seen) won for 2 and 3 layers on both teachers; the
#: 1-layer recipe keeps 64, where it was not measured. At batch 128, learning rate 1.5e-3 rather than 1e-3 won for
#: MiniLM 6 -> 2 and MPNet 12 -> 2 and 12 -> 3 and tied MiniLM 6 -> 3 (2e-3 tied 1.5e-3: the smaller step is kept).
#: The budget of a transformer student: at least 50 steps per teacher layer, 300 for a 6-layer teacher, 600 for a
#: 12-layer one (all-mpnet-base-v2's 12 -> 2 student gained at every budget from 300 to 600 steps); 75 a layer for 3
#: kept layers gained too little agreement for 1.5x the training. A static student keeps its own budget.
RECIPES: dict[int, Recipe] = {
    0: Recipe(max_steps=400, learning_rate=2e-2, batch_size=256, real_query_share=0.0, steps_per_teacher_layer=0),
    1: Recipe(max_steps=300, learning_rate=3e-3, batch_size=64, dropout=True, real_query_share=0.0),
}
DEFAULT_RECIPE = Recipe(max_steps=300, learning_rate=1.5e-3, batch_size=128)

#: Early stopping: agreement is measured this many times over the budget; training stops after ``PATIENCE``
#: measurements without a new best, counted from ``PATIENCE_FROM`` of the budget on, and the best student is kept.
#: Before that the learning rate is near its peak and agreement can dip for a while after the warmup (a static student
#: with a 200-step budget stopped in that dip at step 96 of 200, validation nDCG@10 0.499; README "Zero layers").
EVALUATIONS = 12
PATIENCE = 3
PATIENCE_FROM = 0.5
#: The held-out slice: a share of the alignment queries, within bounds; none below ``MIN_QUERIES`` queries.
HELD_OUT_FRACTION = 0.05
MAX_HELD_OUT = 500
MIN_QUERIES = 640
#: Early stopping's state in a checkpoint folder: its counters and the best weights so far.
STATE_FILE = "early_stopping.json"
WEIGHTS_FILE = "early_stopping.safetensors"


def recipe_for(num_layers: int, teacher_layers: int = 0) -> Recipe:
    """The default recipe for a student that keeps ``num_layers`` of the teacher's ``teacher_layers`` layers: a
    budget of at least ``steps_per_teacher_layer`` steps per teacher layer (a static student keeps its own)."""
    recipe = RECIPES.get(num_layers, DEFAULT_RECIPE)
    return replace(recipe, max_steps=max(recipe.max_steps, recipe.steps_per_teacher_layer * teacher_layers))


def real_query_copies(real: int, pseudo: int, share: float) -> int:
    """How many times each of ``real`` queries is trained on so that they make up at least ``share`` of the training
    rows beside ``pseudo`` pseudo-queries (1: they already do, or there is nothing to weigh them against).

    Example:
        >>> real_query_copies(619, 9_527, 0.2), real_query_copies(5_000, 10_000, 0.2), real_query_copies(619, 0, 0.2)
        (4, 1, 1)
    """
    if real == 0 or pseudo == 0 or share <= 0:
        return 1
    return math.ceil(share * pseudo / ((1 - share) * real))  # at least 1: every factor is positive


def held_out_size(num_queries: int) -> int:
    """How many alignment queries to hold out for early stopping (0: too few queries to spare any)."""
    if num_queries < MIN_QUERIES:
        return 0
    return min(MAX_HELD_OUT, round(num_queries * HELD_OUT_FRACTION))


class EarlyStopping(TrainerCallback):
    """Stop when ``metric`` has not improved for ``patience`` evaluations at or after step ``min_step``; restore the
    best weights at the end. Evaluations before ``min_step`` record a new best but count no patience.

    Unlike transformers' ``EarlyStoppingCallback`` it needs no checkpoint on disk (the best weights are kept in memory,
    on the CPU), so it behaves the same on every DDP rank. After training, ``stop_reason`` is ``"early stopping"`` or
    ``"step budget"`` and ``best_step`` the step whose weights were kept. When the Trainer saves checkpoints, each gets
    the callback's state too (:data:`STATE_FILE`, :data:`WEIGHTS_FILE`); :meth:`load` reads it back for a resumed run.
    """

    def __init__(self, model: torch.nn.Module, metric: str, patience: int = PATIENCE, min_step: int = 0) -> None:
        self.model, self.metric, self.patience, self.min_step = model, metric, patience, min_step
        self.best: float | None = None
        self.best_step = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.waited = 0
        self.stop_reason = "step budget"

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **_: Any) -> None:
        value = (metrics or {}).get(self.metric)
        if value is None:
            raise KeyError(f"early stopping needs the metric {self.metric!r}; the evaluation gave {sorted(metrics or {})}")
        if self.best is None or value > self.best:
            self.best, self.best_step, self.waited = value, state.global_step, 0
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        elif state.global_step >= self.min_step:
            self.waited += 1
            if self.waited >= self.patience:
                self.stop_reason = "early stopping"
                control.should_training_stop = True

    def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if self.best_state is not None and self.best_step != state.global_step:
            self.model.load_state_dict(self.best_state)
            logger.info("Early stopping: kept the weights of step %d (agreement %s).", self.best_step, self.best)
        self.best_state = None

    def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        """Write the state into the checkpoint folder the Trainer has just saved (on the main process only)."""
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        saved = {"best": self.best, "best_step": self.best_step, "waited": self.waited, "stop_reason": self.stop_reason}
        (folder / STATE_FILE).write_text(json.dumps(saved) + "\n")
        if self.best_state is not None:
            save_file({name: tensor.contiguous() for name, tensor in self.best_state.items()}, folder / WEIGHTS_FILE)

    def load(self, checkpoint: str | os.PathLike) -> None:
        """Take up the state :meth:`on_save` wrote into ``checkpoint`` (a ``checkpoint-<step>`` folder)."""
        folder = Path(checkpoint)
        saved = json.loads((folder / STATE_FILE).read_text())
        self.best, self.best_step, self.waited, self.stop_reason = (
            saved["best"], saved["best_step"], saved["waited"], saved["stop_reason"]
        )
        self.best_state = load_file(folder / WEIGHTS_FILE) if (folder / WEIGHTS_FILE).is_file() else None

    def summary(self) -> dict[str, Any]:
        return {"stop_reason": self.stop_reason, "best_step": self.best_step, "best_agreement": self.best}


@contextmanager
def without_dropout(model: nn.Module) -> Iterator[None]:
    """Every ``nn.Dropout`` of ``model`` at rate 0 inside the block, its own rate back after it.

    The student regresses the teacher's deterministic outputs (encoded without dropout) and serves without dropout, so
    alignment trains without it too (README "Defaults that transfer"). The configuration, and so a saved copy, keeps
    its rates.

    Example:
        >>> with without_dropout(student):  # doctest: +SKIP
        ...     trainer.train()
    """
    modules = [module for module in model.modules() if isinstance(module, nn.Dropout)]
    rates = [module.p for module in modules]
    for module in modules:
        module.p = 0.0
    try:
        yield
    finally:
        for module, rate in zip(modules, rates):
            module.p = rate
