"""Nothing is lost: atomic writes, stale temporary files, and a run SIGKILLed repeatedly.

* Every file a run or a notebook keeps (``last.pt``, ``best.safetensors`` + ``.json``,
  ``history.csv``, ``metrics.json``, notebook records, the folds file, ``submission.csv``)
  is written to a temporary file and renamed over the target. A failure at the rename, or
  an interrupt after the data were written, leaves the previous file byte-for-byte and no
  temporary file behind.
* A SIGKILL cannot be cleaned up after; the temporary file it may leave is removed when
  the run resumes (:func:`gi_utils.checkpoint.remove_stale_temps`).
* A training subprocess killed three times at random moments (possibly inside a write), then
  resumed, ends with the same history, metrics and weights as an uninterrupted run.

The non-finite-loss stop (last good checkpoint kept) is tested in
``test_train.py::test_non_finite_loss_stops_and_keeps_last_good_checkpoint``; malicious
and corrupt checkpoints in ``test_bad_inputs.py``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import gi_utils.checkpoint as checkpoint
from gi_utils.atomic import atomic_write_json, atomic_write_text, remove_stale_temps
from gi_utils.checkpoint import load_state, save_state
from gi_utils.constants import CLASSES, SUBMISSION_COLUMNS
from gi_utils.inference import write_submission
from gi_utils.models import build_model, model_config, read_model_config, save_model

torch.set_num_threads(1)


# --------------------------------------------------------------------------- atomic writes
def _submission(text: str) -> pd.DataFrame:
    return pd.DataFrame(
        [("case1_day0_slice_0001", c, text) for c in CLASSES], columns=list(SUBMISSION_COLUMNS)
    )


def _model(seed: int):
    torch.manual_seed(seed)
    return build_model("unet", "resnet18", decoder_channels=[8, 8, 8, 8, 8])


_CFG = model_config("unet", "resnet18", model_kwargs={"decoder_channels": [8] * 5}, img_size=64)

#: name -> (files written, write(folder, version)); version 1 first, then a failing version 2.
WRITERS: dict[str, tuple[tuple[str, ...], Callable[[Path, int], object]]] = {
    "last.pt": (("last.pt",), lambda d, v: save_state(d / "last.pt", {"epoch": v, "w": torch.full((50,), v)})),
    "best.safetensors": (("best.safetensors", "best.json"), lambda d, v: save_model(d / "best.safetensors", _model(v), _CFG.replace(epoch=v))),
    "history.csv": (("history.csv",), lambda d, v: atomic_write_text(d / "history.csv", pd.DataFrame({"epoch": range(v)}).to_csv(index=False))),
    "metrics.json": (("metrics.json",), lambda d, v: atomic_write_json(d / "metrics.json", {"best_epoch": v})),
    "notebook_record.json": (("train_metrics.json",), lambda d, v: atomic_write_json(d / "train_metrics.json", {"val_dice": v / 10})),
    "folds.json": (("folds.json",), lambda d, v: atomic_write_json(d / "folds.json", {"folds": {"case1": v}})),
    "submission.csv": (("submission.csv",), lambda d, v: write_submission(_submission(f"{v} 2"), d / "submission.csv")),
}  # fmt: skip


def _fail_replace(*args, **kwargs):
    raise OSError(28, "No space left on device (simulated)")


def _interrupt_fsync(fd):
    raise KeyboardInterrupt  # the data are written, the rename has not happened


FAILURES = [
    pytest.param(writer, failure, id=f"{writer}-{failure}")
    for writer in WRITERS
    for failure in ("rename_fails", "interrupted_before_rename")
    if not (writer == "folds.json" and failure == "interrupted_before_rename")  # not fsync'ed
]


@pytest.mark.parametrize(("writer", "failure"), FAILURES)
def test_failed_write_keeps_the_previous_file_and_leaves_no_temp(
    tmp_path, monkeypatch, writer, failure
):
    names, write = WRITERS[writer]
    write(tmp_path, 1)
    before = {n: (tmp_path / n).read_bytes() for n in names}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    if failure == "rename_fails":
        monkeypatch.setattr(os, "replace", _fail_replace)
        expected: type[BaseException] = OSError
    else:
        monkeypatch.setattr(checkpoint.os, "fsync", _interrupt_fsync)
        expected = KeyboardInterrupt
    with pytest.raises(expected):
        write(tmp_path, 2)
    monkeypatch.undo()
    assert {n: (tmp_path / n).read_bytes() for n in names} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # no temp file left
    write(tmp_path, 2)  # and the next write goes through
    assert {n: (tmp_path / n).read_bytes() for n in names} != before


def test_previous_checkpoint_still_loads_after_a_failed_save(tmp_path, monkeypatch):
    save_state(tmp_path / "last.pt", {"epoch": 1, "w": torch.ones(3)})
    monkeypatch.setattr(os, "replace", _fail_replace)
    with pytest.raises(OSError, match=r"disk full while writing .*last.pt: .* free .*last.pt is unchanged"):
        save_state(tmp_path / "last.pt", {"epoch": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    state = load_state(tmp_path / "last.pt")
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))


def test_remove_stale_temps_removes_only_temporary_files(tmp_path):
    save_state(tmp_path / "last.pt", {"epoch": 1})
    (tmp_path / "history.csv").write_text("epoch\n1\n")
    stale = [tmp_path / ".last.pt.k2j4x9a1.tmp", tmp_path / ".best.safetensors.abcd1234.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    assert sorted(remove_stale_temps(tmp_path)) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv", "last.pt"]
    assert remove_stale_temps(tmp_path / "absent") == []


# --------------------------------------------------------------------------- SIGKILL + resume
METRIC_COLUMNS = ["epoch", "step", "lr", "train_loss", "val_loss", "val_dice", "val_hausdorff",
                  "val_score", "dice_large_bowel", "dice_small_bowel", "dice_stomach"]  # fmt: skip
TIMING_KEYS = {"train_time_s", "epoch_time_s", "plan"}  # the plan: measured seconds per step, free disk
KILLS, KILL_SEED, MAX_DELAY_S = 3, 6, 0.6
#: A small model keeps each of the 12 checkpoints of a run (one per step) cheap to write.
SMALL_DECODER = json.dumps({"decoder_channels": [32, 16, 16, 8, 8]})


@pytest.fixture(scope="module")
def synth_dir(synth_factory) -> Path:
    return synth_factory(n_cases=4, seed=1, slices_per_scan=16)


def _train_cmd(data_dir: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "gi_utils.training", "--data-dir", str(data_dir), "--out-dir", str(out),
            "--img-size", "64", "--epochs", "2", "--max-steps-per-epoch", "6", "--batch-size", "4",
            "--n-folds", "2", "--device", "cpu", "--save-every-steps", "1", "--no-progress",
            "--encoder", "mobilenet_v2", "--model-kwargs", SMALL_DECODER]  # fmt: skip


def _without_timing(obj):
    if isinstance(obj, dict):
        return {k: _without_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    return obj


def _assert_files_whole(out: Path) -> None:
    """Whatever a kill left in ``out``, every kept file is complete (temp files aside)."""
    state = load_state(out / "last.pt")
    assert isinstance(state["history"], list)
    if (out / "best.safetensors").is_file():
        read_model_config(out / "best.safetensors")
        load_file(out / "best.safetensors")
    if (out / "history.csv").is_file():
        assert (
            list(pd.read_csv(out / "history.csv").columns[: len(METRIC_COLUMNS)]) == METRIC_COLUMNS
        )
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    # a SIGKILL leaves temporary files and the run lock of the dead process (the resumed
    # run removes the first and takes the stale lock over)
    assert all(n.endswith(".tmp") or n in (".lock", ".oof.tmp") for n in leftovers), leftovers


@pytest.mark.slow
def test_repeated_sigkill_then_resume_equals_uninterrupted_run(synth_dir, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    full, cut = tmp_path / "full", tmp_path / "cut"
    log = (tmp_path / "full.log").open("w")  # a file: a pipe nobody reads could fill up
    reference = subprocess.Popen(_train_cmd(synth_dir, full), env=env, stdout=log, stderr=log)

    rng = random.Random(KILL_SEED)
    kills = []
    for _ in range(KILLS):
        proc = subprocess.Popen(_train_cmd(synth_dir, cut), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)  # fmt: skip
        saved = next((line for line in proc.stdout if line.startswith("saved checkpoint")), None)
        if saved is not None:  # this process has made progress: kill it at a random moment
            time.sleep(rng.uniform(0.0, MAX_DELAY_S))  # picks the moment; nothing is awaited
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        if proc.returncode != -signal.SIGKILL:  # it finished before the kill
            assert proc.returncode == 0
            break
        _assert_files_whole(cut)
        state = load_state(cut / "last.pt")
        assert not state["finished"]
        kills.append(
            (saved.strip(), f"resumable at epoch {state['epoch'] + 1}, batch {state['n_batches']}")
        )
    assert len(kills) == KILLS, kills

    resumed = subprocess.run(
        _train_cmd(synth_dir, cut), env=env, check=True, capture_output=True, text=True
    )
    assert "resuming" in resumed.stdout
    reference.wait()
    log.close()
    assert reference.returncode == 0, (tmp_path / "full.log").read_text()[-3000:]
    assert not [p.name for p in cut.iterdir() if p.name.startswith(".")]  # stale temps removed

    a = pd.read_csv(full / "history.csv")[METRIC_COLUMNS]
    b = pd.read_csv(cut / "history.csv")[METRIC_COLUMNS]
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    ma = _without_timing(json.loads((full / "metrics.json").read_text()))
    mb = _without_timing(json.loads((cut / "metrics.json").read_text()))
    assert ma == mb
    wa, wb = load_file(full / "best.safetensors"), load_file(cut / "best.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = load_state(full / "last.pt"), load_state(cut / "last.pt")
    assert sa["finished"] and sb["finished"]
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
    opt_a, opt_b = sa["optimizer"]["state"], sb["optimizer"]["state"]
    assert opt_a.keys() == opt_b.keys()
    assert all(torch.equal(opt_a[i][k], opt_b[i][k]) for i in opt_a for k in opt_a[i])
