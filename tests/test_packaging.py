"""The install files agree with each other and with the README."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from standin.image import new_session

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_installs_the_project_with_notebooks_extra():
    """environment.yml installs the notebooks and dev extras: jupyter, and what
    `pytest --nbval` needs (pytest, nbval)."""
    text = (ROOT / "environment.yml").read_text()
    pip_lines = re.findall(r"^\s+- (.+)$", text.split("- pip:")[1], flags=re.M)
    assert pip_lines == ["-e .[notebooks,dev]"]
    extras = _pyproject()["project"]["optional-dependencies"]
    assert "notebooks" in extras
    assert {"pytest", "nbval"} <= {re.match(r"[A-Za-z0-9_.-]+", d).group(0) for d in extras["dev"]}
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


@pytest.mark.slow
def test_every_module_imports_with_the_base_dependencies(base_image, tmp_path):
    """Every gi_utils module imports in an environment with only the base dependencies
    (what `pip install .` installs without extras): no nbconvert, jupyter or pytest."""
    session = new_session(base_image, tmp_path / "session", tmp_path / "root")
    checkout = tmp_path / "checkout"  # this checkout's gi_utils alone (not tests/, benchmarks/)
    checkout.mkdir()
    (checkout / "gi_utils").symlink_to(ROOT / "gi_utils", target_is_directory=True)
    (session.site / "gi_utils_checkout.pth").write_text(f"{checkout}\n")
    script = """
import importlib, importlib.util, json, pkgutil, sys, gi_utils
extras = [m for m in ("nbconvert", "notebook", "jupyterlab", "pytest", "nbval", "hypothesis", "tensorboard", "ruff")
          if importlib.util.find_spec(m)]
failed, names = {}, []
def note(name):
    err = sys.exc_info()[1]
    failed[name] = f"{type(err).__name__}: {err}"
for info in pkgutil.walk_packages(gi_utils.__path__, "gi_utils.", onerror=note):
    names.append(info.name)
    if info.name.endswith(".__main__"):  # entry points: importing one runs it
        continue
    try:
        importlib.import_module(info.name)
    except Exception as err:
        failed[info.name] = f"{type(err).__name__}: {err}"
print(json.dumps({"extras": extras, "names": names, "failed": failed, "file": gi_utils.__file__}))
"""
    done = session.run(["-c", script], cwd=tmp_path, NO_ALBUMENTATIONS_UPDATE="1", HF_HUB_OFFLINE="1")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["extras"] == []  # the environment really lacks the extras
    assert report["file"].startswith(str(checkout))
    assert report["failed"] == {}
    assert "gi_utils.pipeline.series" in report["names"] and len(report["names"]) > 30


def test_a_2d_pipeline_does_not_import_monai():
    """MONAI's import costs about 5 s of CPU: every stage imports without it, so a notebook
    kernel or a loader process of a 2.5D run never pays it; a 3-D model still builds."""
    probe = ("import sys\nimport gi_utils.pipeline, gi_utils.training, gi_utils.report\n"
             "assert 'monai' not in sys.modules, sorted(m for m in sys.modules if m.startswith('monai'))[:5]\n"
             "from gi_utils.data import build_transforms_3d\nfrom gi_utils.models import build_model\n"
             "print(type(build_model('segresnet3d')).__name__, type(build_transforms_3d()).__name__)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["SegResNet", "Compose"]
