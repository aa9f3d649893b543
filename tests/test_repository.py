"""The repository's committed state: the README's and the docs' generated blocks equal what
produced them, the README short and its quick starts first, notebooks committed whole with
one setup cell and outputs a reader can read, and the setup's install order."""

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
from gi_utils.pipeline import BLOCKS, doc_block, doc_pictures, readme_block, setup_cell_drift
from gi_utils.pipeline.notebook_files import (
    SETUP_CELL,
    SETUP_SCRIPT,
    lines_before_first_output,
    notebook_paths,
    output_problems,
)
from gi_utils.training import presets_table

#: The most lines of code a reader of a committed notebook scrolls past before its first output.
MAX_CODE_BEFORE_OUTPUT = 15


def test_readme_results_are_the_published_comparison():
    """The README's results block is the table that `make docs` copied from the last demo."""
    results = REPO_ROOT / "pictures" / "results.md"
    if not results.is_file():
        pytest.fail("pictures/results.md is missing: run `make demo`, then `make docs`, and commit")
    assert readme_block("results").strip() == results.read_text().strip()


def test_docs_selection_is_the_published_choice():
    selection = REPO_ROOT / "pictures" / "selection.md"
    assert selection.is_file(), "pictures/selection.md is missing: run `make demo`, then `make docs`"
    assert doc_block("selection", REPO_ROOT / "docs" / "results.md").strip() == selection.read_text().strip()


def test_docs_configuration_table_is_the_presets():
    assert doc_block("presets", REPO_ROOT / "docs" / "configuration.md").strip() == presets_table().strip()


def test_every_generated_block_is_where_make_docs_writes_it():
    for doc, blocks in BLOCKS.items():
        for block in blocks:
            doc_block(block, REPO_ROOT / doc)  # raises when the markers are missing


def test_readme_and_docs_pictures_exist():
    docs = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    names = [n for d in docs for n in doc_pictures(d)]
    assert doc_pictures(REPO_ROOT / "README.md"), "the README shows no picture"
    for name in names:
        assert (REPO_ROOT / "pictures" / name).is_file(), name


def test_make_docs_writes_each_block_in_its_file(tmp_path):
    """`make docs` (demo=False: the tables and figures alone) on a copy of the README and the
    docs: the demo's tables land in the README and docs/results.md, the presets in
    docs/configuration.md, the figures the pages show in pictures/."""
    from gi_utils.pipeline import publish_docs

    root, runs = tmp_path / "repo", tmp_path / "runs"
    shutil.copytree(REPO_ROOT / "docs", root / "docs", ignore=shutil.ignore_patterns("demo"))
    shutil.copyfile(REPO_ROOT / "README.md", root / "README.md")
    (runs / "pictures").mkdir(parents=True)
    (runs / "pictures" / "results.md").write_text("| Model |\n|---|\n| new_run |\n")
    (runs / "pictures" / "selection.md").write_text("| Model |\n|---|\n| new_choice |\n")
    (runs / "pictures" / "results.json").write_text("{}")
    shown = {n for d in [root / "README.md", *(root / "docs").glob("*.md")] for n in doc_pictures(d)}
    for name in shown:
        (runs / "pictures" / name).write_bytes(b"png")
    publish_docs(runs, root, demo=False)
    assert "new_run" in doc_block("results", root / "README.md")
    assert "new_choice" in doc_block("selection", root / "docs" / "results.md")
    assert doc_block("presets", root / "docs" / "configuration.md").strip() == presets_table().strip()
    assert {p.name for p in (root / "pictures").iterdir()} == shown | {"results.md", "results.json", "selection.md"}
    with pytest.raises(FileNotFoundError, match="run `make demo` first"):
        publish_docs(runs, root)  # the demo's notebooks are missing


