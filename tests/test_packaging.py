"""The install files agree with each other and with the README."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_installs_the_project_with_notebooks_extra():
    text = (ROOT / "environment.yml").read_text()
    pip_lines = re.findall(r"^\s+- (.+)$", text.split("- pip:")[1], flags=re.M)
    assert pip_lines == ["-e .[notebooks]"]
    assert "notebooks" in _pyproject()["project"]["optional-dependencies"]
    conda = re.findall(r"^  - ([a-z]+)(?:=\S+)?$", text.split("dependencies:")[1], flags=re.M)
    assert conda == ["python", "pip"]
    python = re.search(r"python=(\d+)\.(\d+)", text).groups()
    low = re.search(r">=(\d+)\.(\d+)", _pyproject()["project"]["requires-python"]).groups()
    assert tuple(map(int, python)) >= tuple(map(int, low))


def test_torch_is_not_pinned_to_an_unavailable_build():
    deps = _pyproject()["project"]["dependencies"]
    torch = [d for d in deps if re.match(r"torch\b", d) and not d.startswith("torchvision")]
    assert torch, "torch must be a dependency"
    assert all("==" not in d for d in torch), torch


def test_readme_opens_with_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```(?:bash|sh)?\n(.*?)```", readme, flags=re.S).group(1)
    commands = [ln.split("#")[0].strip() for ln in first_block.splitlines() if ln.split("#")[0].strip()]
    assert commands[:2] == ["make demo", "make test"]


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_ruff_clean():
    """The package, tests, benchmarks and notebooks pass ruff (configured in pyproject)."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "gi_utils", "tests", "benchmarks", "notebooks"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
