"""Scoring a submission against a hold-out's truth (:mod:`gi_utils.data.holdout`), with the
exact competition metric, volume by volume."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gi_utils.constants import CLASSES, SUBMISSION_COLUMNS
from gi_utils.data.holdout import read_solution
from gi_utils.data.images import iter_volumes
from gi_utils.data.rle import decode_rle
from gi_utils.evaluation.metric import ScoreAccumulator, ScoreResult

__all__ = ["score_submission", "volume_from_rles"]


def volume_from_rles(rles: pd.DataFrame, rows: pd.DataFrame) -> np.ndarray:
    """bool (D, H, W, 3) of one scan from a wide (id -> one RLE column per class) table."""
    h, w = int(rows["height"].iloc[0]), int(rows["width"].iloc[0])
    out = np.zeros((len(rows), h, w, len(CLASSES)), bool)
    for d, sid in enumerate(rows["id"]):
        if sid in rles.index:
            for c, name in enumerate(CLASSES):
                out[d, ..., c] = decode_rle(rles.at[sid, name], (h, w))
    return out


def score_submission(
    submission: pd.DataFrame | str | os.PathLike, solution: str | os.PathLike, test_meta: pd.DataFrame,
    **metric: Any,
) -> ScoreResult:  # fmt: skip
    """Competition score of a submission (a table or a CSV) against the solution CSV.

    Args:
        submission: ``id, class, predicted`` (validated by
            :func:`gi_utils.inference.validate_submission` before, ideally).
        solution: the hold-out truth (``id, class, segmentation``).
        test_meta: ``build_metadata(data, "test", labels=False)``: slice order and sizes.
        metric: options of :class:`~gi_utils.evaluation.metric.ScoreAccumulator`
            (``hausdorff_mode="mlebench"``...).

    Raises:
        ValueError: the solution lacks slices of the test set (names the first).
    """
    if not isinstance(submission, pd.DataFrame):
        submission = pd.read_csv(submission, keep_default_na=False, dtype=str)
    if list(submission.columns) != list(SUBMISSION_COLUMNS):
        raise ValueError(f"submission columns are {list(submission.columns)}; expected {list(SUBMISSION_COLUMNS)}")
    pred = submission.pivot(index="id", columns="class", values="predicted").reindex(columns=list(CLASSES))
    pred = pred.fillna("")
    truth = read_solution(Path(solution))
    missing = pd.Index(test_meta["id"]).difference(truth.index)
    if len(missing):
        raise ValueError(f"solution {solution} has no rows for {len(missing)} test slice(s), first {missing[0]!r}")
    acc = ScoreAccumulator(**metric)
    for case_day, rows in iter_volumes(test_meta):
        acc.add(case_day, volume_from_rles(pred, rows), volume_from_rles(truth, rows))
    return acc.result()
