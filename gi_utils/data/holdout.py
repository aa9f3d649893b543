"""A scored hold-out: test scans whose truth is kept apart, as Kaggle keeps its solution.

The truth of a dataset's ``test/`` split is a CSV in ``train.csv``'s format kept *outside*
the data folder the notebooks read (:func:`solution_path`: ``<data>_solution.csv`` beside
``<data>/``). The synthetic generator writes it; on real data :func:`make_holdout` makes a
new data folder whose ``test/`` holds some training cases (linked, not copied) and writes
their truth there, so the whole pipeline, submission included, runs unchanged and the
submission can be scored (:func:`gi_utils.evaluation.score_submission`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from gi_utils.atomic import atomic_write_text
from gi_utils.constants import TRAIN_CSV_COLUMNS
from gi_utils.data.errors import DataError
from gi_utils.data.labels import read_train_csv
from gi_utils.data.layout import list_slices

__all__ = ["solution_path", "read_solution", "write_solution", "make_holdout"]


def solution_path(data_dir: str | os.PathLike) -> Path:
    """Where the hold-out truth of ``data_dir``'s test split lives: ``<data>_solution.csv``
    next to the data folder (never inside it)."""
    data_dir = Path(data_dir)
    return data_dir.parent / f"{data_dir.name}_solution.csv"


def write_solution(rows: Sequence[tuple[str, str, str]] | pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``(id, class, segmentation)`` rows as a solution CSV, atomically."""
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows, columns=list(TRAIN_CSV_COLUMNS))
    return atomic_write_text(path, df.to_csv(index=False))


def read_solution(path: str | os.PathLike) -> pd.DataFrame:
    """A solution CSV as :func:`gi_utils.data.read_train_csv` reads train.csv (validated)."""
    return read_train_csv(path)


def make_holdout(
    data_dir: str | os.PathLike, out_dir: str | os.PathLike, cases: Sequence[int] | int, seed: int = 0
) -> Path:
    """A data folder whose ``test/`` is some of ``data_dir``'s training cases.

    Args:
        data_dir: a dataset in the Kaggle layout (read-only; nothing in it is written).
        out_dir: the new data folder (must not exist); its case folders are symbolic links.
        cases: case numbers to hold out, or how many to draw (seeded).

    Returns:
        ``out_dir``; its truth is at :func:`solution_path` of it.

    Raises:
        DataError: an unknown case, ``out_dir`` existing, or no case left to train on.
    """
    src, out = Path(data_dir), Path(out_dir)
    if out.exists():
        raise DataError(f"hold-out folder {out} exists already; choose another or delete it")
    meta = list_slices(src, "train")
    all_cases = sorted(meta["case"].unique().tolist())
    if isinstance(cases, int):
        rng = np.random.default_rng(seed)
        cases = sorted(rng.choice(all_cases, size=cases, replace=False).tolist())
    cases = [int(c) for c in cases]
    unknown = sorted(set(cases) - set(all_cases))
    if unknown:
        raise DataError(f"case(s) {unknown} are not in {src / 'train'}")
    if len(set(cases)) >= len(all_cases):
        raise DataError(f"holding out {len(set(cases))} of {len(all_cases)} cases leaves none to train on")
    wide = read_train_csv(src / "train.csv")
    held = meta["case"].isin(cases)
    for split, part in (("train", meta[~held]), ("test", meta[held])):
        for case in sorted(part["case"].unique()):
            target = out / split / f"case{case}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to((src / "train" / f"case{case}").resolve(), target_is_directory=True)
    long = wide.reset_index().melt(id_vars="id", var_name="class", value_name="segmentation")
    long["order"] = long["class"].map({c: i for i, c in enumerate(wide.columns)})
    long = long.sort_values(["id", "order"]).drop(columns="order")
    test_ids = set(meta.loc[held, "id"])
    atomic_write_text(out / "train.csv", long[~long["id"].isin(test_ids)].to_csv(index=False))
    write_solution(long[long["id"].isin(test_ids)], solution_path(out))
    if (src / "sample_submission.csv").is_file():
        atomic_write_text(out / "sample_submission.csv", (src / "sample_submission.csv").read_text())
    return out
