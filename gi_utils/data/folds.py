"""Cross-validation folds: grouped by case, stratified on empty slices, persisted as JSON.

Every architecture must be compared on the same folds, so the first call writes the
assignment (case -> fold) to a JSON file in the runs folder (``runs/folds/``, never into
the data, which stay read-only, as nnU-Net keeps ``splits_final.json`` beside its results)
and every later call reads it back. The file name carries the settings and a short hash of
the cases it was made for (``folds_5fold_seed42_3f2a9c1d.json``), so another dataset in
the same runs folder gets its own folds instead of an error.

Folds are made on the whole table given (all case-days); dropping the case-days with
known annotation problems (:data:`~gi_utils.constants.BAD_CASE_DAYS`) happens after the
assignment, so runs with and without them share the same folds.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from gi_utils.atomic import atomic_write_text
from gi_utils.constants import BAD_CASE_DAYS

__all__ = [
    "FoldsError",
    "FOLDS_FORMAT",
    "folds_filename",
    "make_folds",
    "assign_folds",
    "drop_case_days",
    "split_fold",
]

FOLDS_FORMAT: str = "gi-folds-v1"


class FoldsError(ValueError):
    """A folds file does not match the data or the request, or a fold is unusable."""


def folds_filename(n_splits: int, seed: int, cases: list[str] | None = None) -> str:
    """File name of an assignment, e.g. ``folds_5fold_seed42_3f2a9c1d.json`` (the hash
    names the sorted case list; without ``cases``: ``folds_5fold_seed42.json``)."""
    tag = ""
    if cases is not None:
        tag = "_" + hashlib.sha256(",".join(sorted(cases)).encode()).hexdigest()[:8]
    return f"folds_{n_splits}fold_seed{seed}{tag}.json"


def _case_names(meta: pd.DataFrame) -> pd.Series:
    return "case" + meta["case"].astype(int).astype(str)


def make_folds(meta: pd.DataFrame, n_splits: int = 5, seed: int = 42) -> dict[str, int]:
    """Assign every case to a fold with ``StratifiedGroupKFold`` (shuffled, seeded).

    Slices are the samples, cases the groups and the boolean ``empty`` column the
    stratification label, so each fold gets about the same share of empty slices.

    Returns:
        ``{"case123": fold, ...}`` with folds in ``0 .. n_splits - 1``.

    Raises:
        FoldsError: ``empty`` is missing, ``n_splits < 2``, or there are fewer cases than
            folds (the message names the fold that would have no validation case).
    """
    if "empty" not in meta.columns:
        raise FoldsError("make_folds needs the boolean 'empty' column of build_metadata(train)")
    if n_splits < 2:
        raise FoldsError(f"n_splits must be >= 2, got {n_splits}")
    groups = _case_names(meta).to_numpy()
    n_cases = len(np.unique(groups))
    if n_cases < n_splits:
        raise FoldsError(
            f"n_splits={n_splits} but only {n_cases} case(s): fold {n_cases} would have "
            "no validation case; lower n_splits"
        )
    y = meta["empty"].astype(int).to_numpy()
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    out: dict[str, int] = {}
    with warnings.catch_warnings():  # tiny data: "least populated class" warning
        warnings.simplefilter("ignore", UserWarning)
        for fold, (_, val_idx) in enumerate(sgkf.split(np.zeros(len(y)), y, groups)):
            for case in np.unique(groups[val_idx]):
                out[str(case)] = fold
    missing = sorted(set(range(n_splits)) - set(out.values()))
    if missing:
        raise FoldsError(f"fold {missing[0]} got no validation case; lower n_splits")
    return dict(sorted(out.items(), key=lambda kv: int(kv[0][4:])))


def _write_json_atomic(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def _read_folds(path: Path, n_splits: int, seed: int) -> dict[str, int]:
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise FoldsError(f"folds file {path} is not readable JSON: {err}") from err
    if not isinstance(obj, dict) or obj.get("format") != FOLDS_FORMAT:
        raise FoldsError(f"folds file {path} is not a {FOLDS_FORMAT!r} file")
    for key, want in (("n_splits", n_splits), ("seed", seed)):
        if obj.get(key) != want:
            raise FoldsError(
                f"folds file {path} was made with {key}={obj.get(key)}, but {key}={want} was "
                "asked for; pass the matching value, another path, or delete the file"
            )
    folds = obj.get("folds")
    if not isinstance(folds, dict):
        raise FoldsError(f"folds file {path} has no 'folds' mapping")
    bad = {c: f for c, f in folds.items() if not (isinstance(f, int) and 0 <= f < n_splits)}
    if bad:
        case, f = next(iter(bad.items()))
        raise FoldsError(
            f"folds file {path}: case {case!r} has fold {f!r}, expected 0..{n_splits - 1}"
        )
    return folds


def assign_folds(
    meta: pd.DataFrame,
    n_splits: int = 5,
    seed: int = 42,
    folds_dir: str | os.PathLike | None = None,
    *,
    path: str | os.PathLike | None = None,
    drop_bad: bool = False,
) -> pd.DataFrame:
    """Add an int ``fold`` column, reading the persisted assignment or making it once.

    Args:
        meta: :func:`gi_utils.data.build_metadata` table of the training split.
        n_splits: number of folds.
        seed: shuffling seed of ``StratifiedGroupKFold``.
        folds_dir: folder of the folds files (``runs/folds``); the file is
            :func:`folds_filename` of the settings and the cases of ``meta``.
        path: an explicit JSON file instead (read if present, else written).
        drop_bad: drop :data:`~gi_utils.constants.BAD_CASE_DAYS` after assigning.

    Returns:
        A copy of ``meta`` (sorted by case, day, slice) with column ``fold``.

    Raises:
        FoldsError: neither ``folds_dir`` nor ``path`` is given; the file exists but was
            made with other ``n_splits``/``seed`` or does not know a case of ``meta``; or
            it cannot be written (the message names it).
    """
    if path is None:
        if folds_dir is None:
            raise FoldsError("assign_folds: give folds_dir= (e.g. runs/folds) or path=")
        path = Path(folds_dir) / folds_filename(n_splits, seed, _case_names(meta).unique().tolist())
    path = Path(path)
    if path.is_file():
        folds = _read_folds(path, n_splits, seed)
    else:
        folds = make_folds(meta, n_splits, seed)
        obj = {"format": FOLDS_FORMAT, "n_splits": n_splits, "seed": seed,
               "group": "case", "stratify": "empty", "folds": folds}  # fmt: skip
        try:
            _write_json_atomic(path, obj)
        except OSError as err:
            raise FoldsError(f"could not write the folds file {path}: {err}") from err
    out = meta.sort_values(["case", "day", "slice"], kind="stable").reset_index(drop=True)
    cases = _case_names(out)
    unknown = sorted(set(cases) - set(folds), key=lambda c: int(c[4:]))
    if unknown:
        raise FoldsError(
            f"folds file {path} does not know {len(unknown)} case(s) of the data, first "
            f"{unknown[:5]}; it was made for other data: delete it or pass another path"
        )
    out["fold"] = cases.map(folds).astype(np.int64)
    return drop_case_days(out) if drop_bad else out


def drop_case_days(
    meta: pd.DataFrame, case_days: tuple[str, ...] | list[str] = BAD_CASE_DAYS
) -> pd.DataFrame:
    """Rows of ``meta`` whose ``case_day`` is not in ``case_days`` (index reset)."""
    return meta[~meta["case_day"].isin(list(case_days))].reset_index(drop=True)


def split_fold(meta: pd.DataFrame, fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(train, valid)`` rows of a table with a ``fold`` column; valid = that fold.

    Raises:
        FoldsError: the ``fold`` column is missing, or fold ``fold`` has no validation
            (or no training) rows in this table; the message names the fold.
    """
    if "fold" not in meta.columns:
        raise FoldsError("split_fold needs the 'fold' column of assign_folds")
    is_val = meta["fold"] == fold
    if not is_val.any():
        present = sorted(int(f) for f in meta["fold"].unique())
        raise FoldsError(
            f"fold {fold} has no validation rows in this table (folds present: {present}); "
            "too few cases for this number of folds, or the cases of the fold were dropped"
        )
    if is_val.all():
        raise FoldsError(f"fold {fold}: every row is in validation, no training rows left")
    return meta[~is_val].reset_index(drop=True), meta[is_val].reset_index(drop=True)
