"""Journeys (b) and (c): training on a Kaggle or Colab GPU session, as their users do it.

(b) Kaggle: ``02_train`` twice (two architectures, one fold), then ``03_compare``, then
``04_submission``, each notebook in its own session of the Kaggle image stand-in with the
internet off, its own empty ``/kaggle/working``, and only the competition data, the wheels
of ``make kaggle`` and the outputs of the notebooks before it attached, read-only, as Kaggle
attaches a notebook's output ("Add Input" -> the notebook's output, mounted at
``/kaggle/input/<notebook>``). The parameters are the README's (section 4.4, "On Kaggle").

(c) Colab: Drive holds the data and the wheels; ``02_train`` is cut off mid-run, the
runtime is recycled (``/content`` and everything installed are gone, Drive is not), and the
same notebook resumes from ``last.pt`` on Drive; then 03 and 04 write to Drive.

The stand-ins (``tests/standin``) are the image's pinned packages without gi_utils, smp or
MONAI, a network guard and a fake ``google.colab``; the data are synthetic, at smoke size.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch
from safetensors.torch import load_file
from standin.image import Session, new_session

from gi_utils.constants import (
    COLAB_DATA_DIRNAME,
    KAGGLE_COMPETITION,
    KAGGLE_INPUT_REL,
    KAGGLE_WORKING_REL,
)
from gi_utils.data import build_metadata
from gi_utils.inference import validate_submission
from gi_utils.paths import REPO_ROOT
from gi_utils.pipeline.notebook_files import NOTEBOOKS_DIR
from gi_utils.synthetic import generate_dataset
from gi_utils.training import CLOCK_TICK_ENV

pytestmark = pytest.mark.slow

#: What the README tells the user to set (section 4.4); the test checks the README says it.
KAGGLE_RUNS = "../input/train-unet/runs,../input/train-fpn/runs"
#: Smoke-sized training, so a journey takes a minute or two on two CPU cores.
TINY = {"preset": "smoke", "img_size": 32, "max_steps_per_epoch": 3, "batch_size": 4, "n_folds": 2,
        "model_kwargs": {"decoder_channels": [8, 8, 8, 8, 8]}, "n_overlays": 1}  # fmt: skip


def _papermill_args(name: str, params: dict) -> list[str]:
    args = ["-m", "papermill", f"{name}.ipynb", f"{name}.out.ipynb", "--no-progress-bar"]
    for key, value in params.items():
        args += ["-y", f"{key}: {value!r}"] if isinstance(value, dict | list) else ["-p", key, str(value)]
    return args


def run_notebook(session: Session, name: str, working: Path, **params) -> str:
    """The user's notebook in ``working`` (where Kaggle and Colab start it), run the way
    "Save & Run All" runs it (papermill) with ``params`` set in its parameters cell."""
    shutil.copyfile(NOTEBOOKS_DIR / f"{name}.ipynb", working / f"{name}.ipynb")
    done = session.run(_papermill_args(name, params), cwd=working)
    assert done.returncode == 0, f"{name}:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done.stdout + done.stderr


def tree_digest(folder: Path) -> dict[str, str]:
    """Path -> sha1 of every file below ``folder`` (to show a read-only input unchanged)."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def attach_output(working: Path, input_dir: Path, name: str) -> Path:
    """A finished notebook's output folder, attached to the next notebooks read-only at
    ``/kaggle/input/<name>`` (write bits removed; the digest check catches what root may
    still write)."""
    mount = input_dir / name
    shutil.move(str(working), mount)
    for p in [mount, *mount.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    working.mkdir()
    return mount


@pytest.fixture(scope="module")
def journey_data(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("journey") / "data", 4, 1, 2, slices_per_scan=10, size=(80, 72))


def test_readme_gives_the_parameters_the_journeys_set():
    readme = (REPO_ROOT / "README.md").read_text()
    assert f'runs_dir = "{KAGGLE_RUNS}"' in readme


def test_kaggle_training_journey(kaggle_image, bundle_wheels, journey_data, tmp_path):
    root = tmp_path / "platform"
    inputs, working = root / KAGGLE_INPUT_REL, root / KAGGLE_WORKING_REL
    shutil.copytree(journey_data, inputs / KAGGLE_COMPETITION)
    shutil.copytree(bundle_wheels, inputs / "gi-tract-segmentation-bundle")  # `make kaggle` before 03: wheels only
    working.mkdir(parents=True)
    attached = {p.name: tree_digest(p) for p in inputs.iterdir()}

    def session(n: int) -> Session:
        return new_session(kaggle_image, tmp_path / f"session{n}", root, network=False)

    for n, arch in enumerate(("unet", "fpn")):
        train = session(n)
        run_notebook(train, "02_train", working, arch=arch, **TINY)
        assert {"gi-utils", "segmentation-models-pytorch", "monai"} <= train.installed()  # from the bundle, offline
        assert sorted(p.name for p in (working / "runs").iterdir() if p.name.endswith("fold0")) == [
            f"{arch}_resnet18_32px_fold0"]  # fmt: skip
        mount = attach_output(working, inputs, f"train-{arch}")
        attached[mount.name] = tree_digest(mount)
    run_notebook(session(2), "03_compare", working, runs_dir=KAGGLE_RUNS, n_slices=1)
    best = working / "runs" / "best_config.json"
    assert best.is_file() and "/kaggle" not in best.read_text() and str(root) not in best.read_text()
    mount = attach_output(working, inputs, "compare")
    attached[mount.name] = tree_digest(mount)
    run_notebook(session(3), "04_submission", working, runs_dir=KAGGLE_RUNS)
    submission = pd.read_csv(working / "submission.csv", keep_default_na=False)
    validate_submission(submission, build_metadata(inputs / KAGGLE_COMPETITION, "test", labels=False))
    assert {p.name: tree_digest(p) for p in inputs.iterdir()} == attached  # nothing attached was written


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    end = time.monotonic() + timeout
    while not path.is_file():
        assert proc.poll() is None, f"the run ended before {path.name} appeared:\n{proc.stdout.read()[-3000:]}"
        assert time.monotonic() < end, f"{path} did not appear in {timeout} s"
        time.sleep(0.05)


def test_colab_journey_resumes_from_drive_after_a_recycled_runtime(kaggle_image, bundle_wheels, journey_data, tmp_path):
    """Colab's image is stood in by the same pinned packages; its internet is cut off so
    the wheels copied to Drive are what installs gi_utils."""
    root, drive = tmp_path / "platform", tmp_path / "drive"  # Drive lives outside the runtime
    shutil.copytree(journey_data, drive / COLAB_DATA_DIRNAME)
    shutil.copytree(bundle_wheels, drive / "gi-tract-segmentation" / "wheels")
    runs = drive / "gi-tract-segmentation" / "runs"
    content = root / "content"
    params = {"arch": "unet", **TINY, "epochs": 2, "max_steps_per_epoch": 8}

    def runtime(n: int) -> Session:
        content.mkdir(parents=True, exist_ok=True)
        session = new_session(kaggle_image, tmp_path / f"runtime{n}", root, network=False, colab=True)
        session.extra_env["GI_STANDIN_DRIVE_DIR"] = str(drive)
        return session

    # the first runtime: cut off in the second epoch (the user closed the tab, Colab recycled it)
    first = runtime(0)
    shutil.copyfile(NOTEBOOKS_DIR / "02_train.ipynb", content / "02_train.ipynb")
    proc = subprocess.Popen([str(first.python), *_papermill_args("02_train", params)], cwd=content, env=first.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    run_dir = runs / "unet_resnet18_32px_fold0"
    try:
        _wait_for(run_dir / "last.pt", proc)  # the first epoch is done and saved, on Drive
        assert proc.poll() is None, "the run finished before it could be cut off"
    finally:  # a recycled runtime: every process is gone, the kernel too (Jupyter starts it in a session of its own)
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert (run_dir / "last.pt").is_file() and len(pd.read_csv(run_dir / "history.csv")) == 1
    shutil.rmtree(content)  # a recycled runtime: /content and every package installed are gone
    shutil.rmtree(first.prefix)
    # the next runtime: the same notebook, the same parameters, resumes from Drive
    second = runtime(1)
    run_notebook(second, "02_train", content, **params)
    notebook = (content / "02_train.out.ipynb").read_text()
    assert re.search(r"resuming .*last\.pt at epoch 2", notebook), notebook[-3000:]
    assert len(pd.read_csv(run_dir / "history.csv")) == 2
    run_notebook(second, "03_compare", content, n_slices=1)
    assert (runs / "best_config.json").is_file()
    run_notebook(second, "04_submission", content)
    submission = pd.read_csv(runs / "submission.csv", keep_default_na=False)
    validate_submission(submission, build_metadata(drive / COLAB_DATA_DIRNAME, "test", labels=False))


def test_kaggle_time_limit_journey_continues_in_the_next_session(kaggle_image, bundle_wheels, journey_data, tmp_path):
    """(b') A session's limit on Kaggle: 02 with a time limit it reaches in its second epoch
    saves last.pt, finishes its cells on the epoch trained and says how to continue; the
    next session, with that output attached (Add Input -> Your Work -> the notebook), copies
    the run from /kaggle/input and finishes it, with the weights of an uninterrupted run.
    The cache stays in Kaggle's scratch folder, out of the saved output. The clock is
    ``$GI_CLOCK_TICK_S`` (a minute per reading), so the stop does not depend on this
    machine's speed (tests/test_time_limit.py)."""
    params = {"arch": "unet", **TINY, "epochs": 2, "max_steps_per_epoch": 4}
    run = "unet_resnet18_32px_fold0"

    def platform(name: str) -> tuple[Path, Path, Path]:
        root = tmp_path / name
        inputs, working = root / KAGGLE_INPUT_REL, root / KAGGLE_WORKING_REL
        shutil.copytree(journey_data, inputs / KAGGLE_COMPETITION)
        shutil.copytree(bundle_wheels, inputs / "gi-tract-segmentation-bundle")
        working.mkdir(parents=True)
        (root / "kaggle" / "temp").mkdir()  # Kaggle's scratch folder, not saved with the output
        return root, inputs, working

    root, inputs, working = platform("platform")
    first = new_session(kaggle_image, tmp_path / "session0", root, network=False)
    first.extra_env[CLOCK_TICK_ENV] = "60"
    printed = run_notebook(first, "02_train", working, **params, time_limit=14 / 60)
    notebook = (working / "02_train.out.ipynb").read_text()
    assert "time limit: the session's 0.23 h" in notebook and "plan of " + run in notebook
    assert "to continue " + run + ": this version's output keeps last.pt" in notebook, printed[-2000:]
    assert len(pd.read_csv(working / "runs" / run / "history.csv")) == 1  # the cells after training ran on it
    assert (working / "runs" / run / "last.pt").is_file() and not (working / "runs" / "cache").exists()
    assert (root / "kaggle" / "temp" / "gi-cache").is_dir()
    mount = attach_output(working, inputs, "train-unet")  # the next version: this output attached
    shutil.rmtree(root / "kaggle" / "temp")
    (root / "kaggle" / "temp").mkdir()  # a new session's scratch folder is empty
    run_notebook(new_session(kaggle_image, tmp_path / "session1", root, network=False), "02_train", working, **params)
    notebook = (working / "02_train.out.ipynb").read_text()
    assert f"continuing {run} from the attached {mount / 'runs' / run} (1 of 2 epochs done)" in notebook
    assert re.search(r"resuming .*last\.pt at epoch 2, batch 2", notebook), notebook[-3000:]
    # the same notebook uninterrupted, in a platform of its own
    ref_root, _, ref_working = platform("reference")
    run_notebook(new_session(kaggle_image, tmp_path / "session2", ref_root, network=False), "02_train", ref_working,
                 **params)  # fmt: skip
    done, ref = working / "runs" / run, ref_working / "runs" / run
    pd.testing.assert_frame_equal(pd.read_csv(done / "history.csv").drop(columns="epoch_time_s"),
                                  pd.read_csv(ref / "history.csv").drop(columns="epoch_time_s"), check_exact=True)
    wa, wb = load_file(done / "best.safetensors"), load_file(ref / "best.safetensors")  # paths differ in its header
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
