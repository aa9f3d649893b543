"""Where runs, pictures and data go by default, and reading a run folder back.

A *run folder* is what one ``02_train`` run writes (see :func:`gi_utils.train.train`):
``config.json``, ``history.csv``, ``metrics.json``, ``best.safetensors`` + ``best.json``
and ``last.pt``. :func:`load_run` reads the small files back into a :class:`Run`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from gi_utils.constants import KAGGLE_DATA_DIR
from gi_utils.notebook import read_json
from gi_utils.paths import REPO_ROOT

__all__ = ["RUNS_DIR_ENV", "on_kaggle", "default_runs_dir", "default_pictures_dir", "Run", "load_run", "find_runs", "ensemble_paths"]

#: Environment variable that names the folder of run folders.
RUNS_DIR_ENV = "GI_RUNS_DIR"
KAGGLE_WORKING = Path("/kaggle/working")


def on_kaggle() -> bool:
    """True inside a Kaggle notebook (the competition mount or /kaggle/working exists)."""
    return Path(KAGGLE_DATA_DIR).is_dir() or KAGGLE_WORKING.is_dir()


def _in_checkout() -> bool:
    return (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "notebooks").is_dir()


def default_runs_dir(runs_dir: str | os.PathLike | None = None) -> Path:
    """Folder of run folders: argument → ``$GI_RUNS_DIR`` → /kaggle/working/runs →
    ``runs/`` of the repository checkout → ``./runs``."""
    if runs_dir:
        return Path(runs_dir)
    if os.environ.get(RUNS_DIR_ENV):
        return Path(os.environ[RUNS_DIR_ENV])
    if KAGGLE_WORKING.is_dir():
        return KAGGLE_WORKING / "runs"
    return (REPO_ROOT if _in_checkout() else Path.cwd()) / "runs"


def default_pictures_dir(pictures_dir: str | os.PathLike | None = None, runs_dir: str | os.PathLike | None = None) -> Path:
    """Where a notebook saves figures: the argument, else ``<runs>/pictures``.

    The repository's ``pictures/`` (shown in the README) is written only when asked for
    explicitly, as ``make demo`` does, so a quick test run never replaces them.
    """
    return Path(pictures_dir) if pictures_dir else default_runs_dir(runs_dir) / "pictures"


@dataclass(frozen=True)
class Run:
    """The small files of one run folder."""

    name: str
    path: Path
    config: dict
    metrics: dict
    history: pd.DataFrame

    @property
    def model_path(self) -> Path:
        return self.path / "best.safetensors"


def load_run(path: str | os.PathLike) -> Run:
    """Read a run folder. Raises ``FileNotFoundError`` naming the missing file."""
    path = Path(path)
    for name in ("config.json", "metrics.json", "history.csv", "best.safetensors"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"run folder {path} has no {name} (did its training finish?)")
    return Run(
        name=path.name,
        path=path,
        config=read_json(path / "config.json"),
        metrics=read_json(path / "metrics.json"),
        history=pd.read_csv(path / "history.csv"),
    )


def find_runs(runs_dir: str | os.PathLike, names: list[str] | tuple[str, ...] | str = ()) -> list[Run]:
    """Load the named run folders of ``runs_dir``, or every finished one when none is named.

    Args:
        runs_dir: folder holding run folders.
        names: run folder names (a list or a comma-separated string); empty = all.

    Raises:
        FileNotFoundError: a named run is missing or unfinished, or no run is found.
    """
    runs_dir = Path(runs_dir)
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if names:
        return [load_run(runs_dir / n) for n in names]
    found = sorted(p.parent for p in runs_dir.glob("*/metrics.json"))
    if not found:
        raise FileNotFoundError(f"no finished run (a folder with metrics.json) under {runs_dir}")
    return [load_run(p) for p in found]


def ensemble_paths(runs_dir: str | os.PathLike | None = None, runs: str = "", paths: str = "") -> list[Path]:
    """The models of an ensemble: explicit comma-separated ``.safetensors`` paths if given,
    else the ``best.safetensors`` of the named runs (or of every finished run)."""
    if paths:
        out = [Path(p.strip()) for p in paths.split(",") if p.strip()]
        missing = [str(p) for p in out if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"model file(s) not found: {missing}")
        return out
    return [r.model_path for r in find_runs(default_runs_dir(runs_dir), runs)]
