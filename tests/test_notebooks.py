"""Each notebook end to end through papermill with cheap parameters, in this session's
temporary runs folder; what a reader of the executed notebooks meets; the executed
notebooks published as HTML (``make docs``); the notebooks' parameters cells."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import papermill as pm
import pytest

from gi_utils.constants import CLASSES
from gi_utils.data import build_metadata
from gi_utils.paths import REPO_ROOT, default_runs_dir
from gi_utils.pipeline import lines_before_first_output, notebook_annotations, publish_demo
from gi_utils.pipeline.notebook_files import NOTEBOOKS_DIR, notebook_paths

pytestmark = pytest.mark.slow


def run(name: str, out: Path, cwd: Path = NOTEBOOKS_DIR, **parameters) -> Path:
    path = out / f"{name}.ipynb"
    pm.execute_notebook(str(NOTEBOOKS_DIR / f"{name}.ipynb"), str(path), parameters=parameters,
                        cwd=str(cwd), kernel_name="python3", progress_bar=False)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def series(tmp_path_factory, synth_factory):
    """Tiny data, then 01 -> 02 (unet, run from the repository root) -> 03 -> 04, all
    writing under this session's runs folder (only the figures go to a temp folder)."""
    tmp = tmp_path_factory.mktemp("series")
    data = synth_factory(n_cases=4, n_test_cases=1, seed=3, slices_per_scan=24)
    runs = default_runs_dir() / "series"
    common = {"runs_dir": str(runs), "pictures_dir": str(tmp / "pictures")}
    run("01_eda", tmp, data_dir=str(data), **common)
    run("02_train", tmp, cwd=REPO_ROOT, data_dir=str(data), arch="unet", epochs=2, n_folds=2,
        max_steps_per_epoch=4, batch_size=8, folds="all", **common)  # fmt: skip
    run("03_compare", tmp, **common)
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
    for name in ("best.safetensors", "last.pt", "history.csv", "config.json", "split.json", "oof/index.json"):
        assert (run_dir / name).is_file(), name
    assert (tmp / "pictures" / "unet_resnet18_64px_fold0_validation.png").is_file()


def test_compare_writes_table_selection_and_best_config(series):
    tmp, _, runs = series
    md = (tmp / "pictures" / "results.md").read_text()
    assert md.startswith("| Model | Fold | Loss Dice | Accuracy Dice |")
    assert "unet_resnet18_64px_fold0" in md and "unet_resnet18_64px_fold1" in md
    selection = (tmp / "pictures" / "selection.md").read_text()
    for column in ("OOF default", "OOF tuned", "Held-out tuned", "Hold-out default", "Hold-out tuned"):
        assert column in selection, column
    best = json.loads((runs / "best_config.json").read_text())
    assert best["name"] == "unet_resnet18_64px" and len(best["model_paths"]) == 2  # both folds
    for name in ("compare_curves.png", "compare_predictions.png", "search_trace.png"):
        assert (tmp / "pictures" / name).stat().st_size > 10_000


def test_submission_is_valid_and_scored_on_the_holdout(series):
    _, data, runs = series
    record = json.loads((runs / "submission.json").read_text())
    assert record["source"].startswith("best configuration")
    assert set(record["holdout_scores"]) == {"chosen", "default"}
    assert all(0.0 <= v <= 1.0 for v in record["holdout_scores"].values())
    sub = pd.read_csv(runs / "submission.csv", keep_default_na=False)
    assert list(sub.columns) == ["id", "class", "predicted"]
    n_test = sum(1 for _ in (data / "test").rglob("*.png"))
    assert len(sub) == 3 * n_test
    assert sub["class"].tolist()[:3] == list(CLASSES)


def test_executed_notebooks_show_output_within_15_lines(series):
    tmp, _, _ = series
    for name in ("01_eda", "02_train", "03_compare", "04_submission"):
        assert lines_before_first_output(nbformat.read(tmp / f"{name}.ipynb", as_version=4)) <= 15, name


