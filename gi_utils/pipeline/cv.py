"""Cross-validation in one call: every fold of one architecture with the same settings.

``python -m gi_utils.pipeline cv --arch unet --folds all --preset demo -p epochs 6`` (or
:func:`cross_validate`, or ``02_train`` with ``-p folds all``) trains one normal run per
fold; each is resumable, so a CV that was interrupted continues with the folds and the
epochs that are missing (finished folds return at once). The folds are the same for every
architecture (one folds file per data in ``runs/folds``). A CV writes its summary --
fold scores, mean and spread -- to ``runs/cv/<arch>_<encoder>_<size>px.json``.

``final=True`` then trains the same configuration on all training cases (``fold=-1``, the
1st place's ``fold_all``) for the mean best epoch of the folds; such a model has no honest
validation score, and the comparison marks it so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gi_utils.atomic import atomic_write_json, read_json
from gi_utils.models.run_folder import METRICS_FILE, model_stem, run_name
from gi_utils.paths import default_runs_dir
from gi_utils.pipeline.data_root import ensure_data
from gi_utils.pipeline.sessions import adopt_attached_run, continue_hint
from gi_utils.report.runs import load_run
from gi_utils.training.config import TrainConfig
from gi_utils.training.launcher import describe_processes, launch, resolve_num_processes
from gi_utils.training.presets import preset_config

__all__ = ["parse_folds", "fold_run_dir", "train_folds", "cross_validate", "cv_summary", "parse_overrides"]


def parse_folds(folds: str | int | Sequence[int], n_folds: int) -> list[int]:
    """``"all"`` -> every fold; ``"0,2"`` -> [0, 2]; an int or a list as given.

    Raises:
        ValueError: a fold outside ``0 .. n_folds - 1`` or text that is not a fold list.
    """
    if isinstance(folds, str):
        text = folds.strip().lower()
        if text == "all":
            return list(range(n_folds))
        try:
            out = [int(f) for f in text.split(",") if f.strip()]
        except ValueError:
            raise ValueError(f"folds={folds!r} is not 'all' or a comma-separated list of folds") from None
    elif isinstance(folds, int):
        out = [folds]
    else:
        out = [int(f) for f in folds]
    bad = [f for f in out if not 0 <= f < n_folds]
    if bad or not out:
        raise ValueError(f"folds {bad or out} are not in 0..{n_folds - 1} (n_folds={n_folds})")
    return sorted(dict.fromkeys(out))


def fold_run_dir(cfg: TrainConfig, fold: int) -> Path:
    """The run folder of fold ``fold`` of ``cfg``: beside ``cfg.out_dir``, default name."""
    return Path(cfg.out_dir).parent / run_name(cfg, fold)


def train_folds(
    cfg: TrainConfig, folds: str | int | Sequence[int], num_processes: int | str = 1
) -> dict[str, pd.DataFrame]:
    """Train ``cfg`` on each of ``folds`` (each a resumable run); ``{run name: history}``
    of the runs that finished an epoch. ``num_processes``: an int or ``"auto"`` (every
    visible GPU), printed once with the effective batch and the learning-rate rule.

    Fold ``cfg.fold`` trains in ``cfg.out_dir``, the others beside it (:func:`fold_run_dir`).
    A run of the same settings attached as an input (Kaggle) is copied in and continued
    (:func:`gi_utils.pipeline.sessions.adopt_attached_run`). When the session's time limit
    stops a run (``last.pt`` saved), the later folds are not begun and one line says how
    to continue (:func:`gi_utils.pipeline.sessions.continue_hint`).
    """
    out = {}
    todo = parse_folds(folds, cfg.n_folds)
    num_processes = resolve_num_processes(num_processes, cfg)  # "auto": every visible GPU
    print(describe_processes(cfg, num_processes), flush=True)
    for n, k in enumerate(todo):
        run_dir = Path(cfg.out_dir) if k == cfg.fold else fold_run_dir(cfg, k)
        run_cfg = cfg.replace(fold=k, out_dir=str(run_dir))
        adopt_attached_run(run_cfg)
        print(f"=== fold {k} of {cfg.n_folds}: {run_dir.name}", flush=True)
        history = launch(run_cfg, num_processes)
        metrics = run_dir / METRICS_FILE
        if metrics.is_file():  # an epoch at least was trained
            out[run_dir.name] = history
        if not metrics.is_file() or read_json(metrics).get("time_limit_stop"):
            print(continue_hint(run_dir, len(todo) - n - 1), flush=True)
            break
    return out


def cv_summary(run_dirs: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """Fold scores of finished runs with their mean and spread (standard deviation)."""
    rows = []
    for path in run_dirs:
        run = load_run(path)
        best = run.metrics.get("best") or {}
        rows.append({"run": run.name, "fold": run.config["fold"], "val_score": best.get("val_score"),
                     "val_dice": best.get("val_dice"), "best_epoch": run.metrics.get("best_epoch")})  # fmt: skip
    scores = np.array([r["val_score"] for r in rows if r["val_score"] is not None], float)
    return {"folds": rows, "mean_score": float(scores.mean()) if scores.size else None,
            "std_score": float(scores.std(ddof=1)) if scores.size > 1 else None,
            "mean_best_epoch": float(np.mean([r["best_epoch"] for r in rows])) if rows else None}  # fmt: skip


def cross_validate(
    arch: str, folds: str | Sequence[int] = "all", preset: str = "demo", overrides: Mapping[str, Any] | None = None,
    *, runs_dir: str | os.PathLike | None = None, data_dir: str | os.PathLike = "", num_processes: int = 1,
    final: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Train every fold of ``arch`` (see the module docstring); returns the CV summary.

    Args:
        arch: the architecture; ``preset`` and ``overrides`` give the other settings.
        folds: ``"all"``, ``"0,1"`` or a list.
        runs_dir: folder of run folders (default :func:`gi_utils.paths.default_runs_dir`).
        data_dir: the data root ("" = search, synthetic data made if none is found).
        final: afterwards train on all training cases for the mean best epoch.
    """
    root = ensure_data(data_dir)
    runs = default_runs_dir(runs_dir)
    base = preset_config(preset, arch=arch, **dict(overrides or {}))
    base = base.replace(data_dir=str(root), out_dir=str(runs / run_name(base, 0)))
    names = list(train_folds(base, folds, num_processes))
    summary = {"arch": base.arch, "preset": preset, "overrides": dict(overrides or {}),
               **cv_summary([runs / n for n in names])}  # fmt: skip
    if final:
        epochs = max(1, int(round(summary["mean_best_epoch"] or base.epochs)))
        final_dir = runs / run_name(base, -1)
        print(f"=== all training cases, {epochs} epochs: {final_dir.name}", flush=True)
        launch(base.replace(fold=-1, epochs=epochs, patience=0, out_dir=str(final_dir)), num_processes)
        summary["final_run"] = final_dir.name
    name = model_stem(base) + ".json"
    atomic_write_json(runs / "cv" / name, summary)
    return summary


def parse_overrides(pairs: Sequence[Sequence[str]]) -> dict[str, Any]:
    """``-p NAME VALUE`` pairs: VALUE read as JSON (numbers, lists, true/false, null), else text."""
    out = {}
    for name, text in pairs:
        try:
            out[name] = json.loads(text)
        except json.JSONDecodeError:
            out[name] = text
    return out
