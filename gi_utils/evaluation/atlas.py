"""The error atlas: where a model loses its score, one row per (case-day, class).

For out-of-fold volumes (a model, a blend) under a post-processing, each row holds the
Dice, the Hausdorff term and the (case-day, class) score, the predicted and true pixel
counts, the slices predicted on an empty true slice (false-positive slices) and the true
slices left empty (false-negative slices), and the point that sets the Hausdorff
distance: its slice, row and column, whether it is a predicted voxel far from the truth
(``pred``: a false positive, typically past the end of an organ) or a true voxel far from
the prediction (``true``: a miss), and the nearest voxel of the other mask. Sorted worst
first (lowest score, then largest Hausdorff term).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from gi_utils.constants import CLASSES, DICE_WEIGHT, HAUSDORFF_WEIGHT
from gi_utils.evaluation.hausdorff import hausdorff_point
from gi_utils.inference.postprocessing import PostProcess

__all__ = ["ATLAS_COLUMNS", "volume_atlas", "error_atlas"]

ATLAS_COLUMNS: tuple[str, ...] = (
    "case_day", "class", "score", "dice", "hausdorff", "pred_pixels", "true_pixels", "fp_slices",
    "fn_slices", "hd_side", "hd_slice", "hd_row", "hd_col", "nearest_slice", "nearest_row", "nearest_col",
)  # fmt: skip


def volume_atlas(case_day: str, pred: np.ndarray, true: np.ndarray) -> list[dict[str, Any]]:
    """The atlas rows of one case-day: bool (D, H, W, 3) prediction and truth."""
    rows = []
    d = len(pred)
    for c, name in enumerate(CLASSES):
        p, t = pred[..., c], true[..., c]
        p_any, t_any = p.reshape(d, -1).any(1), t.reshape(d, -1).any(1)
        inter = (p & t).reshape(d, -1).sum(1)
        total = p.reshape(d, -1).sum(1) + t.reshape(d, -1).sum(1)
        scored = total > 0
        dice = float(np.mean(2 * inter[scored] / total[scored])) if scored.any() else math.nan
        point = hausdorff_point(p, t)
        hd = point.distance
        score = DICE_WEIGHT * dice + HAUSDORFF_WEIGHT * (1 - hd) if not math.isnan(hd) else math.nan
        voxel, near = point.voxel or (-1, -1, -1), point.nearest or (-1, -1, -1)
        rows.append({
            "case_day": case_day, "class": name, "score": score, "dice": dice, "hausdorff": hd,
            "pred_pixels": int(p.sum()), "true_pixels": int(t.sum()),
            "fp_slices": int((p_any & ~t_any).sum()), "fn_slices": int((t_any & ~p_any).sum()),
            "hd_side": point.side, "hd_slice": voxel[0], "hd_row": voxel[1], "hd_col": voxel[2],
            "nearest_slice": near[0], "nearest_row": near[1], "nearest_col": near[2],
        })  # fmt: skip
    return rows


def error_atlas(source: Any, post: PostProcess, case_days: Sequence[str] | None = None) -> pd.DataFrame:
    """The atlas of OOF volumes (anything with ``source(case_days)`` yielding
    ``(case_day, probs, truth, gate)``: an OOF set, a collection, a blend) under ``post``.

    Returns:
        One row per (case-day, class) with :data:`ATLAS_COLUMNS`, worst first; pairs where
        both masks are empty (nothing to score) are left out.
    """
    rows: list[dict[str, Any]] = []
    for cd, probs, truth, gate in source.source(None if case_days is None else list(case_days)):
        rows += volume_atlas(cd, post.apply(probs, gate), truth)
    table = pd.DataFrame(rows, columns=list(ATLAS_COLUMNS))
    table = table[table["hd_side"] != ""]
    return table.sort_values(["score", "hausdorff"], ascending=[True, False], kind="stable").reset_index(drop=True)
