"""A run across sessions: an attached run of the same settings continued, others left
alone; the line that says how to continue; later folds not begun once the limit stopped one."""

from __future__ import annotations

import json
import os
import stat

import pandas as pd
import pytest

import gi_utils.pipeline.cv as cv_mod
from gi_utils.pipeline import adopt_attached_run, attached_runs, continue_hint, train_folds
from gi_utils.training import TrainConfig


@pytest.fixture
def kaggle(tmp_path, monkeypatch):
    """A Kaggle stand-in: ``/kaggle/working`` and an input holding a run of 2 epochs' config."""
    monkeypatch.setenv("GI_PLATFORM_ROOT", str(tmp_path))
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    (tmp_path / "kaggle" / "working").mkdir(parents=True)
    cfg = TrainConfig(data_dir="/kaggle/input/data", out_dir=str(tmp_path / "kaggle/working/runs/unet_resnet18_128px_fold0"),
                      epochs=2)  # fmt: skip
    return tmp_path, cfg


def attach(root, name: str, cfg: TrainConfig, epochs_done: int, **changes) -> os.PathLike:
    """A previous version's output at /kaggle/input/<name>/runs/<run>, read-only."""
    folder = root / "kaggle" / "input" / name / "runs" / os.path.basename(cfg.out_dir)
    (folder / "oof").mkdir(parents=True)
    saved = {**cfg.to_dict(), "out_dir": "/kaggle/working/runs/x", "time_limit": 11.5, "num_workers": 4, **changes}
    (folder / "config.json").write_text(json.dumps(saved))
    (folder / "last.pt").write_bytes(b"state")
    (folder / ".lock").write_text("{}")
    pd.DataFrame({"epoch": range(1, epochs_done + 1)}).to_csv(folder / "history.csv", index=False)
    for p in [*folder.rglob("*"), folder]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return folder


def test_an_attached_run_of_the_same_settings_is_copied_in_and_continued(kaggle, capsys):
    root, cfg = kaggle
    older = attach(root, "train-unet-v1", cfg, 1)
    newer = attach(root, "train-unet-v2", cfg, 2)  # the furthest on wins
    other = attach(root, "train-unet-lr", cfg, 2, lr=1e-3)  # another run of the same name
    assert attached_runs(os.path.basename(cfg.out_dir)) == sorted([older, newer, other])
    assert adopt_attached_run(cfg) == newer
    printed = capsys.readouterr().out
    assert f"not continuing the attached {other}: another run (lr: 0.001 there, 0.002 here)" in printed
    assert f"continuing unet_resnet18_128px_fold0 from the attached {newer} (2 of 2 epochs done)" in printed
    out = root / "kaggle/working/runs/unet_resnet18_128px_fold0"
    assert (out / "last.pt").read_bytes() == b"state" and not (out / ".lock").exists()
    (out / "oof" / "x").write_text("writable")  # the copy is the run's own folder now
    assert adopt_attached_run(cfg) is None  # its own last.pt: nothing to adopt
    assert adopt_attached_run(cfg.replace(out_dir=str(root / "elsewhere" / "other_run"))) is None


def test_no_attached_run_or_resume_off(kaggle):
    root, cfg = kaggle
    assert adopt_attached_run(cfg) is None
    attach(root, "v1", cfg, 1)
    assert adopt_attached_run(cfg.replace(resume=False)) is None


def test_the_line_that_says_how_to_continue(kaggle, monkeypatch, tmp_path):
    root, cfg = kaggle
    run = root / "kaggle/working/runs/r"
    assert continue_hint(run, 2).startswith("to continue r and the 2 fold(s) not begun: this version's output keeps "
                                            "last.pt; in the next version of this notebook")  # fmt: skip
    assert "Add Input -> Your Work -> Notebooks -> this notebook" in continue_hint(run)
    monkeypatch.setenv("GI_PLATFORM_ROOT", str(tmp_path / "nowhere"))
    monkeypatch.setenv("COLAB_RELEASE_TAG", "x")
    assert continue_hint(run) == f"to continue r: in a new runtime open this notebook and Run all with the same " \
                                 f"parameters: it resumes from {run / 'last.pt'} on Drive"  # fmt: skip
    monkeypatch.delenv("COLAB_RELEASE_TAG")
    assert continue_hint(run) == f"to continue r: run this notebook again with the same parameters: it resumes from " \
                                 f"{run / 'last.pt'}"  # fmt: skip


def test_folds_after_the_one_the_limit_stopped_are_not_begun(kaggle, monkeypatch, capsys):
    _, cfg = kaggle
    launched = []

    def fake_launch(run_cfg, num_processes):  # fold 0 trains an epoch and stops at the limit
        launched.append(run_cfg.fold)
        out = os.path.join(run_cfg.out_dir, "metrics.json")
        os.makedirs(run_cfg.out_dir)
        with open(out, "w") as f:
            json.dump({"time_limit_stop": True}, f)
        return pd.DataFrame({"epoch": [1]})

    monkeypatch.setattr(cv_mod, "launch", fake_launch)
    histories = train_folds(cfg.replace(n_folds=3), "all")
    assert launched == [0] and list(histories) == ["unet_resnet18_128px_fold0"]
    assert "to continue unet_resnet18_128px_fold0 and the 2 fold(s) not begun" in capsys.readouterr().out
