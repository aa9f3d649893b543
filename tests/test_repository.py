"""The repository's committed state: README blocks equal what produced them, notebooks
committed whole with one setup cell, and the setup cell's install order."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from standin.image import new_session

from gi_utils.paths import REPO_ROOT
from gi_utils.pipeline import readme_block, readme_pictures, setup_cell_drift
from gi_utils.pipeline.notebook_files import SETUP_CELL, notebook_paths
from gi_utils.training import presets_table


def test_readme_results_are_the_published_comparison():
    """The README's results block is the table that `make docs` copied from the last demo."""
    results = REPO_ROOT / "pictures" / "results.md"
    if not results.is_file():
        pytest.fail("pictures/results.md is missing: run `make demo`, then `make docs`, and commit")
    assert readme_block("results").strip() == results.read_text().strip()


def test_readme_selection_is_the_published_choice():
    selection = REPO_ROOT / "pictures" / "selection.md"
    assert selection.is_file(), "pictures/selection.md is missing: run `make demo`, then `make docs`"
    assert readme_block("selection").strip() == selection.read_text().strip()


def test_readme_configuration_table_is_the_presets():
    assert readme_block("presets").strip() == presets_table().strip()


def test_readme_pictures_exist():
    names = readme_pictures()
    assert names, "the README shows no picture"
    for name in names:
        assert (REPO_ROOT / "pictures" / name).is_file(), name


def test_notebooks_are_committed_executed_or_stripped():
    for path in notebook_paths():
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        counts = [c.execution_count for c in code]
        executed = all(isinstance(n, int) for n in counts)
        stripped = all(n is None and not c.outputs for n, c in zip(counts, code))
        assert executed or stripped, f"{path.name}: some cells executed, some not"
        assert not any("sys.path" in c.source for c in code), path.name
        assert not any("/kaggle/input/uw-madison" in c.source for c in code), path.name
        assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1, path.name


def test_committed_outputs_name_no_temporary_folder():
    """`make notebooks` runs them in a temporary runs folder; the saved outputs call it `runs`."""
    for path in notebook_paths():
        text = "".join(str(c.get("outputs", "")) for c in nbformat.read(path, as_version=4).cells)
        assert not re.search(r"/tmp/|gi_nb_runs_|gi_test_runs_", text), f"{path.name}: an output names a temporary folder"


def test_every_notebook_starts_with_the_one_setup_cell():
    assert setup_cell_drift() == [], "run `make notebooks` to copy notebooks/setup_cell.py"


STANDIN = Path(__file__).resolve().parent / "standin"


