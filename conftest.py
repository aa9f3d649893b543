"""The hermetic environment of every pytest session of this repository, whatever is
collected (``make test``, ``pytest --nbval``, ``pytest --nbval notebooks`` alone):

* offline: ``NO_ALBUMENTATIONS_UPDATE=1``, ``HF_HUB_OFFLINE=1``;
* a fresh temporary ``$GI_RUNS_DIR`` made here and removed at the end (the kernels of nbval
  and papermill inherit it), so a session trains from scratch and the user's ``runs/`` is
  never read or written (``GI_TEST_KEEP_RUNS_DIR=1`` keeps the caller's ``$GI_RUNS_DIR``);
* ``GI_PRESET=smoke``: the notebooks' ``preset="auto"`` takes the cheap preset, even on a GPU;
* nbval's sanitizer (``tests/nbval_sanitize.cfg``: temporary paths, times) unless another
  is named;
* the notebooks' kernels draw with Jupyter's inline backend, as a reader's do, whatever
  ``MPLBACKEND`` the shell or an imported module set (``benchmarks/_common.py`` sets
  ``Agg``, and a kernel inherits it: no figure shown, the committed figures missing);
* under pytest-xdist (``make test`` runs two workers), what shares state stays on one
  worker, in order: all the notebooks (03 reads what 02 wrote), and each test module (its
  module-scoped fixtures are made once); each worker and what it starts (kernels, training
  subprocesses) gets its share of the cores (``OMP_NUM_THREADS``), so two workers do not
  oversubscribe them;
* when 03 or 04 is collected without the notebooks before it, those run first through
  papermill (in the same runs folder), so each notebook finds what its committed outputs
  show.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent
SANITIZER = ROOT / "tests" / "nbval_sanitize.cfg"
#: The notebooks that make what a later one reads (01 writes nothing the others read).
PRODUCERS = ("02_train", "03_compare")
_OWN_RUNS: list[str] = []


def pytest_configure(config) -> None:
    os.environ["GI_HEADLESS"] = "1"  # kernels of nbval and papermill: text progress, static viewer
    os.environ["GI_PRESET"] = "smoke"
    if not os.environ.get("GI_TEST_KEEP_RUNS_DIR"):
        path = tempfile.mkdtemp(prefix="gi_test_runs_")
        os.environ["GI_RUNS_DIR"] = path
        _OWN_RUNS.append(path)
    if hasattr(config, "workerinput"):  # an xdist worker: the cores shared out, kernels and subprocesses included
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = str(max(1, cores // int(config.workerinput["workercount"])))
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(name, threads)
        if "torch" in sys.modules:  # imported already by tests/conftest.py
            sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    if getattr(config.option, "nbval_sanitize_with", "") is None:
        config.option.nbval_sanitize_with = str(SANITIZER)


#: The longest scopes of the suite, longest first, started first under xdist so that no
#: worker is left alone with one of them at the end; the rest keep their order. Seconds on
#: this project's 2-core machine (``pytest --nbval -n 2 --durations=0``, summed per scope,
#: 2026-12-05): 234, 203, 98, 98, 68, 46, 35, 35; the rest 23 or less each.
LONGEST_FIRST = ("tests/test_train.py", "tests/test_notebooks.py", "notebooks", "tests/test_platform_journeys.py",
                 "tests/test_gpu_check.py", "tests/test_distributed.py", "tests/test_kill_resume.py",
                 "tests/test_kaggle_journey.py")  # fmt: skip


def _scope(nodeid: str) -> str:
    """What must run on one worker: every notebook together, else the test module."""
    path = nodeid.split("::", 1)[0]
    return "notebooks" if path.endswith(".ipynb") else path


def pytest_collection_modifyitems(config, items) -> None:
    """On an xdist worker: the scopes of :data:`LONGEST_FIRST` first (a stable sort, so the
    notebooks' cells and each module's tests keep their order)."""
    if hasattr(config, "workerinput"):
        rank = {scope: i for i, scope in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(_scope(item.nodeid), len(rank)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's ``loadscope`` with one scope for all the notebooks (the ``loadgroup``
    marks do not reach the node ids under pytest 9) and one per test module, handed out in
    the order of collection (:data:`LONGEST_FIRST` first), for ``-n`` with ``--dist`` load
    (the default) or loadscope; another ``--dist`` keeps xdist's own."""
    if config.getoption("dist") not in ("load", "loadscope"):
        return None
    # xdist sorts the scopes by their number of tests unless told not to: that put the
    # one-test scopes of LONGEST_FIRST (test_gpu_check, a minute) last, on a worker alone.
    config.option.loadscopereorder = False
    from xdist.scheduler import LoadScopeScheduling

    class NotebooksTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _scope(nodeid)

    return NotebooksTogether(config, log)


def pytest_collection_finish(session) -> None:
    """Run the producers of the latest collected consumer notebook that were not collected."""
    option = session.config.option
    if option.collectonly or not (getattr(option, "nbval", False) or getattr(option, "nbval_lax", False)):
        return
    names = {Path(str(item.fspath)).stem for item in session.items if str(item.fspath).endswith(".ipynb")}
    consumers = [n for n in ("03_compare", "04_submission") if n in names]
    if not consumers:
        return
    last = max(consumers)
    missing = [p for p in PRODUCERS if p < last and p not in names]
    if missing:
        from gi_utils.pipeline import ensure_data, run_notebook

        ensure_data("")
        out = Path(os.environ["GI_RUNS_DIR"]) / "producers"
        for name in missing:
            print(f"\nconftest: {name} first (what {last} reads)", flush=True)
            run_notebook(name, out)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    """Before a notebook's cell (its kernel starts with the first): no ``MPLBACKEND``, so
    the kernel takes Jupyter's inline backend and shows the figures its outputs hold."""
    if str(item.fspath).endswith(".ipynb"):
        from gi_utils.pipeline.notebook_files import headless_kernel_env

        headless_kernel_env()


def pytest_unconfigure(config) -> None:
    for path in _OWN_RUNS:
        shutil.rmtree(path, ignore_errors=True)
