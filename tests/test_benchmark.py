"""kale_st.benchmark.query_latency on tiny models (structure and bookkeeping only: no timing assertions)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from conftest import SENTENCES, assert_same_state, state, tiny_model

import kale_st
from kale_st.benchmark import portable_args, query_latency


def test_query_latency_reports_every_model_against_the_first(tmp_path: Path) -> None:
    teacher = tiny_model(tmp_path / "m")
    student = kale_st.prune_layers(teacher, 1)
    before = state(teacher)
    results = query_latency({"teacher": teacher, "student": student}, SENTENCES * 3, batch_size=4, warmup=2)
    assert list(results) == ["teacher", "student"]
    for r in results.values():
        assert 0 < r["forward_p50_ms"] and 0 < r["p50_ms"] <= r["p95_ms"] and r["queries_per_second"] > 0
        assert r["threads"] == torch.get_num_threads() and r["queries"] == 12
    assert results["teacher"]["speedup"] == results["teacher"]["forward_speedup"] == 1.0
    t, s = results["teacher"], results["student"]
    assert s["speedup"] == pytest.approx(t["p50_ms"] / s["p50_ms"])
    assert s["throughput_speedup"] == pytest.approx(s["queries_per_second"] / t["queries_per_second"])
    assert_same_state(before, teacher)


def test_query_latency_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one model"):
        query_latency({}, SENTENCES)
    with pytest.raises(ValueError, match="non-empty list of strings"):
        query_latency({"m": tiny_model(tmp_path / "m")}, [])


def test_forward_timing_of_a_router_model_runs_its_query_route(tmp_path: Path) -> None:
    from kale_st.benchmark import _features

    model = kale_st.asymmetric(tiny_model(tmp_path / "m"), query_layers=1)
    calls = {"query": 0, "document": 0}
    for route in calls:
        model[0].sub_modules[route][0].register_forward_hook(lambda *_, r=route: calls.__setitem__(r, calls[r] + 1))
    with torch.inference_mode():
        model(_features(model, "the cat"))
    assert calls == {"query": 1, "document": 0}


def test_portable_args_records_no_path_of_this_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    args = argparse.Namespace(
        data=tmp_path / "repo" / "benchmarks" / "data" / "scifact",
        model=str(tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "pkg" / "model"),
        cache=str(tmp_path / "home" / ".cache" / "kale_st"),
        elsewhere="/opt/models/teacher",
        layers=[1, 2],
        relative="results/out",
    )
    recorded = portable_args(args)
    assert recorded == {"data": "benchmarks/data/scifact", "model": "pkg/model", "cache": "~/.cache/kale_st",
                        "elsewhere": "teacher", "layers": [1, 2], "relative": "results/out"}
    assert str(tmp_path) not in repr(recorded)