#: Lines of the run's plan (gi_utils.training.run_plan.SessionPlan, printed once per fold and
#: session) and of the feed plan (FeedPlan.summary: its first line, then indented ones).
PLAN_ROW = re.compile(r"^(plan of |run |seconds per step|validation |this run|folds all|session limit|disk: |GPU memory|to fit: )")
FEED_PLAN_ROW = re.compile(r"^(feed plan: |  )")


def test_training_prints_one_line_per_epoch(series):
    """Two folds of two epochs: four epoch lines; per fold its name, the cache's line, the
    feed plan and the run's plan (one table each); once the processes line; and no progress
    bar but the cache's final state (each epoch's bars printed a line every 10 s and their
    final states; every checkpoint its absolute path)."""
    tmp, _, _ = series
    cell = next(c for c in nbformat.read(tmp / "02_train.ipynb", as_version=4).cells if "train_folds(" in c.source)
    lines = [ln for o in cell.outputs for ln in o.get("text", "").replace("\r", "\n").splitlines() if ln.strip()]
    epochs = [ln for ln in lines if re.match(r"epoch \d+/\d+ train_loss", ln)]
    assert len(epochs) == 4, lines
    assert sum(ln.startswith("plan of ") for ln in lines) == 2 and sum(ln.startswith("feed plan: ") for ln in lines) == 2
    others = [ln for ln in lines if ln not in epochs and not PLAN_ROW.match(ln) and not FEED_PLAN_ROW.match(ln)]
    assert len(others) <= 1 + 2 * 2, others  # the processes; per fold its name and the cache's line
    assert all(ln.startswith("caching volumes: 100%") for ln in lines if "%|" in ln), lines
    assert not [ln for ln in lines if "saved checkpoint" in ln or "/last.pt" in ln], lines


def test_the_demo_is_published_as_html_without_code_or_network(series, tmp_path):
    """What `make docs` writes under docs/demo/, from executed notebooks: a page per notebook
    and one report, no code, no script fetched from anywhere, synthetic data said so."""
    tmp, _, _ = series
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    for name in ("01_eda", "03_compare", "04_submission"):
        shutil.copyfile(tmp / f"{name}.ipynb", nb_dir / f"{name}.ipynb")
    shutil.copyfile(tmp / "02_train.ipynb", nb_dir / "02_train_unet.ipynb")  # as make demo names it
    written = publish_demo(nb_dir, tmp_path / "demo", archs=("unet",))
    assert sorted(p.name for p in written) == ["01_eda.html", "02_train_unet.html", "03_compare.html",
                                               "04_submission.html", "report.html"]  # fmt: skip
    for page in written:
        html = page.read_text()
        assert not re.search(r"<script[^>]*\ssrc=|<link[^>]*\shref=\"https?:", html), page.name  # nothing fetched
        assert not re.search(r"https?://[\w.]*(cdn|unpkg|jsdelivr|cloudflare|mathjax)", html), page.name
        assert "hl-ipython3" not in html and "notebook_params()" not in html, page.name  # no code
        assert "Until you run this notebook" not in html, page.name  # the note on the committed smoke outputs
    report = (tmp_path / "demo" / "report.html").read_text()
    assert "<title>GI tract segmentation: the demo run</title>" in report
    assert "The data are SYNTHETIC" in report and report.count("SYNTHETIC DATA in") == 1  # the setup's lines once
    for section in ("01 · The data", "02 · Training a 2.5D segmentation model (unet)", "03 · Comparing", "04 · Predicting",
                    "We submit"):  # fmt: skip
        assert section in report, section


def test_an_empty_test_folder_shows_validation_slices_instead(series):
    """On Kaggle the test scans appear only when the notebook runs for a submission: 04 then
    shows the same models on validation slices (of the first model's run), and says so."""
    from gi_utils.inference import empty_submission
    from gi_utils.pipeline import submission_plan
    from gi_utils.report import prediction_preview

    _, data, runs = series
    plan = submission_plan(runs)
    meta = build_metadata(data, "test", labels=False).iloc[:0]
    fig, caption = prediction_preview(empty_submission(), meta, plan.model_paths, data, plan.post, plan.weights, 2)
    assert caption.startswith("The test folder has no images") and "validation slices of the first model" in caption
    assert len(fig.axes) == 4  # two slices: truth and prediction


