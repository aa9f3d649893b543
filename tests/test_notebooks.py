"""Each notebook end to end through papermill, with cheap parameters, in a temp folder."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import papermill as pm
import pytest

from gi_utils.compare import readme_results
from gi_utils.constants import CLASSES
from gi_utils.paths import REPO_ROOT
from gi_utils.synth import generate_dataset

NOTEBOOKS = REPO_ROOT / "notebooks"
pytestmark = pytest.mark.slow


def run(name: str, out: Path, **parameters) -> Path:
    path = out / f"{name}.ipynb"
    pm.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(path), parameters=parameters,
                        cwd=str(NOTEBOOKS), kernel_name="python3", progress_bar=False)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """Tiny data, then 01 -> 02 (unet) -> 03 -> 04, all writing under one temp folder."""
    tmp = tmp_path_factory.mktemp("series")
    data = generate_dataset(tmp / "data", n_cases=4, n_test_cases=1, seed=3, slices_per_scan=24)
    runs = tmp / "runs"
    common = {"runs_dir": str(runs), "pictures_dir": str(tmp / "pictures")}
    run("01_eda", tmp, data_dir=str(data), **common)
    run("02_train", tmp, data_dir=str(data), arch="unet", img_size=64, epochs=2, n_folds=2,
        max_steps_per_epoch=4, batch_size=8, **common)  # fmt: skip
    run("03_compare", tmp, data_dir=str(data), **common)
    run("04_submission", tmp, data_dir=str(data), runs_dir=str(runs))
    return tmp, data, runs


def test_eda_records_counts(series):
    tmp, data, runs = series
    record = json.loads((runs / "eda" / "eda.json").read_text())
    meta_rows = len(pd.read_csv(data / "train.csv"))
    assert record["train.csv rows"] == meta_rows
    assert record["slices"] * 3 == meta_rows
    assert 0 < record["empty_share"]["all"] < 1
    assert (tmp / "pictures" / "eda_overlays.png").stat().st_size > 10_000


def test_train_records_metrics_in_range(series):
    tmp, _, runs = series
    run_dir = runs / "unet_resnet18_64px_fold0"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["arch"] == "unet" and metrics["epochs_run"] == 2
    best = metrics["best"]
    for key in ("val_dice", "val_score", *(f"dice_{c}" for c in CLASSES)):
        assert 0.0 <= best[key] <= 1.0, key
    assert metrics["train_time_s"] > 0
    for name in ("best.safetensors", "last.pt", "history.csv", "config.json"):
        assert (run_dir / name).is_file(), name
    assert (tmp / "pictures" / "unet_resnet18_64px_fold0_validation.png").is_file()


def test_compare_writes_table(series):
    tmp, _, _ = series
    md = (tmp / "pictures" / "results.md").read_text()
    assert md.startswith("| Model | Loss Dice | Accuracy Dice |")
    assert "unet_resnet18_64px_fold0" in md
    for name in ("compare_curves.png", "compare_predictions.png"):
        assert (tmp / "pictures" / name).stat().st_size > 10_000


def test_submission_is_valid(series):
    _, data, runs = series
    sub = pd.read_csv(runs / "submission.csv", keep_default_na=False)
    assert list(sub.columns) == ["id", "class", "predicted"]
    n_test = sum(1 for _ in (data / "test").rglob("*.png"))
    assert len(sub) == 3 * n_test
    assert sub["class"].tolist()[:3] == list(CLASSES)


def test_wrong_arch_fails_with_clear_error(tmp_path):
    with pytest.raises(pm.PapermillExecutionError, match=r"arch='unetx' is not valid; choose one of .*unet"):
        run("02_train", tmp_path, arch="unetx", runs_dir=str(tmp_path / "runs"))


def test_unknown_parameter_fails(tmp_path):
    with pytest.raises(pm.PapermillExecutionError, match=r"unknown TrainConfig parameter.*'epoch'.*did you mean 'epochs'"):
        run("02_train", tmp_path, epoch=3, runs_dir=str(tmp_path / "runs"))


def test_wrong_type_fails(tmp_path):
    with pytest.raises(pm.PapermillExecutionError, match=r"parameter 'n_overlays' = 'many'"):
        run("01_eda", tmp_path, n_overlays="many", runs_dir=str(tmp_path / "runs"))


def test_readme_table_matches_last_comparison():
    """The README's results block is the table that the last `make demo` wrote."""
    results = REPO_ROOT / "pictures" / "results.md"
    if not results.is_file():
        pytest.fail("pictures/results.md is missing: run `make demo` and commit its outputs")
    assert readme_results().strip() == results.read_text().strip()


def test_notebooks_are_committed_executed_or_stripped():
    import nbformat

    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        counts = [c.execution_count for c in code]
        executed = all(isinstance(n, int) for n in counts)
        stripped = all(n is None and not c.outputs for n, c in zip(counts, code))
        assert executed or stripped, f"{path.name}: some cells executed, some not"
        assert not any("sys.path" in c.source for c in code), path.name
        assert not any("/kaggle/input/uw-madison" in c.source for c in code), path.name
        assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1, path.name

