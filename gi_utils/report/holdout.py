"""The hold-out scores in the selection table (scored by :mod:`gi_utils.evaluation.holdout`),
and the choice with them (``03_compare``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from gi_utils.evaluation.holdout import holdout_available, holdout_table
from gi_utils.report.runs import Run
from gi_utils.report.selection import select

__all__ = ["with_holdout", "submitted_holdout", "select_with_holdout"]


def with_holdout(table: Any, scores: Mapping[str, Mapping[str, float]]) -> Any:
    """The selection table with ``Hold-out default`` and ``Hold-out tuned`` columns."""
    out = table.copy()
    for kind in ("default", "tuned"):
        out[f"Hold-out {kind}"] = out["Model"].map(lambda m, k=kind: scores.get(m, {}).get(k, np.nan))
    return out


def submitted_holdout(scores: Mapping[str, Mapping[str, float]], candidate: Any) -> float | None:
    """The hold-out score of ``candidate`` with the settings it submits (None: not scored)."""
    figures = scores.get(candidate.name)
    return None if not figures else figures["tuned" if candidate.keep_tuned else "default"]


def select_with_holdout(runs: list[Run], data_dir: str | os.PathLike) -> tuple[Any, list[Any], float | None]:
    """:func:`~gi_utils.report.selection.select`, then, where the data have a hold-out
    (:func:`~gi_utils.evaluation.holdout_available`), every candidate scored on it.

    Returns:
        ``(table, candidates, holdout)``: the table with the hold-out columns when there is
        a hold-out, the candidates (chosen first), and the chosen one's hold-out score with
        the settings it submits (None without a hold-out).
    """
    table, candidates = select(runs)
    if not holdout_available(data_dir):
        return table, candidates, None
    scores = holdout_table(candidates, data_dir)
    return with_holdout(table, scores), candidates, submitted_holdout(scores, candidates[0])
