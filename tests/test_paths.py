"""Data-root resolution order and its error message."""

from __future__ import annotations

import pytest

from gi_utils import paths
from gi_utils.paths import DataNotFoundError, resolve_data_dir


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No real mounts, no env var, an empty working directory and repository."""
    monkeypatch.setenv("GI_PLATFORM_ROOT", str(tmp_path / "platform"))
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.delenv("GI_DATA_DIR", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path


def _make(path):
    path.mkdir(parents=True, exist_ok=True)
    (path / "train.csv").write_text("id,class,segmentation\n")
    return path


def test_order(isolated, monkeypatch):
    t = isolated
    repo = _make(t / "repo" / "data")
    assert resolve_data_dir() == repo
    cwd = _make(t / "work" / "data")
    assert resolve_data_dir() == cwd
    colab = _make(paths.colab_drive_dir() / "uw-madison-gi-tract-image-segmentation")
    assert resolve_data_dir() == colab
    kaggle = _make(paths.kaggle_data_dir())
    assert resolve_data_dir() == kaggle
    env = _make(t / "env")
    monkeypatch.setenv("GI_DATA_DIR", str(env))
    assert resolve_data_dir() == env
    arg = _make(t / "arg")
    assert resolve_data_dir(arg) == arg
    assert resolve_data_dir("") == env  # "" means "search", as in the notebooks


def test_explicit_argument_is_not_silently_replaced(isolated):
    _make(paths.kaggle_data_dir())
    with pytest.raises(DataNotFoundError, match="argument data_dir.*nowhere.*missing"):
        resolve_data_dir(isolated / "nowhere")


def test_env_var_without_train_csv(isolated, monkeypatch):
    (isolated / "env").mkdir()
    monkeypatch.setenv("GI_DATA_DIR", str(isolated / "env"))
    with pytest.raises(DataNotFoundError, match="GI_DATA_DIR.*no train.csv"):
        resolve_data_dir()


def test_error_lists_everything_and_says_how_to_fix(isolated):
    with pytest.raises(DataNotFoundError) as err:
        resolve_data_dir()
    msg = str(err.value)
    for place in (paths.kaggle_data_dir(), paths.colab_drive_dir(), isolated / "work", isolated / "repo"):
        assert str(place) in msg
    assert "python -m gi_utils.synthetic" in msg and "GI_DATA_DIR" in msg


def test_colab_runs_go_to_drive_and_without_it_a_warning_says_they_are_lost(isolated, monkeypatch):
    """Runs used to default to /content/runs on Colab and vanish when the runtime was
    recycled; the README said nothing is lost."""
    monkeypatch.delenv("GI_RUNS_DIR", raising=False)
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-test")
    with pytest.warns(UserWarning, match="Google Drive is not mounted.*lost when the runtime is recycled"):
        assert paths.default_runs_dir() == paths.colab_content_dir() / "runs"
    paths.colab_drive_dir().mkdir(parents=True)
    assert paths.default_runs_dir() == paths.colab_drive_dir() / "gi-tract-segmentation" / "runs"


def test_kaggle_runs_and_submission_go_to_the_working_folder(isolated, monkeypatch):
    monkeypatch.delenv("GI_RUNS_DIR", raising=False)
    paths.kaggle_working_dir().mkdir(parents=True)
    assert paths.platform_name() == "kaggle"
    assert paths.default_runs_dir() == paths.kaggle_working_dir() / "runs"
    assert paths.default_submission_path(paths.kaggle_input_dir() / "x") == paths.kaggle_working_dir() / "submission.csv"
    attached = paths.kaggle_input_dir() / "my-runs" / "runs"
    attached.mkdir(parents=True)
    assert paths.output_dir("", [attached]) == paths.kaggle_working_dir() / "runs"  # inputs are read-only
    assert paths.runs_dirs(f"{attached}, other") == [attached, paths.Path("other")]


def test_kaggle_cache_goes_to_a_scratch_folder_with_room_else_to_the_output_said_so(isolated, monkeypatch):
    """On Kaggle /kaggle/working is the saved output: the cache goes to /kaggle/temp (or
    /tmp) when it has room; without one, the runs folder, with a note that says so."""
    monkeypatch.delenv("GI_RUNS_DIR", raising=False)
    paths.kaggle_working_dir().mkdir(parents=True)
    temp, tmp = paths.kaggle_scratch_dirs()
    assert (temp, tmp) == (paths.platform_root() / "kaggle" / "temp", paths.platform_root() / "tmp")
    free = {temp: 10 * 2**30, tmp: 50 * 2**30}
    monkeypatch.setattr(paths, "free_bytes", lambda p: free[p])
    assert paths.platform_cache_dir(4 * 2**30) == (None, paths.platform_cache_dir(4 * 2**30)[1])  # none exists yet
    assert "it goes to the runs folder" in paths.platform_cache_dir(4 * 2**30)[1]
    temp.mkdir(parents=True)
    tmp.mkdir()
    assert paths.platform_cache_dir(4 * 2**30) == (temp / "gi-cache", "")
    assert paths.platform_cache_dir(20 * 2**30) == (tmp / "gi-cache", "")  # /kaggle/temp too small: /tmp
    folder, note = paths.platform_cache_dir(60 * 2**30)
    assert folder is None and note == (
        f"no scratch folder with 60.0 GiB free for the cache ({temp} (10.0 GiB free), {tmp} (50.0 GiB free)): it "
        f"goes to the runs folder in {paths.kaggle_working_dir()} and is saved with the notebook's output")


def test_colab_cache_on_the_runtime_disk_and_none_elsewhere(isolated, monkeypatch):
    assert paths.platform_cache_dir(1) == (None, "")
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-test")
    assert paths.platform_cache_dir(1) == (paths.colab_content_dir() / "cache", "")
