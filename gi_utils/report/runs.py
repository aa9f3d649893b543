"""Reading run folders back.

A *run folder* is what one ``02_train`` run writes (:mod:`gi_utils.training.session`):
``config.json``, ``split.json``, ``history.csv``, ``metrics.json``, ``best.safetensors`` +
``best.json``, ``oof/`` and ``last.pt``. :func:`load_run` reads the small files back into
a :class:`Run`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from gi_utils.atomic import read_json
from gi_utils.models.registry import model_label

__all__ = ["Run", "model_stem", "run_name", "load_run", "find_runs", "ensemble_paths", "data_dir_of"]


def model_stem(arch: str, encoder: str, img_size: int, gate: bool = False) -> str:
    """One model's name, whatever the fold: ``unet_resnet18_128px`` (``_gate`` with a
    classifier gate; ``segresnet3d_128px`` for a 3-D model)."""
    return f"{model_label(arch, encoder)}_{img_size}px{'_gate' if gate else ''}"


def run_name(arch: str, encoder: str, img_size: int, fold: int, gate: bool = False) -> str:
    """Default run folder name: :func:`model_stem` and the fold, e.g.
    ``unet_resnet18_128px_fold0`` (``foldall`` for fold -1)."""
    return f"{model_stem(arch, encoder, img_size, gate)}_fold{'all' if fold == -1 else fold}"


@dataclass(frozen=True)
class Run:
    """The small files of one run folder."""

    name: str
    path: Path
    config: dict
    metrics: dict
    history: pd.DataFrame
    split: dict

    @property
    def model_path(self) -> Path:
        return self.path / "best.safetensors"

    @property
    def oof_path(self) -> Path:
        """The run's out-of-fold set (absent for ``fold=-1`` runs)."""
        return self.path / "oof"


def load_run(path: str | os.PathLike) -> Run:
    """Read a run folder. Raises ``FileNotFoundError`` naming the missing file."""
    path = Path(path)
    for name in ("config.json", "split.json", "metrics.json", "history.csv", "best.safetensors"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"run folder {path} has no {name} (did its training finish?)")
    return Run(
        name=path.name,
        path=path,
        config=read_json(path / "config.json"),
        metrics=read_json(path / "metrics.json"),
        history=pd.read_csv(path / "history.csv"),
        split=read_json(path / "split.json"),
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


def ensemble_paths(runs_dir: str | os.PathLike, runs: str = "", paths: str = "") -> list[Path]:
    """The models of an ensemble: explicit comma-separated ``.safetensors`` paths if given,
    else the ``best.safetensors`` of the named runs (or of every finished run)."""
    if paths:
        out = [Path(p.strip()) for p in paths.split(",") if p.strip()]
        missing = [str(p) for p in out if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"model file(s) not found: {missing}")
        return out
    return [r.model_path for r in find_runs(runs_dir, runs)]


def data_dir_of(runs: list[Run], data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir`` if given, else the data folder the runs trained on (their ``split.json``).

    Raises:
        ValueError: the runs trained on different data folders (names two of them).
    """
    if data_dir:
        return Path(data_dir)
    folders = sorted({r.split["data_dir"] for r in runs})
    if len(folders) != 1:
        raise ValueError(f"the runs trained on {len(folders)} data folders ({folders[:2]}); pass data_dir")
    return Path(folders[0])