def _setup(cwd: Path, root: Path, **env: str) -> subprocess.CompletedProcess:
    """The setup cell's code in a fresh interpreter, forced to act (as where gi_utils is
    missing) with the platform mounts below ``root`` and, unless GI_SETUP_DRY_RUN=0, only
    printing the pip command it chose."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("GI_", "COLAB_", "PIP_"))}
    environ = {**environ, "GI_SETUP_FORCE": "1", "GI_SETUP_DRY_RUN": "1", "GI_PLATFORM_ROOT": str(root), **env}
    return subprocess.run([sys.executable, "-c", SETUP_CELL.read_text()], cwd=cwd, env=environ,
                          capture_output=True, text=True)  # fmt: skip


def _wheel(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gi_utils-0.1-py3-none-any.whl").write_bytes(b"")
    return folder


def test_setup_cell_prefers_the_checkout_it_sits_in(tmp_path):
    checkout = tmp_path / "repo"
    (checkout / "gi_utils").mkdir(parents=True)
    (checkout / "notebooks").mkdir()
    (checkout / "pyproject.toml").write_text("[project]\n")
    _wheel(tmp_path / "root" / "kaggle" / "input" / "gi-bundle")
    out = _setup(checkout / "notebooks", tmp_path / "root").stdout
    assert f"from the checkout {checkout} with: -m pip install -q -e {checkout}" in out


@pytest.mark.parametrize("below", ["", "wheels"])
def test_setup_cell_installs_the_attached_bundle_offline(tmp_path, below):
    """The bundle's wheels at the top of the attached dataset (as `kaggle datasets create`
    delivers it) or one folder below, read under GI_PLATFORM_ROOT, with --no-index."""
    wheels = _wheel(tmp_path / "root" / "kaggle" / "input" / "gi-bundle" / below)
    out = _setup(tmp_path, tmp_path / "root").stdout
    assert f"from the wheels in {wheels} (offline) with: -m pip install -q --no-index --find-links={wheels} gi-utils" in out


def test_setup_cell_uses_the_repository_only_when_set(tmp_path):
    res = _setup(tmp_path, tmp_path / "root", GI_SETUP_DRY_RUN="0", PIP_NO_INDEX="1")
    assert res.returncode != 0
    assert "could not install gi_utils; tried: nothing" in res.stderr and "github.com" not in res.stderr
    assert "attach the bundle dataset of `make kaggle`" in res.stderr
    out = _setup(tmp_path, tmp_path / "root", GI_REPO_URL="git+https://example.org/me/gi").stdout
    assert "from the repository git+https://example.org/me/gi" in out


def test_setup_cell_failure_says_what_was_tried(tmp_path):
    wheels = tmp_path / "root" / "kaggle" / "input" / "gi-bundle"
    wheels.mkdir(parents=True)
    (wheels / "gi_utils-0.1-py3-none-any.whl").write_bytes(b"not a wheel")
    missing = tmp_path / "no-such-package"
    res = _setup(tmp_path, tmp_path / "root", GI_SETUP_DRY_RUN="0", GI_REPO_URL=str(missing), PIP_NO_INDEX="1",
                 PIP_IGNORE_INSTALLED="1")  # as where gi_utils is not installed  # fmt: skip
    assert res.returncode != 0
    assert (f"could not install gi_utils; tried: the wheels in {wheels} (offline); the wheels in {wheels} and the "
            f"package index; the repository {missing}") in res.stderr  # fmt: skip
    assert str(tmp_path / "root" / "kaggle" / "input" / "*") in res.stderr


@pytest.mark.parametrize("drive", [True, False])
def test_setup_cell_on_colab_mounts_drive_and_uses_its_wheels(tmp_path, drive):
    """On Colab (COLAB_RELEASE_TAG set) the cell mounts Drive (the google.colab stand-in)
    and takes the wheels copied to MyDrive/gi-tract-segmentation/wheels."""
    _wheel(tmp_path / "drive" / "gi-tract-segmentation" / "wheels")
    root = tmp_path / "root"
    env = {"COLAB_RELEASE_TAG": "standin", "PYTHONPATH": str(STANDIN / "colab_fake"),
           "GI_STANDIN_DRIVE_DIR": str(tmp_path / "drive"), "GI_STANDIN_DRIVE": "1" if drive else "0"}  # fmt: skip
    if drive:
        out = _setup(tmp_path, root, **env).stdout
        wheels = root / "content" / "drive" / "MyDrive" / "gi-tract-segmentation" / "wheels"
        assert f"Mounted at {root / 'content' / 'drive'}" in out
        assert f"from the wheels in {wheels} (offline) with: -m pip install -q --no-index --find-links={wheels}" in out
    else:
        res = _setup(tmp_path, root, GI_SETUP_DRY_RUN="0", PIP_NO_INDEX="1", PIP_IGNORE_INSTALLED="1", **env)
        assert res.returncode != 0 and "Google Drive not mounted" in res.stdout
        assert "copy the wheels of `make kaggle` (dist/kaggle/dataset/*.whl) to MyDrive/gi-tract-segmentation/wheels" in res.stderr


@pytest.mark.slow
def test_setup_cell_installs_from_drive_in_a_colab_session(kaggle_image, bundle_wheels, tmp_path):
    """A fresh Colab session (the image stand-in with the google.colab fake; Colab's own
    image is not modelled beyond that): the cell mounts Drive and installs gi_utils from
    the wheels the user copied to MyDrive/gi-tract-segmentation/wheels."""
    drive = tmp_path / "drive"
    shutil.copytree(bundle_wheels, drive / "gi-tract-segmentation" / "wheels")
    root = tmp_path / "root"
    session = new_session(kaggle_image, tmp_path / "session", root, colab=True)
    done = session.run(["-c", SETUP_CELL.read_text() + "\nimport gi_utils; print(gi_utils.__file__)"], cwd=tmp_path,
                       GI_STANDIN_DRIVE_DIR=str(drive))  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    wheels = root / "content" / "drive" / "MyDrive" / "gi-tract-segmentation" / "wheels"
    assert f"gi_utils installed from the wheels in {wheels} (offline)" in done.stdout
    assert done.stdout.split()[-1].startswith(str(session.site))


def test_a_passing_tests_temporary_folder_is_deleted(tmp_path):
    """The suite's training tests write ~0.3 GB of checkpoints each; with pytest's default
    retention three sessions of them filled the CI machine's disk. A session under the
    project's settings must delete a passing test's folder and keep a failing one's."""
    (tmp_path / "test_disk.py").write_text(
        "def test_passes(tmp_path):\n    (tmp_path / 'w').write_bytes(b'x')\n    print('TMP', tmp_path)\n\n"
        "def test_fails(tmp_path):\n    print('TMP', tmp_path)\n    assert False\n")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(REPO_ROOT / "pyproject.toml"), "--rootdir", str(tmp_path),
         "-p", "no:cacheprovider", "-p", "no:xdist", "-s", str(tmp_path / "test_disk.py")],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTEST_DEBUG_TEMPROOT": str(tmp_path)},
    )  # fmt: skip
    folders = {Path(path).name: Path(path) for path in re.findall(r"TMP (\S+)", run.stdout)}
    assert len(folders) == 2, run.stdout + run.stderr
    assert not folders["test_passes0"].exists(), "a passing test's folder was kept"
    assert folders["test_fails0"].exists(), "a failing test's folder was deleted"
