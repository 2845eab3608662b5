"""The wheel ships the model-card templates and py.typed; CI runs the README test command; the README shows the results."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def test_wheel_ships_templates_and_marker(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT), "-w", str(tmp_path)]
    subprocess.run(command, check=True, capture_output=True)
    (wheel,) = tmp_path.glob("kale_st-0.1.0-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = sorted(p.name for p in (ROOT / "model_cards").glob("*.md"))
    assert templates, "model_cards/ holds no template"
    assert {f"kale_st/model_cards/{name}" for name in templates} <= names
    assert "kale_st/py.typed" in names
    assert {"kale_st/cli/__init__.py", "kale_st/cli/parser.py"} <= names  # the command line is a package
    assert not any(name.startswith(("benchmarks/", "tests/")) for name in names)


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in ci.splitlines() if "pytest" in line)
    assert f"```bash\n{command}\n```" in readme


@pytest.mark.parametrize("name", ["scifact_table", "asymmetric_table", "layer_choice_and_pseudo_queries", "onnx_latency"])
def test_readme_shows_the_benchmark_tables_it_cites(name: str) -> None:
    table = (ROOT / "benchmarks" / "results" / f"{name}.md").read_text()
    assert "| nDCG@10 |" in table and table.strip() in (ROOT / "README.md").read_text()