def test_readme_is_read_in_five_minutes():
    """At most 300 lines, the course template's headings in order, and the quick starts for
    Kaggle, Colab and a local machine on its first screen (before section 1)."""
    text = (REPO_ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    headings = ["## Quick start", "## 1. Problem statement", "## 2. Related works", "## 3. Method and results",
                "## 4. Implementation", "### 4.1 Dataset", "### 4.2 Model", "### 4.3 Configurations", "### 4.4 Train",
                "### 4.5 Evaluate"]  # fmt: skip
    where = [text.find(f"\n{h}\n") for h in headings]
    assert -1 not in where and where == sorted(where), dict(zip(headings, where, strict=True))
    first_screen = text[: where[1]]
    for platform in ("**On Kaggle.**", "**On Colab.**", "**Locally**"):
        assert platform in first_screen, platform


def test_readme_and_docs_links_resolve():
    """Every relative link of the README and the docs names a file of the repository (or
    the demo's pages, which `make docs` writes)."""
    for doc in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\((?!https?://)([^)#\s]+)", doc.read_text()):
            path = (doc.parent / target).resolve()
            if "docs/demo/" in str(path):  # written by make docs
                continue
            assert path.exists(), f"{doc.name} links to {target}, which does not exist"


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


def test_committed_notebooks_show_output_early_and_nothing_raw():
    """A reader meets at most 15 lines of code before the first output, and no output shows
    an absolute path, a raw dict, a float of five decimals or more, or a figure twice. (The
    notebooks before issue 29: 87-108 lines of code first, raw dicts of 16-digit floats,
    03's slice viewer shown twice.)"""
    for path in notebook_paths():
        nb = nbformat.read(path, as_version=4)
        assert lines_before_first_output(nb) <= MAX_CODE_BEFORE_OUTPUT, (path.name, lines_before_first_output(nb))
        assert output_problems(nb) == [], (path.name, output_problems(nb))


def test_committed_notebooks_open_with_what_the_reader_learns_and_use_tags_not_comments():
    for path in notebook_paths():
        nb = nbformat.read(path, as_version=4)
        first = nb.cells[0]
        assert first.cell_type == "markdown" and first.source.startswith("# "), path.name
        assert "What you will learn" in first.source, path.name
        assert sum(c.cell_type == "markdown" and "\n## " in "\n" + c.source for c in nb.cells) >= 3, path.name
        code = "".join(c.source for c in nb.cells if c.cell_type == "code")
        for glue in ("NBVAL_IGNORE_OUTPUT", "_before = set(globals())", "new_names(", "README 4."):
            assert glue not in code + "".join(c.source for c in nb.cells), (path.name, glue)
        assert any("nbval-ignore-output" in c.metadata.get("tags", []) for c in nb.cells), path.name


STANDIN = Path(__file__).resolve().parent / "standin"


def _setup(cwd: Path, root: Path, **env: str) -> subprocess.CompletedProcess:
    """``notebooks/gi_setup.py`` (what the setup cell runs) in a fresh interpreter, forced to
    act (as where gi_utils is missing) with the platform mounts below ``root`` and, unless
    GI_SETUP_DRY_RUN=0, only printing the pip command it chose."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("GI_", "COLAB_", "PIP_"))}
    environ = {**environ, "GI_SETUP_FORCE": "1", "GI_SETUP_DRY_RUN": "1", "GI_PLATFORM_ROOT": str(root), **env}
    return subprocess.run([sys.executable, str(SETUP_SCRIPT)], cwd=cwd, env=environ, capture_output=True, text=True)


def _cell(cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """The setup cell itself in a fresh interpreter in ``cwd`` (where Kaggle or Colab starts
    the notebook)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("GI_", "COLAB_"))}
    return subprocess.run([sys.executable, "-c", SETUP_CELL.read_text()], cwd=cwd, env={**environ, **env},
                          capture_output=True, text=True)  # fmt: skip


def _probe(folder: Path) -> Path:
    """A stand-in gi_setup.py that says where it was found."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gi_setup.py").write_text("import os\nprint('ran', os.path.abspath(__file__))\n")
    return folder / "gi_setup.py"


@pytest.mark.parametrize("below", ["", "wheels"])
def test_setup_cell_finds_gi_setup_in_the_dataset_attached_on_kaggle(tmp_path, below):
    """A Kaggle notebook starts in /kaggle/working; the bundle is mounted at
    /kaggle/input/<slug>/ (the file at its top, or one folder below)."""
    probe = _probe(tmp_path / "kaggle" / "input" / "gi-bundle" / below)
    (tmp_path / "kaggle" / "working").mkdir(parents=True)
    done = _cell(tmp_path / "kaggle" / "working")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"ran {probe}"


def test_setup_cell_mounts_drive_on_colab_and_finds_gi_setup_there(tmp_path):
    drive = tmp_path / "drive"
    probe = _probe(drive / "gi-tract-segmentation" / "wheels")
    (tmp_path / "content").mkdir()
    done = _cell(tmp_path / "content", COLAB_RELEASE_TAG="standin", PYTHONPATH=str(STANDIN / "colab_fake"),
                 GI_STANDIN_DRIVE_DIR=str(drive))  # fmt: skip
    assert done.returncode == 0, done.stderr
    mounted = tmp_path / "content" / "drive" / "MyDrive" / "gi-tract-segmentation" / "wheels" / "gi_setup.py"
    assert done.stdout.splitlines() == [f"Mounted at {tmp_path / 'content' / 'drive'}", f"ran {mounted}"]
    assert mounted.resolve() == probe.resolve()


def test_setup_cell_without_gi_setup_says_what_to_do(tmp_path):
    """No gi_setup.py anywhere: the error names it, and the line it points at says what to
    attach or copy (a notebook's traceback shows the line, as a script's does)."""
    cell = tmp_path / "cell.py"
    cell.write_text(SETUP_CELL.read_text())
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("GI_", "COLAB_"))}
    done = subprocess.run([sys.executable, str(cell)], cwd=tmp_path, env=environ, capture_output=True, text=True)
    assert done.returncode != 0 and f"No such file or directory: '{tmp_path / 'gi_setup.py'}'" in done.stderr
    assert "# none: attach the bundle (Kaggle), copy it to Drive (Colab)" in done.stderr


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


def test_gi_setup_on_colab_uses_the_wheels_on_drive(tmp_path):
    """On Colab (COLAB_RELEASE_TAG set; the cell has mounted Drive) gi_setup.py takes the
    wheels copied to MyDrive/gi-tract-segmentation/wheels."""
    root = tmp_path / "root"
    wheels = _wheel(root / "content" / "drive" / "MyDrive" / "gi-tract-segmentation" / "wheels")
    out = _setup(tmp_path, root, COLAB_RELEASE_TAG="standin").stdout
    assert f"from the wheels in {wheels} (offline) with: -m pip install -q --no-index --find-links={wheels}" in out
    res = _setup(tmp_path, tmp_path / "elsewhere", COLAB_RELEASE_TAG="standin", GI_SETUP_DRY_RUN="0",
                 PIP_NO_INDEX="1", PIP_IGNORE_INSTALLED="1")  # fmt: skip
    assert res.returncode != 0
    assert "copy the files of `make kaggle` (dist/kaggle/dataset/*.whl and gi_setup.py) to MyDrive/gi-tract-segmentation/wheels" in res.stderr


def test_gi_setup_uses_the_wheels_beside_it(tmp_path):
    """The file found at the top of the attached dataset installs the wheels there, wherever
    the platform mounts it."""
    bundle = _wheel(tmp_path / "bundle")
    shutil.copyfile(SETUP_SCRIPT, bundle / "gi_setup.py")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("GI_", "COLAB_", "PIP_"))}
    environ |= {"GI_SETUP_FORCE": "1", "GI_SETUP_DRY_RUN": "1", "GI_PLATFORM_ROOT": str(tmp_path / "root")}
    out = subprocess.run([sys.executable, str(bundle / "gi_setup.py")], cwd=tmp_path, env=environ, capture_output=True,
                         text=True).stdout  # fmt: skip
    assert f"from the wheels in {bundle} (offline)" in out


@pytest.mark.slow
def test_setup_cell_installs_from_drive_in_a_colab_session(kaggle_image, bundle_wheels, tmp_path):
    """A fresh Colab session (the image stand-in with the google.colab fake; Colab's own
    image is not modelled beyond that): the cell mounts Drive and installs gi_utils from
    the wheels the user copied to MyDrive/gi-tract-segmentation/wheels."""
    drive = tmp_path / "drive"
    shutil.copytree(bundle_wheels, drive / "gi-tract-segmentation" / "wheels")  # the wheels and gi_setup.py
    root = tmp_path / "root"
    session = new_session(kaggle_image, tmp_path / "session", root, colab=True)
    content = root / "content"
    content.mkdir(parents=True)
    done = session.run(["-c", SETUP_CELL.read_text() + "\nimport gi_utils; print(gi_utils.__file__)"], cwd=content,
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
