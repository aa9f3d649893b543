"""What 02 and 03 show of a run the session's time limit stopped: 02's cells after
training on a run stopped before its first epoch ended (``last.pt`` alone, no
``best.safetensors``; an error there would fail the Kaggle version, and a failed version
saves no output to continue from), and 03's table marking a stopped run."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd
import papermill as pm
import pytest

from gi_utils.pipeline.notebook_files import NOTEBOOKS_DIR
from gi_utils.report import (
    Run,
    compact_results,
    fold_table,
    history_table,
    plot_history,
    prediction_grid,
    save_figure,
    trained_runs,
)
from gi_utils.training import CLOCK_TICK_ENV


def test_the_cells_after_training_take_no_run(tmp_path, capsys):
    """A run stopped before its first epoch ended: train_folds returns no name; the list of
    runs is empty, one line says so, and every table and figure of 02 takes it."""
    runs = trained_runs(tmp_path, [])
    assert runs == [] and "no epoch finished in this session" in capsys.readouterr().out
    assert history_table(runs).empty and "val score" in history_table(runs).columns
    assert fold_table(runs).empty and "val score" in fold_table(runs).columns
    fig = plot_history({run.name: run.history for run in runs}, title="UNet")
    assert fig is None and prediction_grid(runs[:1]) is None
    assert save_figure(fig, tmp_path / "curves.png") is None and not (tmp_path / "curves.png").exists()


def _run(name: str, epochs_run: int, epochs: int, stopped: bool) -> Run:
    metrics = {"best_epoch": epochs_run, "epochs_run": epochs_run, "time_limit_stop": stopped}
    return Run(name, Path(name), {"epochs": epochs, "fold": 0}, metrics, pd.DataFrame(), {})


def test_03_marks_a_run_the_time_limit_stopped():
    runs = [_run("unet_fold0", 2, 2, False), _run("fpn_fold0", 2, 20, True)]
    table = pd.DataFrame({"Model": [r.name for r in runs], "Fold": ["0", "0"], "Accuracy Dice": [0.8, 0.7],
                          "Hausdorff": [0.1, 0.2], "Score": [0.9, 0.8], "Best epoch": [2, 2], "Epochs": [2, 2],
                          "Params (M)": [11.0, 12.0], "Train time (min)": [3.0, 4.0]})  # fmt: skip
    shown = compact_results(table, runs)["best epoch"]
    assert shown["unet_fold0"] == "2 of 2"
    assert shown["fpn_fold0"] == "2 of 2 run, 20 planned: stopped by the time limit"
    assert compact_results(table)["best epoch"].tolist() == ["2 of 2", "2 of 2"]  # runs not given: unmarked


@pytest.mark.slow
def test_02_finishes_its_cells_when_the_limit_comes_before_the_first_epoch(tmp_path, monkeypatch, synth_factory):
    """02 with a time limit reached inside its first epoch: the notebook runs to its end
    (so a Kaggle version keeps its output), last.pt is saved, no metrics.json or best
    weights exist, and the output says how to continue. The clock is $GI_CLOCK_TICK_S (a
    minute per reading), so the stop does not depend on this machine's speed."""
    data = synth_factory(n_cases=4, seed=2, slices_per_scan=16)
    monkeypatch.setenv(CLOCK_TICK_ENV, "60")
    out = tmp_path / "02.ipynb"
    pm.execute_notebook(str(NOTEBOOKS_DIR / "02_train.ipynb"), str(out), cwd=str(NOTEBOOKS_DIR), kernel_name="python3",
                        progress_bar=False, parameters={
                            "preset": "smoke", "data_dir": str(data), "runs_dir": str(tmp_path / "runs"),
                            "img_size": 32, "batch_size": 4, "max_steps_per_epoch": 4, "n_folds": 2,
                            "model_kwargs": {"decoder_channels": [8, 8, 8, 8, 8]}, "n_overlays": 1,
                            "time_limit": 3 / 60})  # fmt: skip
    run = tmp_path / "runs" / "unet_resnet18_32px_fold0"
    assert (run / "last.pt").is_file()
    assert not (run / "best.safetensors").exists() and not (run / "metrics.json").exists()
    text = "".join(json.dumps(c.get("outputs", [])) for c in nbformat.read(out, as_version=4).cells)
    assert "time limit: the session's" in text and "to continue unet_resnet18_32px_fold0" in text
    assert "no epoch finished in this session" in text