def test_wrong_arch_fails_with_clear_error(tmp_path):
    with pytest.raises(pm.PapermillExecutionError, match=r"arch='unetx' is not valid; choose one of .*unet"):
        run("02_train", tmp_path, arch="unetx", runs_dir=str(tmp_path / "runs"))


def test_unknown_parameter_fails(tmp_path):
    with pytest.raises(pm.PapermillExecutionError, match=r"unknown TrainConfig parameter.*'epoch'.*did you mean 'epochs'"):
        run("02_train", tmp_path, epoch=3, runs_dir=str(tmp_path / "runs"))


def test_wrong_type_fails(tmp_path):
    with pytest.raises(pm.PapermillExecutionError, match=r"parameter 'n_overlays' = 'many'"):
        run("01_eda", tmp_path, n_overlays="many", runs_dir=str(tmp_path / "runs"))


def test_papermill_help_lists_every_parameter_with_its_type():
    """``papermill --help-notebook`` reads the annotations: no "Unknown type", none left out."""
    for path in notebook_paths():
        out = subprocess.run([sys.executable, "-m", "papermill", "--help-notebook", str(path)],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert "Unknown type" not in out, path.name
        for name in notebook_annotations(path):
            assert f"  {name}: " in out, (path.name, name)


def test_pytest_at_the_root_collects_the_notebooks():
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "--nbval", "-p", "no:cacheprovider"],
                         cwd=REPO_ROOT, capture_output=True, text=True).stdout  # fmt: skip
    for path in notebook_paths():
        assert f"notebooks/{path.name}::Cell 0" in out, path.name


def test_pytest_nbval_on_one_notebook_alone_is_hermetic(tmp_path):
    """`pytest --nbval notebooks/04_submission.ipynb`, typed as is, without the Makefile's
    flags or the tests' conftest: it used to fail on the unsanitised temporary path, find
    no run (or the user's), and write into the checkout's runs/. Now the root conftest
    runs 02 and 03 first in a temporary runs folder, and runs/ of the checkout is left as
    it was."""
    user_runs = REPO_ROOT / "runs"
    before = sorted(p.relative_to(user_runs) for p in user_runs.rglob("*")) if user_runs.exists() else None
    env = {k: v for k, v in os.environ.items() if k not in ("GI_RUNS_DIR", "GI_PRESET", "GI_HEADLESS", "PYTEST_ADDOPTS")}
    done = subprocess.run([sys.executable, "-m", "pytest", "--nbval", "-p", "no:cacheprovider", "-q",
                           "notebooks/04_submission.ipynb"], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "02_train first" in done.stdout and "03_compare first" in done.stdout
    after = sorted(p.relative_to(user_runs) for p in user_runs.rglob("*")) if user_runs.exists() else None
    assert after == before


def test_pytest_nbval_shows_the_figures_whatever_backend_the_shell_set():
    """`MPLBACKEND=Agg` in the shell (a headless server), or set by a module the suite
    imports (``benchmarks/_common.py``, imported by test_gpu_check.py on the notebooks'
    worker): the kernels inherited it, drew nothing, and nbval failed every figure cell
    (the committed outputs hold the figures). The kernels draw inline now."""
    env = {k: v for k, v in os.environ.items() if k not in ("GI_RUNS_DIR", "GI_PRESET", "GI_HEADLESS", "PYTEST_ADDOPTS")}
    done = subprocess.run([sys.executable, "-m", "pytest", "--nbval", "-p", "no:cacheprovider", "-q",
                           "notebooks/01_eda.ipynb"], cwd=REPO_ROOT, env={**env, "MPLBACKEND": "Agg"},
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
