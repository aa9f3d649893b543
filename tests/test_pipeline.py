"""ensure_data: synthetic data on first use, rewritten when stale, real data never touched."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

import gi_utils.pipeline.data_root as pipeline
from gi_utils.data import solution_path
from gi_utils.synthetic import MARKER


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A data root the search finds, and a generator that only records its calls."""
    root = tmp_path / "data"
    root.mkdir()
    calls: list[tuple] = []
    monkeypatch.delenv("GI_DATA_DIR", raising=False)
    monkeypatch.setattr(pipeline, "_synthetic_target", lambda: root)
    monkeypatch.setattr(pipeline, "resolve_data_dir", lambda given=None: Path(given) if given else root)
    monkeypatch.setattr(pipeline, "generate_dataset", lambda *a, **k: calls.append(a) or Path(a[0]))
    return root, calls


def _marker(root: Path, solution: bool = True, **params) -> None:
    record = {"params": {**pipeline.synthetic_params(), **params}}
    (root / MARKER).write_text(json.dumps(record))
    if solution:
        solution_path(root).write_text("id,class,segmentation\n")


def test_current_synthetic_dataset_is_used_as_is(fake):
    root, calls = fake
    _marker(root)
    assert pipeline.ensure_data("") == root and calls == []


def test_the_synthetic_dataset_asked_for_and_current_is_used_as_is(fake):
    root, calls = fake
    _marker(root)
    assert pipeline.ensure_data("synthetic") == root and calls == []


def test_synthetic_dataset_without_its_holdout_truth_is_written_again(fake, capsys):
    root, calls = fake
    _marker(root, solution=False)
    assert pipeline.ensure_data("") == root
    assert len(calls) == 1 and "has no hold-out truth (data_solution.csv)" in capsys.readouterr().out


def test_older_synthetic_dataset_is_written_again(fake, capsys):
    root, calls = fake
    _marker(root, n_cases=12)
    assert pipeline.ensure_data("") == root
    assert len(calls) == 1 and calls[0][:2] == (root, pipeline.SYNTH_CASES)
    assert "older synthetic dataset (12 cases)" in capsys.readouterr().out


def test_two_notebooks_started_at_once_write_the_dataset_once(tmp_path, monkeypatch):
    """A fresh checkout, two notebooks (or test workers) started together: both wrote the
    dataset, each renaming the folder under the other's reader. The second waits now."""
    root = tmp_path / "data"
    calls: list[Path] = []

    def resolve(given=None):
        if not (root / MARKER).is_file():
            raise pipeline.DataNotFoundError("no data")
        return root

    def generate(out, *args, **kwargs):
        calls.append(out)
        time.sleep(0.5)  # the other one arrives meanwhile
        out.mkdir()
        _marker(out)
        return out

    monkeypatch.delenv("GI_DATA_DIR", raising=False)
    monkeypatch.setattr(pipeline, "platform_name", lambda: "local")
    monkeypatch.setattr(pipeline, "_synthetic_target", lambda: root)
    monkeypatch.setattr(pipeline, "resolve_data_dir", resolve)
    monkeypatch.setattr(pipeline, "generate_dataset", generate)
    found: list[Path] = []
    threads = [threading.Thread(target=lambda: found.append(pipeline.ensure_data(""))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert found == [root, root] and calls == [root]


def test_real_data_and_named_folders_are_never_rewritten(fake, tmp_path):
    root, calls = fake
    assert pipeline.ensure_data("") == root  # no synth.json: real data
    named = tmp_path / "mine"
    named.mkdir()
    _marker(named, n_cases=3)
    assert pipeline.ensure_data(named) == named  # a folder the user named
    assert calls == []


def test_demo_notebooks_done_before_are_skipped_after_a_crash(tmp_path, monkeypatch):
    """`make demo` again after the kernel died: finished notebooks (same parameters) are
    skipped, the unfinished one runs again, changed parameters run again."""
    import nbformat
    import papermill

    import gi_utils.pipeline.series as series

    calls = []

    def fake_execute(src, out, parameters=None, **kw):
        calls.append((Path(src).name, parameters))
        if parameters.get("crash"):
            raise RuntimeError("kernel died")
        Path(out).write_text(nbformat.writes(nbformat.v4.new_notebook()))

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)  # series imports it where it runs one
    series.run_notebook("01_eda", tmp_path, {"seed": 0})
    with pytest.raises(RuntimeError, match="kernel died"):
        series.run_notebook("02_train", tmp_path, {"crash": True}, tag="unet")
    assert not (tmp_path / "02_train_unet.done.json").exists()
    series.run_notebook("01_eda", tmp_path, {"seed": 0})  # done: skipped
    series.run_notebook("02_train", tmp_path, {"crash": False}, tag="unet")  # not done: runs
    series.run_notebook("01_eda", tmp_path, {"seed": 1})  # other parameters: runs
    assert [c[0] for c in calls] == ["01_eda.ipynb", "02_train.ipynb", "02_train.ipynb", "01_eda.ipynb"]


@pytest.fixture
def platform(tmp_path, monkeypatch):
    """An empty platform root (no mounts), no data anywhere, a recording generator."""
    monkeypatch.setenv("GI_PLATFORM_ROOT", str(tmp_path / "root"))
    monkeypatch.setattr(pipeline, "in_checkout", lambda: False)  # an installed wheel: data/ of the cwd
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GI_DATA_DIR", raising=False)
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.setattr(pipeline, "resolve_data_dir", lambda given=None: (_ for _ in ()).throw(
        pipeline.DataNotFoundError("No data folder with train.csv found.")))
    calls: list[tuple] = []
    monkeypatch.setattr(pipeline, "generate_dataset", lambda *a, **k: calls.append(a) or Path(a[0]))
    return tmp_path / "root", calls


@pytest.mark.parametrize("where", ["kaggle", "colab"])
def test_no_data_on_a_platform_is_an_error_not_synthetic_training(platform, monkeypatch, where):
    """On Kaggle or Colab a missing competition folder is an error saying how to attach it;
    the synthetic dataset is made only when asked for by name."""
    root, calls = platform
    if where == "kaggle":
        (root / "kaggle" / "working").mkdir(parents=True)
    else:
        monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-test")
    with pytest.raises(pipeline.DataNotFoundError, match=f"On {where.capitalize()}: .*data_dir='synthetic'"):
        pipeline.ensure_data("")
    assert calls == []
    pipeline.ensure_data("synthetic")
    assert len(calls) == 1
    assert calls[0][0] == (root / "content" if where == "colab" else root.parent) / "data"  # Colab: not Drive


def test_no_data_locally_still_writes_the_synthetic_dataset(platform):
    _, calls = platform
    pipeline.ensure_data("")
    assert len(calls) == 1
