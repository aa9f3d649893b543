"""Reading run folders back.

A *run folder* is what one ``02_train`` run writes (:mod:`gi_utils.training.session`;
its name and files: :mod:`gi_utils.models.run_folder`). :func:`load_run` reads the small
files back into a :class:`Run`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from gi_utils.atomic import read_json
from gi_utils.models.run_folder import (
    CONFIG_FILE,
    FINISHED_FILES,
    HISTORY_FILE,
    METRICS_FILE,
    MODEL_FILE,
    OOF_DIR,
    SPLIT_FILE,
)
from gi_utils.paths import resolve_data_dir

__all__ = ["Run", "load_run", "trained_runs", "as_roots", "find_runs", "ensemble_paths", "data_dir_of"]


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
        return self.path / MODEL_FILE

    @property
    def oof_path(self) -> Path:
        """The run's out-of-fold set (absent for ``fold=-1`` runs)."""
        return self.path / OOF_DIR

    @property
    def time_limit_stop(self) -> bool:
        """The session's time limit stopped the run before its last epoch (``metrics.json``'s
        ``time_limit_stop``): its figures are those of the epochs trained so far."""
        return bool(self.metrics.get("time_limit_stop"))


def load_run(path: str | os.PathLike) -> Run:
    """Read a run folder. Raises ``FileNotFoundError`` naming the missing file."""
    path = Path(path)
    for name in FINISHED_FILES:
        if not (path / name).is_file():
            raise FileNotFoundError(f"run folder {path} has no {name} (did its training finish?)")
    return Run(
        name=path.name,
        path=path,
        config=read_json(path / CONFIG_FILE),
        metrics=read_json(path / METRICS_FILE),
        history=pd.read_csv(path / HISTORY_FILE),
        split=read_json(path / SPLIT_FILE),
    )


def trained_runs(folder: str | os.PathLike, names: Iterable[str]) -> list[Run]:
    """The runs ``names`` of ``folder`` read back (:func:`load_run`): those ``02_train``
    trained an epoch of (:func:`gi_utils.pipeline.train_folds` returns their names).

    None, because the session's time limit came before the first epoch ended (``last.pt``
    alone is saved): one line says so, and the tables and figures made from the list are
    empty (:func:`~gi_utils.report.history_table`, :func:`~gi_utils.report.plot_history`
    and :func:`~gi_utils.report.prediction_grid` take an empty list).
    """
    runs = [load_run(Path(folder) / name) for name in names]
    if not runs:
        print("no epoch finished in this session: nothing to show below until one has; the run continues in the "
              "next session (the line above says how)", flush=True)  # fmt: skip
    return runs


def as_roots(runs_dir: str | os.PathLike | list | tuple) -> list[Path]:
    """One folder of run folders, or a list of them, as a list of paths."""
    return [Path(r) for r in runs_dir] if isinstance(runs_dir, list | tuple) else [Path(runs_dir)]


def find_runs(runs_dir: str | os.PathLike | list, names: list[str] | tuple[str, ...] | str = ()) -> list[Run]:
    """Load the named run folders of ``runs_dir``, or every finished one when none is named.

    Args:
        runs_dir: a folder holding run folders, or a list of them (the outputs of several
            notebooks, attached read-only).
        names: run folder names (a list or a comma-separated string); empty = all.

    Raises:
        FileNotFoundError: a named run is missing or unfinished, or no run is found.
        ValueError: two folders hold runs of the same name (names both).
    """
    roots = as_roots(runs_dir)
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    found: dict[str, Path] = {}
    for root in roots:
        for path in sorted(p.parent for p in root.glob(f"*/{METRICS_FILE}")):
            if path.name in found:
                raise ValueError(f"two runs named {path.name}: {found[path.name]} and {path}")
            found[path.name] = path
    if names:  # a name not found: load_run says what is missing in the (first) folder
        return [load_run(found.get(n, roots[0] / n)) for n in names]
    if not found:
        raise FileNotFoundError(f"no finished run (a folder with {METRICS_FILE}) under {', '.join(map(str, roots))}")
    return [load_run(found[n]) for n in sorted(found)]


def ensemble_paths(runs_dir: str | os.PathLike | list, runs: str = "", paths: str = "") -> list[Path]:
    """The models of an ensemble: explicit comma-separated ``.safetensors`` paths if given,
    else the ``best.safetensors`` (:data:`MODEL_FILE`) of the named runs (or of every finished run)."""
    if paths:
        out = [Path(p.strip()) for p in paths.split(",") if p.strip()]
        missing = [str(p) for p in out if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"model file(s) not found: {missing}")
        return out
    return [r.model_path for r in find_runs(runs_dir, runs)]


def data_dir_of(runs: list[Run], data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir`` if given, else the data folder the runs trained on (their ``split.json``)
    where it still exists, else the data folder found here (:func:`resolve_data_dir`: the
    runs came from another machine or notebook).

    Raises:
        ValueError: the runs trained on different data folders (names two of them).
    """
    if data_dir:
        return Path(data_dir)
    folders = sorted({r.split["data_dir"] for r in runs})
    if len(folders) != 1:
        raise ValueError(f"the runs trained on {len(folders)} data folders ({folders[:2]}); pass data_dir")
    if Path(folders[0]).is_dir():
        return Path(folders[0])
    return resolve_data_dir()
