"""W&B logging: one named run per fold, grouped by model, the key from a Kaggle secret or the
environment and never written. ``wandb`` and ``kaggle_secrets`` are fakes put in
``sys.modules``; accelerate's own WandBTracker calls them as it would call the real ones."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import accelerate.tracking
import pytest
from accelerate.utils import LoggerType

import gi_utils.training.config as config_mod
from gi_utils.training import TrainConfig, WandbKeyError, tracker_setup, train, wandb_key

SECRET = "kaggle-secret-0123456789abcdef0123456789abcdef01234567"
ENV_KEY = "env-key-fedcba9876543210fedcba9876543210fedcba98"


class _FakeRun:
    def __init__(self, name: str = "run") -> None:
        self.logged: list[tuple[dict, int | None]] = []
        self.finished = False
        self.url = f"https://wandb.ai/someone/gi-tract-segmentation/runs/{name}"

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        self.logged.append((dict(values), step))

    def finish(self) -> None:
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    """A ``wandb`` module that records ``init``'s arguments (accelerate's tracker imports it)."""
    wandb = types.ModuleType("wandb")
    wandb.inits, wandb.runs, wandb.configs = [], [], []

    def init(**kwargs):
        wandb.inits.append(kwargs)
        wandb.runs.append(_FakeRun(kwargs.get("name", "run")))
        return wandb.runs[-1]

    def login(*args, **kwargs):  # an explicit key given to login is stored in ~/.netrc
        pytest.fail("wandb.login was called")

    class Settings:
        def __init__(self, **kwargs) -> None:
            self.__dict__.update(kwargs)

    wandb.init, wandb.login, wandb.Settings = init, login, Settings
    wandb.config = types.SimpleNamespace(update=lambda values, **kw: wandb.configs.append(dict(values)))
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.setattr(accelerate.tracking, "_available_trackers",
                        [*accelerate.tracking._available_trackers, LoggerType.WANDB])  # fmt: skip
    monkeypatch.setattr(config_mod, "is_wandb_available", lambda: True)
    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(Path(os.environ.get("TMPDIR", "/tmp")) / "no-such-home"))  # no ~/.netrc
    monkeypatch.setitem(sys.modules, "kaggle_secrets", None)  # not on Kaggle unless a test says so
    return wandb


def kaggle_secret(monkeypatch, value: str | None = SECRET, error: Exception | None = None) -> list[str]:
    """A ``kaggle_secrets`` module whose client returns ``value`` (or raises ``error``)."""
    asked: list[str] = []

    class UserSecretsClient:
        def get_secret(self, label: str) -> str | None:
            asked.append(label)
            if error is not None:
                raise error
            return value

    module = types.ModuleType("kaggle_secrets")
    module.UserSecretsClient = UserSecretsClient
    monkeypatch.setitem(sys.modules, "kaggle_secrets", module)
    return asked


@pytest.fixture(scope="module")
def synth_dir(synth_factory) -> Path:
    return synth_factory(n_cases=4, seed=0, slices_per_scan=12, size=(80, 72))


def test_one_named_run_per_fold_grouped_by_model_key_from_the_kaggle_secret(
    synth_dir, tmp_path, tiny_config, fake_wandb, monkeypatch, capfd
):
    asked = kaggle_secret(monkeypatch)
    monkeypatch.setenv("WANDB_API_KEY", ENV_KEY)  # the Kaggle secret comes first
    env_before = dict(os.environ)
    out = tmp_path / "runs" / "unet_resnet18_64px_fold1"
    history = train(tiny_config(synth_dir, out, fold=1, max_steps_per_epoch=1, log_with="wandb"))
    assert asked == ["WANDB_API_KEY"]
    (kw,) = fake_wandb.inits
    assert kw["project"] == "gi-tract-segmentation"
    assert kw["name"] == "unet_resnet18_64px_fold1" and kw["group"] == "unet_resnet18_64px"
    assert kw["settings"].api_key == SECRET  # in memory, for this process's wandb.init only
    (run,) = fake_wandb.runs
    assert run.finished and run.logged[-1][0]["val_score"] == pytest.approx(history["val_score"].iloc[-1])
    assert fake_wandb.configs[0]["out_dir"] == str(out) and "api_key" not in str(fake_wandb.configs)
    assert dict(os.environ) == env_before  # nothing a child process would inherit
    printed = capfd.readouterr()
    assert f"W&B run: {run.url}" in printed.out  # the link a notebook reader follows, printed once
    written = [p for p in out.rglob("*") if p.is_file()]
    assert {"config.json", "last.pt", "metrics.json", "history.csv"} <= {p.name for p in written}
    for key in (SECRET, ENV_KEY):
        assert key not in printed.out + printed.err
        assert not [p for p in written if key.encode() in p.read_bytes()], key


def test_environment_key_without_kaggle_and_a_project_of_ones_own(tmp_path, fake_wandb, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", ENV_KEY)
    cfg = TrainConfig(out_dir=str(tmp_path / "unet_resnet18_64px_foldall"), fold=-1, log_with="wandb",
                      log_project="my-gi-runs")  # fmt: skip
    project, kwargs = tracker_setup(cfg, wandb_key())
    assert project == "my-gi-runs"
    assert kwargs["wandb"]["name"] == "unet_resnet18_64px_foldall" and kwargs["wandb"]["group"] == "unet_resnet18_64px"
    assert kwargs["wandb"]["settings"].api_key == ENV_KEY
    kaggle_secret(monkeypatch, error=RuntimeError("secret not attached"))  # on Kaggle, no secret
    assert wandb_key() == ENV_KEY
    assert tracker_setup(cfg.replace(log_with="tensorboard")) == ("logs", {})  # <out_dir>/logs


def test_no_key_anywhere_stops_before_any_work_saying_what_was_tried(synth_dir, tmp_path, tiny_config,
                                                                     fake_wandb, monkeypatch):  # fmt: skip
    kaggle_secret(monkeypatch, value=None)
    out = tmp_path / "run"
    with pytest.raises(WandbKeyError, match=r"no W&B API key found; tried the Kaggle secret WANDB_API_KEY \(empty\), "
                                            r"the environment variable WANDB_API_KEY \(unset\), `wandb login`"):  # fmt: skip
        train(tiny_config(synth_dir, out, log_with="wandb"))
    assert not out.exists() and not fake_wandb.inits
    monkeypatch.setenv("WANDB_MODE", "offline")  # offline runs need no key
    assert wandb_key() is None


def test_log_project_is_checked_and_may_change_on_resume(synth_dir, tmp_path, tiny_config):
    with pytest.raises(ValueError, match=r"log_project='a/b' is not a valid W&B project name"):
        TrainConfig(log_project="a/b")
    cfg = tiny_config(synth_dir, tmp_path / "run", max_steps_per_epoch=1)
    first = train(cfg)
    again = train(cfg.replace(log_project="another-project"))  # a setting that changes no number
    assert again.equals(first)
