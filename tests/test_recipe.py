"""align's recipe: a step budget that does not grow with the queries, and label-free early stopping."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_model, write_tiny_transformer
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
from torch import nn
from transformers import TrainerControl

import kale_st
from kale_st.align import _carve
from kale_st.recipe import (
    DEFAULT_RECIPE,
    MAX_HELD_OUT,
    MIN_QUERIES,
    RECIPES,
    EarlyStopping,
    held_out_size,
    real_query_copies,
    recipe_for,
)

WORDS = "the a cat dog query document dense model layer fast slow retrieval with on is".split()


def queries(count: int) -> list[str]:
    """``count`` distinct short queries over the tiny vocabulary."""
    return [" ".join(WORDS[(i // len(WORDS) ** j) % len(WORDS)] for j in range(4)) + f" {i}" for i in range(count)]


def held_out_slice(texts: list[str], size: int, seed: int) -> list[str]:
    """The early-stopping slice align holds out: ``size`` seeded random texts, in their order."""
    return [texts[i] for i in sorted(random.Random(seed).sample(range(len(texts)), size))]


def test_held_out_slice_bounds() -> None:
    assert held_out_size(MIN_QUERIES - 1) == 0
    assert held_out_size(MIN_QUERIES) == round(MIN_QUERIES * 0.05)
    assert held_out_size(10**7) == MAX_HELD_OUT
    train, held_rows, rows = _carve(Dataset.from_dict({"query": queries(1000)}), 50, seed=1)
    texts, held = list(train["query"]), list(held_rows["query"])
    assert [queries(1000)[i] for i in rows] == texts  # the indices of the rows kept for training
    assert len(held) == 50 and len(texts) == 950 and not set(held) & set(texts)
    assert held == held_out_slice(queries(1000), 50, seed=1)  # seeded: the slice a list of texts gave
    assert texts == [text for text in queries(1000) if text not in held]  # the rest in their order


def test_step_budget_is_independent_of_the_number_of_queries(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m")
    few = kale_st.align(model, queries(64), max_steps=12, batch_size=8, early_stopping=False).metadata
    many = kale_st.align(model, queries(2000), max_steps=12, batch_size=8, early_stopping=False).metadata
    assert few["training_steps"] == many["training_steps"] == 12
    assert few["stop_reason"] == many["stop_reason"] == "step budget"
    default = kale_st.align(model, queries(64), batch_size=8, learning_rate=1e-3).metadata
    assert default["max_steps"] == default["training_steps"] == DEFAULT_RECIPE.max_steps and "epochs" not in default


def test_deeper_teachers_get_a_longer_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert recipe_for(2, teacher_layers=6) == recipe_for(2) == DEFAULT_RECIPE
    assert recipe_for(2, teacher_layers=12).max_steps == recipe_for(3, teacher_layers=12).max_steps == 600
    assert recipe_for(1, teacher_layers=12).learning_rate == RECIPES[1].learning_rate  # only the budget grows
    assert recipe_for(0, teacher_layers=12) == RECIPES[0]  # a static student keeps its own budget
    # align reads the teacher's depth: with 100 steps per teacher layer, the 4-layer tiny teacher's student trains 400.
    monkeypatch.setitem(kale_st.recipe.RECIPES, 2, replace(DEFAULT_RECIPE, steps_per_teacher_layer=100))
    meta = kale_st.align(tiny_model(tmp_path / "m"), queries(64), layers=2, batch_size=8, early_stopping=False).metadata
    assert meta["max_steps"] == meta["training_steps"] == 400


def test_early_stopping_stops_and_keeps_the_best_student(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m")
    texts = queries(MIN_QUERIES)
    # A learning rate far too high: agreement peaks early, then gets worse, so training stops before the budget.
    # float32 throughout, so the agreement recomputed below in float32 matches the one recorded during training.
    pair = kale_st.align(model, texts, max_steps=240, batch_size=16, learning_rate=0.5, seed=3, precision="fp32")
    meta = pair.metadata
    stopping = meta["early_stopping"]
    assert meta["stop_reason"] == stopping["stop_reason"] == "early stopping"
    assert meta["training_steps"] < 240 and stopping["held_out_queries"] == held_out_size(MIN_QUERIES)
    assert meta["num_queries"] == MIN_QUERIES  # the slice is counted among the alignment queries
    # The returned student is the best one seen, not the last one: its agreement on the slice is the recorded best.
    held = held_out_slice(texts, held_out_size(MIN_QUERIES), seed=3)
    teacher = model.encode_query(held, convert_to_tensor=True)
    student = pair.query_model.encode_query(held, convert_to_tensor=True)
    assert -100 * torch.mean((teacher - student) ** 2).item() == pytest.approx(stopping["best_agreement"], rel=1e-4)
    assert stopping["best_step"] < meta["training_steps"]


def test_patience_counts_only_from_min_step() -> None:
    """A dip in agreement early in the run (the learning rate near its peak) does not stop training; the same run of
    evaluations without a new best after ``min_step`` does."""
    stopper = EarlyStopping(nn.Linear(3, 2), "score", patience=2, min_step=50)
    control, stopped_at = TrainerControl(), None
    scores = {10: -1.0, 20: -3.0, 30: -3.0, 40: -2.0, 50: -0.5, 60: -0.9, 70: -0.8, 80: -0.7}
    for step, score in scores.items():
        stopper.on_evaluate(None, SimpleNamespace(global_step=step), control, metrics={"score": score})
        if control.should_training_stop and stopped_at is None:
            stopped_at = step
    assert (stopped_at, stopper.best_step, stopper.stop_reason) == (70, 50, "early stopping")
    # Without min_step the dip after step 10 stops the run at step 30.
    eager, control = EarlyStopping(nn.Linear(3, 2), "score", patience=2), TrainerControl()
    for step in (10, 20, 30):
        eager.on_evaluate(None, SimpleNamespace(global_step=step), control, metrics={"score": scores[step]})
    assert control.should_training_stop and eager.best_step == 10


def test_budget_or_epochs_not_both(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        kale_st.align(tiny_model(tmp_path / "m"), queries(8), max_steps=3, epochs=1)


def dropout_rates(model: torch.nn.Module) -> set[float]:
    return {module.p for module in model.modules() if isinstance(module, nn.Dropout)}


def test_alignment_trains_without_dropout_unless_asked_or_one_layer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_tiny_transformer(tmp_path / "m", "mpnet")  # MPNet's configuration: dropout 0.1
    rates_seen: list[set[float]] = []
    train_step = SentenceTransformerTrainer.training_step

    def recording_step(trainer: SentenceTransformerTrainer, model: torch.nn.Module, *args: object, **kwargs: object):
        rates_seen.append(dropout_rates(model))
        return train_step(trainer, model, *args, **kwargs)

    monkeypatch.setattr(SentenceTransformerTrainer, "training_step", recording_step)
    teacher = SentenceTransformer(str(folder), device="cpu")
    pair = kale_st.align(teacher, queries(40), layers=2, max_steps=3, batch_size=8, output_dir=tmp_path / "pair")
    assert rates_seen == [{0.0}] * 3 and pair.metadata["dropout"] is False
    assert "without dropout" in (tmp_path / "pair" / "query" / "README.md").read_text()
    # The returned student keeps its configured rates, and so does the saved one.
    assert dropout_rates(pair.query_model) == {0.1}
    assert dropout_rates(SentenceTransformer(str(tmp_path / "pair" / "query"), device="cpu")) == {0.1}

    rates_seen.clear()
    pair = kale_st.align(teacher, queries(40), layers=2, max_steps=3, batch_size=8, dropout=True,
                         output_dir=tmp_path / "with-dropout")
    assert rates_seen == [{0.1}] * 3 and pair.metadata["dropout"] is True
    assert "without dropout" not in (tmp_path / "with-dropout" / "query" / "README.md").read_text()

    rates_seen.clear()  # the 1-layer recipe keeps dropout on (a 12 -> 1 student collapsed without it)
    pair = kale_st.align(teacher, queries(40), layers=1, max_steps=3, batch_size=8)
    assert rates_seen == [{0.1}] * 3 and pair.metadata["dropout"] is True and RECIPES[1].dropout


def test_real_query_share_out_of_range_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"real_query_share=1: pass a share of the training rows, from 0 to under 1"):
        kale_st.align(tiny_model(tmp_path / "m"), queries(8), corpus=CORPUS, real_query_share=1)


def test_real_query_copies() -> None:
    assert real_query_copies(619, 9_527, 0.2) == 4  # SciFact: 619 real training queries, 9,527 pseudo-queries
    assert 4 * 619 / (4 * 619 + 9_527) >= 0.2 > 3 * 619 / (3 * 619 + 9_527)  # the fewest copies reaching the share
    assert real_query_copies(5_000, 10_000, 0.2) == 1  # already a third of the rows
    assert real_query_copies(619, 0, 0.2) == real_query_copies(0, 9_527, 0.2) == real_query_copies(619, 9_527, 0) == 1


#: 200 documents of 5 sentences of 6 distinct words: 1,000 distinct pseudo-queries.
CORPUS = [". ".join(" ".join(f"W{d}x{s}x{w}" for w in range(6)) for s in range(5)) + "." for d in range(200)]


def test_few_real_queries_are_repeated_beside_many_pseudo_queries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained_on: list[list[str]] = []
    trainer_init = SentenceTransformerTrainer.__init__

    def recording_init(trainer: SentenceTransformerTrainer, *args: object, **kwargs: object) -> None:
        trained_on.append(list(kwargs["train_dataset"]["query"]))
        trainer_init(trainer, *args, **kwargs)

    monkeypatch.setattr(SentenceTransformerTrainer, "__init__", recording_init)
    model, real = tiny_model(tmp_path / "m"), queries(60)
    meta = kale_st.align(model, real, corpus=CORPUS, num_pseudo_queries=700, max_steps=1, batch_size=8).metadata
    rows = Counter(trained_on[0])
    held = {text for text in real if text not in rows}  # the real queries early stopping held out
    assert meta["num_queries"] == 760 and meta["early_stopping"]["held_out_queries"] == held_out_size(760) == 38
    copies = real_query_copies(60 - len(held), 700 - (38 - len(held)), DEFAULT_RECIPE.real_query_share)
    assert copies > 1 and meta["real_query_copies"] == copies
    assert meta["real_query_share"] == DEFAULT_RECIPE.real_query_share
    assert {rows[text] for text in real if text not in held} == {copies}  # each real training query, copies times
    assert {count for text, count in rows.items() if text not in real} == {1}  # each pseudo-query once
    assert sum(rows.values()) == (60 - len(held)) * copies + 700 - (38 - len(held))  # held-out rows never trained on
    # real_query_share=0: every training row once, and the card says nothing of copies.
    meta = kale_st.align(model, real, corpus=CORPUS, num_pseudo_queries=700, max_steps=1, batch_size=8,
                         real_query_share=0, output_dir=tmp_path / "once").metadata
    assert meta["real_query_copies"] == 1 and len(trained_on[1]) == len(set(trained_on[1])) == 760 - 38
    assert "trained on" not in (tmp_path / "once" / "query" / "README.md").read_text()
    # 1 kept layer: the recipe repeats nothing (not measured there).
    assert RECIPES[1].real_query_share == RECIPES[0].real_query_share == 0
    meta = kale_st.align(model, real, corpus=CORPUS, num_pseudo_queries=700, layers=1, max_steps=1).metadata
    assert meta["real_query_copies"] == 1 and len(trained_on[2]) == 760 - 38


def test_the_card_says_how_often_real_queries_were_trained_on(tmp_path: Path) -> None:
    pair = kale_st.align(tiny_model(tmp_path / "m"), queries(20), corpus=CORPUS, num_pseudo_queries=300, max_steps=1,
                         batch_size=8, output_dir=tmp_path / "pair")
    copies = real_query_copies(20, 300, DEFAULT_RECIPE.real_query_share)
    assert copies > 1 and pair.metadata["real_query_copies"] == copies
    card = (tmp_path / "pair" / "query" / "README.md").read_text()
    assert f"20 real ones (each trained on {copies} times: at least 20 % of the training rows)" in card
