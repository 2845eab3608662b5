"""Mixed precision in align: bfloat16 targets and training steps, a float32 student either way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SENTENCES, tiny_model
from test_align import FAST, QUERIES

import kale_st
from kale_st.precision import native_bf16, resolve_precision
from kale_st.targets import teacher_targets

CPU = torch.device("cpu")


def test_precision_names_are_checked_and_auto_follows_the_hardware() -> None:
    assert resolve_precision("auto", CPU) == ("bf16" if native_bf16(CPU) else "fp32")
    assert [resolve_precision(name, CPU) for name in ("bf16", "fp32")] == ["bf16", "fp32"]
    with pytest.raises(ValueError, match=r"precision='fp16': use one of \['auto', 'bf16', 'fp32'\]"):
        resolve_precision("fp16", CPU)


def test_bf16_targets_are_close_to_float32_ones_and_cached_apart(tmp_path: Path) -> None:
    teacher = tiny_model(tmp_path / "m")
    cache = tmp_path / "cache"
    exact, fast = (np.asarray(teacher_targets(teacher, QUERIES, cache_dir=cache, precision=name)
                              .with_format("numpy")["label"]) for name in ("fp32", "bf16"))
    assert fast.dtype == np.float32
    np.testing.assert_array_equal(exact, teacher.encode_query(QUERIES))
    assert not np.array_equal(fast, exact)  # really computed in bfloat16...
    cosine = (fast * exact).sum(1) / np.linalg.norm(fast, axis=1) / np.linalg.norm(exact, axis=1)
    assert cosine.min() > 0.99  # ...and still the teacher's direction
    assert len(list(cache.glob("targets-*"))) == 2  # one cache entry per precision


def test_bf16_alignment_trains_and_returns_a_float32_student(tmp_path: Path) -> None:
    pair = kale_st.align(tiny_model(tmp_path / "m"), QUERIES, precision="bf16", output_dir=tmp_path / "pair", **FAST)
    assert pair.metadata["precision"] == pair.metadata["training_precision"] == "bf16"
    assert {p.dtype for p in pair.query_model.parameters()} == {torch.float32}
    # The returned student is not left under the Trainer's autocast: it encodes as the saved one does, in float32.
    loaded = kale_st.AsymmetricPair.load(tmp_path / "pair", device="cpu")
    assert torch.equal(loaded.encode_query(SENTENCES, convert_to_tensor=True),
                       pair.encode_query(SENTENCES, convert_to_tensor=True))
    assert "bfloat16 mixed precision (float32 weights)" in (tmp_path / "pair" / "query" / "README.md").read_text()

    exact = kale_st.align(tiny_model(tmp_path / "m2"), QUERIES, precision="fp32", output_dir=tmp_path / "p2", **FAST)
    assert exact.metadata["precision"] == exact.metadata["training_precision"] == "fp32"
    assert "bfloat16" not in (tmp_path / "p2" / "query" / "README.md").read_text()
    # Same seed, same data: the precision is what differs between the two students.
    assert not torch.equal(exact.encode_query(SENTENCES, convert_to_tensor=True),
                           pair.encode_query(SENTENCES, convert_to_tensor=True))


def test_a_bad_precision_fails_before_any_encoding(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="precision='half'"):
        kale_st.align(tiny_model(tmp_path / "m"), QUERIES, precision="half", cache_dir=tmp_path / "cache", **FAST)
    assert not (tmp_path / "cache").exists()


def test_a_users_float16_flag_is_the_recorded_training_precision(tmp_path: Path) -> None:
    pair = kale_st.align(tiny_model(tmp_path / "m"), QUERIES, precision="bf16", fp16=True, output_dir=tmp_path / "pair",
                         **FAST)
    assert (pair.metadata["precision"], pair.metadata["training_precision"]) == ("bf16", "fp16")  # targets, steps
    card = (tmp_path / "pair" / "query" / "README.md").read_text()
    assert "float16 mixed precision (float32 weights)" in card and "bfloat16" not in card
