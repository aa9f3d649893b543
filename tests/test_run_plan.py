"""The plan printed before training: a pure function of numbers, checked by hand."""

from __future__ import annotations

import json

import pytest

from gi_utils.training import DiskFigures, PlanInputs, session_plan

GB = 10**9


def plan(**kw):
    base = {"epochs": 20, "steps_per_epoch": 600, "steps_done": 0, "seconds_per_step": 0.5, "val_seconds": 60.0,
            "n_folds": 5, "img_size": 320, "limit_hours": 11.5, "hours_used": 0.5}  # fmt: skip
    return session_plan(PlanInputs(**{**base, **kw}))


def test_a_run_that_fits():
    p = plan()  # an epoch: 600 x 0.5 s + 60 s = 360 s = 0.1 h
    assert p.epoch_hours == pytest.approx(0.1) and p.run_hours == pytest.approx(2.0)
    assert p.all_folds_hours == pytest.approx(10.0) and p.hours_left == pytest.approx(11.0)
    assert p.fits and p.all_folds_fit and p.advice == []
    text = str(p)
    assert "20 epochs x 600 steps = 12000 steps" in text and "11.50 h, 0.50 h used, 11.00 h left" in text
    assert "NO" not in text


def test_a_run_longer_than_what_is_left_says_what_fits():
    p = plan(epochs=30, steps_per_epoch=3000, val_seconds=300.0)  # 0.5 h an epoch, 15 h in all, 11 h left
    assert not p.fits and not p.all_folds_fit
    assert p.advice[0] == "fewer epochs: epochs=22 ends in this session"
    assert "about 2 sessions of 11.5 h" in p.advice[1]
    assert not any("one fold per session" in a for a in p.advice)  # a fold alone is longer than a session
    assert p.table().loc["this run", "fits"] == "NO"


def test_folds_all_longer_than_a_session_one_fold_each():
    p = plan(epochs=40)  # a fold: 4 h; five: 20 h
    assert p.fits and not p.all_folds_fit
    assert p.advice == ["one fold per session: folds all takes 20.0 h, a fold 4.0 h"]


def test_an_epoch_longer_than_a_session_names_a_smaller_size_or_fewer_steps():
    p = plan(epochs=2, steps_per_epoch=100_000, val_seconds=1000.0)  # 51,000 s an epoch; 41,400 s a session
    smaller = next(a for a in p.advice if a.startswith("one epoch is longer"))
    # 320 px x sqrt(41400 / 51000) = 288.3 -> 288; (41400 - 1000) / 0.5 = 80800 steps
    assert "img_size=288" in smaller and "max_steps_per_epoch=80800" in smaller


def test_a_resumed_run_plans_what_is_left():
    p = plan(epochs=30, steps_per_epoch=3000, val_seconds=300.0, steps_done=20 * 3000, hours_used=0.0)
    assert p.run_left_hours == pytest.approx(5.0) and p.fits  # 10 epochs of 0.5 h to go, 11.5 h left


def test_disk_against_free_space():
    disk = DiskFigures(cache_bytes=4 * GB, cache_dir="/kaggle/temp/gi-cache", cache_free=60 * GB, run_bytes=4 * GB,
                       out_dir="/kaggle/working/runs", out_free=10 * GB)  # fmt: skip
    p = plan(disk=disk)
    assert not p.disk_fits and p.advice == ["the disk: 2 fold(s) per session (3.7 GiB each, 9.3 GiB free)"]
    assert "3.7 GiB in /kaggle/temp/gi-cache, 55.9 GiB free" in str(p)
    assert plan(disk=DiskFigures(0, "memory", None, 20 * GB, "/w", 10 * GB)).advice[0].startswith(
        "the disk: one run writes 18.6 GiB")


def test_gpu_memory_shown_when_given_and_figures_as_json():
    p = plan(gpu_memory={"total": 15.8e9, "probe_peak": 9.1e9, "cache": 3.9e9})
    row = p.table().loc["GPU memory"]
    assert row["figure"] == "probe peak 8.5 GiB, cache 3.6 GiB, total 14.7 GiB" and row["fits"] == "yes"
    assert "GPU memory" not in plan().table().index
    record = json.loads(json.dumps(plan(limit_hours=0.0).to_dict()))  # no limit: nothing infinite in JSON
    assert record["hours_left"] is None and record["fits"] and record["seconds_per_step"] == 0.5


def test_the_run_plan_shows_the_feed_plans_gpu_figures():
    """On a GPU the plan's memory row is the feed plan's: the card, the probe step and the
    slices it keeps on the GPU (validation slices in host memory are not counted)."""
    from types import SimpleNamespace

    import torch

    from gi_utils.training import FeedPlan, TimedRun

    run = object.__new__(TimedRun)  # only what _gpu_memory reads
    run.acc = SimpleNamespace(device=torch.device("cuda", 0))
    run.plan = FeedPlan("device", train_resident=True, val_resident=False, train_bytes=6 * GB, val_bytes=2 * GB,
                        gpu="Tesla T4", free=15 * GB, total=16 * GB, step_bytes=3 * GB)  # fmt: skip
    assert run._gpu_memory() == {"total": 16 * GB, "probe_peak": 3 * GB, "cache": 6 * GB}
    run.plan = FeedPlan("workers", train_bytes=6 * GB, gpu="Tesla T4", free=15 * GB, total=16 * GB, step_bytes=3 * GB)
    assert run._gpu_memory() == {"total": 16 * GB, "probe_peak": 3 * GB, "cache": 0}


def test_the_plan_names_its_folders_as_a_notebook_shows_them(tmp_path, monkeypatch):
    """02's plan printed the demo's cache and runs folders as absolute paths
    (/work/.../runs/cache), which make docs reports; below the working folder or one level
    up they are relative now, elsewhere as they are."""
    work = tmp_path / "notebooks"
    work.mkdir()
    monkeypatch.chdir(work)
    disk = DiskFigures(cache_bytes=GB, cache_dir=str(tmp_path / "runs" / "cache"), cache_free=100 * GB,
                       run_bytes=GB, out_dir=str(tmp_path / "runs"), out_free=100 * GB)  # fmt: skip
    text = str(plan(disk=disk))
    assert "in ../runs/cache," in text and "free in ../runs" in text and str(tmp_path) not in text
    elsewhere = DiskFigures(cache_bytes=GB, cache_dir="/elsewhere/cache", cache_free=100 * GB, run_bytes=GB,
                            out_dir="/elsewhere/runs", out_free=100 * GB)  # fmt: skip
    assert "in /elsewhere/cache," in str(plan(disk=elsewhere))
