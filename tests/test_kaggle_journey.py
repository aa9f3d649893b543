"""Journey (a): a Kaggle submission with the internet off, replayed as a user does it.

Locally (the project's environment): train a tiny model and let 03's choice write
``best_config.json``; run the README's ``make kaggle`` command. Then what the README's
upload commands deliver (tests/standin/kaggle_cli.py): the bundle mounted at
``/kaggle/input/<slug>`` as the CLI uploads it, the competition data at
``/kaggle/input/<competition>``, and only the kernel's notebook in ``/kaggle/working``. The
kernel runs with papermill, in ``/kaggle/working``, in a fresh session of the Kaggle image
stand-in (no gi_utils, smp or MONAI) with the internet off as its metadata says.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from standin.image import new_session
from standin.kaggle_cli import push_kernel, readme_commands, upload_dataset

from gi_utils.constants import KAGGLE_COMPETITION, KAGGLE_INPUT_REL, KAGGLE_WORKING_REL
from gi_utils.data import build_metadata
from gi_utils.inference import validate_submission
from gi_utils.paths import REPO_ROOT
from gi_utils.synthetic import generate_dataset

TINY = ["--preset", "smoke", "--n-folds", "2", "--img-size", "32", "--max-steps-per-epoch", "2", "--batch-size", "4",
        "--model-kwargs", '{"decoder_channels": [8, 8, 8, 8, 8]}', "--device", "cpu", "--no-progress"]  # fmt: skip


def _local(args: list[str], cwd: Path, runs: Path) -> str:
    """``python args...`` in the project's environment (this checkout), runs under ``runs``."""
    env = {**os.environ, "GI_RUNS_DIR": str(runs)}
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{args}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
def test_kaggle_submission_with_the_internet_off(kaggle_image, tmp_path):
    root = tmp_path / "platform"  # stands for / on Kaggle
    competition = generate_dataset(root / KAGGLE_INPUT_REL / KAGGLE_COMPETITION, 4, 1, 0, slices_per_scan=8,
                                   size=(80, 72))  # fmt: skip
    checkout, runs = tmp_path / "checkout", tmp_path / "runs"  # where the user runs make
    checkout.mkdir()
    # locally: train, choose (03's choice from a shell), then the README's command
    _local(["-m", "gi_utils.training", *TINY, "--data-dir", str(competition),
            "--out-dir", str(runs / "unet_resnet18_32px_fold0")], checkout, runs)  # fmt: skip
    _local(["-m", "gi_utils.pipeline", "select", "--runs-dir", str(runs)], checkout, runs)
    commands = readme_commands((REPO_ROOT / "README.md").read_text())
    make_kaggle, create, push = commands
    assert make_kaggle[:4] == [".venv/bin/python", "-m", "gi_utils.pipeline", "kaggle"], make_kaggle
    _local(make_kaggle[1:], checkout, runs)
    # the uploads, as Kaggle mounts them
    assert create[:3] == ["kaggle", "datasets", "create"] and push[:3] == ["kaggle", "kernels", "push"]
    mount = upload_dataset(create[1:], checkout, root / KAGGLE_INPUT_REL)
    working = root / KAGGLE_WORKING_REL
    working.mkdir(parents=True)
    kernel = push_kernel(push[1:], checkout, working)
    assert kernel["dataset_sources"] == [f"{make_kaggle[-1]}/{mount.name}"]
    assert kernel["competition_sources"] == [KAGGLE_COMPETITION]
    assert sorted(p.name for p in working.iterdir()) == [kernel["code_file"]]
    # the kernel: a fresh session of the image, internet as the metadata says (off)
    session = new_session(kaggle_image, tmp_path / "session", root, network=kernel["enable_internet"] == "true")
    assert not session.network
    done = session.run(["-m", "papermill", kernel["code_file"], str(tmp_path / "out.ipynb")], cwd=working)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    setup_cell = next(c for c in nbformat.read(tmp_path / "out.ipynb", as_version=4).cells if c.cell_type == "code")
    setup_output = "".join(o.get("text", "") for o in setup_cell.outputs)
    assert f"gi_utils installed from the wheels in {mount} (offline)" in setup_output
    assert session.installed() == {"gi-utils", "segmentation-models-pytorch", "monai"}
    submission = pd.read_csv(working / "submission.csv", keep_default_na=False)
    validate_submission(submission, build_metadata(competition, "test", labels=False))
    record = json.loads((working / "submission.json").read_text())
    assert record["source"] == f"best configuration ../input/{mount.name}/best_config.json"
