"""align's checkpoints: a long run resumed from one ends as the uninterrupted run, with the same student."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_model
from sentence_transformers import SentenceTransformerTrainer
from test_recipe import queries
from transformers import TrainerCallback, TrainerControl

import kale_st
from kale_st.recipe import MIN_QUERIES, STATE_FILE, WEIGHTS_FILE, EarlyStopping
from kale_st.strategies import STRATEGIES

ALIGN = sys.modules["kale_st.align"]  # the module; kale_st.align is the function
# A learning rate far too high: agreement peaks at step 35, training stops early at step 50 (evaluated every 5 steps).
SETTINGS = {"max_steps": 60, "batch_size": 16, "learning_rate": 1.0, "seed": 4}


def weights(pair: kale_st.AsymmetricPair) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in pair.query_model.state_dict().items()}


def interrupt_at(step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make align's Trainer stop at ``step`` (once its checkpoint is saved), as if the run had been killed there."""

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **_):
            control.should_training_stop = control.should_training_stop or state.global_step == step

    class Interrupted(SentenceTransformerTrainer):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.add_callback(Stop())

    monkeypatch.setattr(ALIGN, "SentenceTransformerTrainer", Interrupted)


def untimed(metadata: dict) -> dict:
    """``metadata`` without its wall-clock times."""
    search = {key: value for key, value in metadata["layer_search"].items() if key != "seconds"}
    return {**metadata, "alignment_seconds": None, "layer_search": search}


def no_search(*args, **kwargs):
    raise AssertionError("a resumed run searched the layers again")


def test_a_resumed_run_ends_as_the_uninterrupted_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model(tmp_path / "m")
    texts = queries(MIN_QUERIES)
    full = kale_st.align(model, texts, checkpoint_dir=tmp_path / "full", **SETTINGS)
    meta = full.metadata
    best, steps = meta["early_stopping"]["best_step"], meta["training_steps"]
    assert (meta["strategy"], meta["stop_reason"], best, steps) == ("search", "early stopping", 35, 50)
    # Saving checkpoints does not change training: the run without checkpoint_dir gives the same student.
    plain = kale_st.align(model, texts, **SETTINGS)
    assert all(torch.equal(plain.query_model.state_dict()[k], v) for k, v in weights(full).items())
    # Two safetensors checkpoints are kept, each with the early-stopping state; the targets are cached beside them.
    assert sorted(p.name for p in (tmp_path / "full").glob("checkpoint-*")) == ["checkpoint-45", "checkpoint-50"]
    last = tmp_path / "full" / "checkpoint-50"
    assert (last / "model.safetensors").is_file() and not (last / "pytorch_model.bin").exists()
    assert (last / WEIGHTS_FILE).is_file() and json.loads((last / STATE_FILE).read_text())["best_step"] == best
    assert list((tmp_path / "full" / "targets").glob("targets-*/targets.json"))

    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        interrupt_at(40, patch)  # after the best step (35), before early stopping (50)
        assert kale_st.align(model, texts, checkpoint_dir=run, **SETTINGS).metadata["training_steps"] == 40
    saved = json.loads((run / "checkpoint-40" / STATE_FILE).read_text())
    assert (saved["best_step"], saved["waited"], saved["stop_reason"]) == (35, 1, "step budget")
    recorded = json.loads((run / "kale_student.json").read_text())
    assert recorded["layers"] == 2 and recorded["lineage"]["kept_layers"] == meta["kept_layers"]
    copy = tmp_path / "copy"  # the checkpoint and the student file, elsewhere: resumed from a path below
    shutil.copytree(run / "checkpoint-40", copy / "checkpoint-40")
    shutil.copy(run / "kale_student.json", copy)

    monkeypatch.setitem(STRATEGIES, "search", no_search)
    for resumed in (
        kale_st.align(model, texts, checkpoint_dir=run, resume_from_checkpoint=True, **SETTINGS),
        kale_st.align(model, texts, resume_from_checkpoint=str(copy / "checkpoint-40"), **SETTINGS),
    ):
        # Bit-identical on CPU: the same student and the same early stop, with the best weights of step 35 kept.
        assert all(torch.equal(resumed.query_model.state_dict()[k], v) for k, v in weights(full).items())
        assert untimed(resumed.metadata) == untimed(meta)
        assert kale_st.pruning_info(resumed.query_model) == recorded["lineage"]  # "search" and its report, not indices


def test_resume_errors_are_clear(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m")
    texts = queries(8)
    with pytest.raises(ValueError, match="pass checkpoint_dir="):
        kale_st.align(model, texts, resume_from_checkpoint=True)
    with pytest.raises(ValueError, match=r"checkpoint_dir '.*empty' has no checkpoint-<step> folder"):
        kale_st.align(model, texts, checkpoint_dir=tmp_path / "empty", resume_from_checkpoint=True)
    with pytest.raises(ValueError, match="is not a checkpoint folder"):
        kale_st.align(model, texts, resume_from_checkpoint=str(tmp_path / "nothing" / "checkpoint-3"))
    (tmp_path / "run" / "checkpoint-3").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds checkpoints of an earlier run: pass resume_from_checkpoint=True"):
        kale_st.align(model, texts, checkpoint_dir=tmp_path / "run")
    with pytest.raises(ValueError, match=r"kale_student.json' is missing"):
        kale_st.align(model, texts, checkpoint_dir=tmp_path / "run", resume_from_checkpoint=True)
    (tmp_path / "run" / "kale_student.json").write_text(json.dumps({"layers": 1, "lineage": {"kept_layers": [3]}}))
    with pytest.raises(ValueError, match="had layers=1, this one layers=2: resume with the same layers"):
        kale_st.align(model, texts, layers=2, checkpoint_dir=tmp_path / "run", resume_from_checkpoint=True)


def test_early_stopping_state_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    stopper = EarlyStopping(model, "score", patience=3)
    args, control = SimpleNamespace(output_dir=str(tmp_path)), TrainerControl()
    for step, score in ((5, -2.0), (10, -1.0), (15, -1.5)):
        state = SimpleNamespace(global_step=step, is_world_process_zero=True)
        stopper.on_evaluate(args, state, control, metrics={"score": score})
        if step == 10:
            best = {name: tensor.clone() for name, tensor in model.state_dict().items()}
            with torch.no_grad():
                model.weight.add_(1.0)  # training goes on: the kept best weights must not follow
    (tmp_path / "checkpoint-15").mkdir()
    stopper.on_save(args, state, control)
    (tmp_path / "checkpoint-20").mkdir()
    stopper.on_save(args, SimpleNamespace(global_step=20, is_world_process_zero=False), control)
    assert not list((tmp_path / "checkpoint-20").iterdir())  # only the main process writes

    resumed = EarlyStopping(torch.nn.Linear(3, 2), "score", patience=3)
    resumed.load(tmp_path / "checkpoint-15")
    assert (resumed.best, resumed.best_step, resumed.waited, resumed.stop_reason) == (-1.0, 10, 1, "step budget")
    assert all(torch.equal(resumed.best_state[name], tensor) for name, tensor in best.items())
