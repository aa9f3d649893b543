"""The competition metric, exact and fast: per-slice Dice, 3-D Hausdorff and their mix.

``score = 0.4 * dice + 0.6 * (1 - hausdorff)`` (weights from :mod:`gi_utils.constants`).

* **Dice** is computed per (slice, class) pair, ``2|P & T| / (|P| + |T|)``. A pair where
  both masks are empty follows the ``empty`` rule: ``"skip"`` (default: NaN, left out of
  every nan-mean, as the public re-implementations of the grader do), ``"zero"`` (0, the
  literal competition text) or ``"one"`` (1).
* **Hausdorff** is computed per (case-day, class) volume ``(D, H, W)``: voxel ``(z, y, x)``
  becomes the point ``(z / D, y / H, x / W)`` of the unit cube (depth 1 per slice) and the
  symmetric Hausdorff distance between the two point sets is divided by ``sqrt(3)``, so it
  lies in ``[0, 1)``. Both empty: NaN (skipped); exactly one empty: 1. With
  ``hausdorff_mode="union"`` the classes are OR-ed into one volume per case-day first, as
  the public grader re-implementation does.

The Hausdorff part (:func:`hausdorff_3d`, exact via a k-d tree of boundary voxels with
block pruning, or ``method="reference"``: brute force) lives in :mod:`gi_utils.evaluation.hausdorff`
(the package re-exports it). ``method="reference"`` also computes the Dice with a per-slice
loop; it is kept for tests and the benchmark. ``method="torch"`` computes the same exact
Hausdorff in torch on ``device`` (validation on a GPU uses it; the Dice stays the fast one).

Functions are pure; :class:`CompetitionMetric` only stores settings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from gi_utils.constants import CLASSES, DICE_WEIGHT, HAUSDORFF_WEIGHT, NUM_CLASSES
from gi_utils.evaluation.device_hausdorff import device_mask
from gi_utils.evaluation.hausdorff import (
    METHODS,
    check_option,
    hausdorff_3d,
    hausdorff_torch,
    pair_stats,
    voxel_coords,
)

__all__ = [
    "EMPTY_RULES",
    "HAUSDORFF_MODES",
    "MLEBENCH_OVERSIZE",
    "ScoreResult",
    "CompetitionMetric",
    "dice_score",
    "dice_per_slice",
    "batch_dice",
    "competition_score",
    "ScoreAccumulator",
    "volumes_from_slices",
]

#: Dice of a (slice, class) pair where both masks are empty, per rule.
EMPTY_RULES: dict[str, float] = {"skip": math.nan, "zero": 0.0, "one": 1.0}
#: ``"per_class"``: one Hausdorff volume per (case-day, class); ``"union"``: classes OR-ed
#: into one volume per case-day (the public grader re-implementation); ``"mlebench"``: the
#: union, plus MLE-bench's rule that a prediction with more than
#: :data:`MLEBENCH_OVERSIZE` times the true pixels has distance 1.
HAUSDORFF_MODES: tuple[str, ...] = ("per_class", "union", "mlebench")
#: MLE-bench's grader: ``pred.sum() > 10 * true.sum()`` -> Hausdorff 1 ("> 1 OOM larger").
MLEBENCH_OVERSIZE: int = 10


def _nanmean(values) -> float:
    """Mean over the non-NaN entries; NaN (without a warning) when there are none."""
    values = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(values)
    return float(values[keep].mean()) if keep.any() else math.nan


# --------------------------------------------------------------------------- Dice
def dice_score(pred: np.ndarray, true: np.ndarray, empty: str = "skip") -> float:
    """Dice ``2|P & T| / (|P| + |T|)`` of one (slice, class) pair.

    Args:
        pred: bool mask of any shape (nonzero = foreground).
        true: mask of the same shape.
        empty: value when both are empty: ``"skip"`` -> NaN, ``"zero"`` -> 0, ``"one"`` -> 1.

    Returns:
        Dice in ``[0, 1]``; the ``empty`` value when both masks are empty; 0 when exactly
        one is empty.
    """
    fill = EMPTY_RULES[check_option("empty", empty, EMPTY_RULES)]
    pred, true = np.asarray(pred, dtype=bool), np.asarray(true, dtype=bool)
    if pred.shape != true.shape:
        raise ValueError(f"pred shape {pred.shape} != true shape {true.shape}")
    total = np.count_nonzero(pred) + np.count_nonzero(true)
    return fill if total == 0 else 2.0 * np.count_nonzero(pred & true) / total


def dice_per_slice(pred: np.ndarray, true: np.ndarray, empty: str = "skip") -> np.ndarray:
    """Dice of every (slice, class) pair of one volume.

    Args:
        pred: bool ``(D, H, W, C)``, or ``(D, H, W)`` read as ``C = 1``.
        true: array of the same shape.
        empty: rule for pairs where both slices are empty (see :func:`dice_score`).

    Returns:
        float64 ``(D, C)``; pairs with both slices empty hold the ``empty`` value.
    """
    fill = EMPTY_RULES[check_option("empty", empty, EMPTY_RULES)]
    pred, true = (np.asarray(x).astype(bool, copy=False) for x in (pred, true))
    if pred.shape != true.shape or pred.ndim not in (3, 4):
        raise ValueError(
            f"pred {pred.shape} and true {true.shape} must be equal (D, H, W[, C]) shapes"
        )
    if pred.ndim == 3:
        pred, true = pred[..., None], true[..., None]
    ca, cb = voxel_coords(pred), voxel_coords(true)
    return np.stack(
        [pair_stats(a, b, pred.shape[:3], fill, False)[0] for a, b in zip(ca, cb, strict=True)], 1
    )


def batch_dice(pred: torch.Tensor, target: torch.Tensor, empty: str = "skip") -> torch.Tensor:
    """Dice per (sample, channel) on tensors, for the training loop (no host round-trip).

    Args:
        pred: ``(N, C, H, W)`` (any trailing spatial dims) bool or 0/1 tensor; threshold
            probabilities first (values in between give a soft Dice).
        target: tensor of the same shape on the same device.
        empty: value where both are empty: ``"skip"`` -> NaN (reduce with
            :func:`torch.nanmean`), ``"zero"`` -> 0, ``"one"`` -> 1.

    Returns:
        float32 ``(N, C)`` on the inputs' device.
    """
    fill = EMPTY_RULES[check_option("empty", empty, EMPTY_RULES)]
    if pred.shape != target.shape or pred.ndim < 3:
        raise ValueError(
            f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must be equal (N, C, ...) shapes"
        )
    p = pred.reshape(pred.shape[0], pred.shape[1], -1).float()
    t = target.reshape(target.shape[0], target.shape[1], -1).float()
    total = p.sum(-1) + t.sum(-1)
    dice = 2.0 * (p * t).sum(-1) / total.clamp_min(1e-12)
    return torch.where(total > 0, dice, torch.full_like(dice, fill))


# ---------------------------------------------------------------- competition score
@dataclass(frozen=True)
class ScoreResult:
    """Result of :func:`competition_score`.

    Attributes:
        score: ``0.4 * dice + 0.6 * (1 - hausdorff)``.
        dice: nan-mean of the Dice over all (slice, class) pairs of all volumes.
        hausdorff: nan-mean of the normalised Hausdorff over all (case-day, class) volumes
            (``"per_class"``) or over case-days (``"union"``).
        table: one row per (case_day, class): ``n_slices``, ``n_scored`` (pairs not
            skipped), ``dice`` (nan-mean over the volume's slices), ``hausdorff`` (in union
            mode the case-day's union value on each class row) and ``score``.
        per_class: index ``class``; ``dice`` (nan-mean over that class's pairs),
            ``hausdorff`` (nan-mean over its volumes), ``score``.
        per_case_day: index ``case_day``; ``dice`` (nan-mean over its pairs), ``hausdorff``
            (nan-mean over its classes, or the union value), ``score``.
        slice_dice: ``case_day -> float64 (D, C)`` Dice of every (slice, class) pair.
    """

    score: float
    dice: float
    hausdorff: float
    table: pd.DataFrame = field(repr=False)
    per_class: pd.DataFrame = field(repr=False)
    per_case_day: pd.DataFrame = field(repr=False)
    slice_dice: dict[str, np.ndarray] = field(repr=False)

    def to_dict(self) -> dict[str, float]:
        """``{"score", "dice", "hausdorff"}`` as plain floats (for JSON)."""
        return {"score": self.score, "dice": self.dice, "hausdorff": self.hausdorff}


def _mix(dice, hausdorff):
    return DICE_WEIGHT * dice + HAUSDORFF_WEIGHT * (1.0 - hausdorff)


def _pair_volumes(pred, true) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Match predicted and true volumes by case_day (or position)."""
    pred, true = (list(x) if isinstance(x, np.ndarray) else x for x in (pred, true))
    if isinstance(pred, Mapping) and isinstance(true, Mapping):
        missing, extra = [k for k in true if k not in pred], [k for k in pred if k not in true]
        if missing or extra:
            raise ValueError(
                f"case_day keys differ: missing from pred {missing}, not in true {extra}"
            )
        pairs = [(str(k), pred[k], true[k]) for k in true]
    elif isinstance(pred, Sequence) and isinstance(true, Sequence) and not isinstance(pred, str):
        if len(pred) != len(true):
            raise ValueError(f"pred has {len(pred)} volumes, true has {len(true)}")
        pairs = [(f"volume_{i}", p, t) for i, (p, t) in enumerate(zip(pred, true, strict=True))]
    else:
        raise TypeError(
            f"pred and true must be two lists or two mappings keyed by case_day; "
            f"got {type(pred).__name__} and {type(true).__name__}"
        )
    return [(name, np.asarray(p), np.asarray(t)) for name, p, t in pairs]


def _volume_stats(p: np.ndarray, t: np.ndarray, fill: float, mode: str, method: str, device=None):
    """Per-slice Dice ``(D, C)`` and Hausdorff ``(C,)`` (or ``(1,)`` in union mode)."""
    if method == "reference":
        dice = np.array(
            [
                [dice_score(p[z, ..., c], t[z, ..., c], "skip") for c in range(p.shape[-1])]
                for z in range(len(p))
            ]
        )
        dice[np.isnan(dice)] = fill
        if mode in ("union", "mlebench"):
            pu, tu = p.any(-1), t.any(-1)
            if mode == "mlebench" and tu.sum() and pu.sum() > MLEBENCH_OVERSIZE * tu.sum():
                return dice, np.array([1.0])
            return dice, np.array([hausdorff_3d(pu, tu, "reference")])
        return dice, np.array(
            [hausdorff_3d(p[..., c], t[..., c], "reference") for c in range(p.shape[-1])]
        )
    union, fast = mode in ("union", "mlebench"), method == "fast"  # else "torch": on device
    ca, cb = voxel_coords(p, union), voxel_coords(t, union)
    stats = [
        pair_stats(a, b, p.shape[:3], fill, fast and not union)
        for a, b in zip(ca[:NUM_CLASSES], cb[:NUM_CLASSES], strict=True)
    ]
    dice = np.stack([s[0] for s in stats], 1)
    if not union:
        if fast:
            return dice, np.array([s[1] for s in stats])
        a, b = device_mask(p, device), device_mask(t, device)  # each volume copied to the device once
        return dice, np.array([hausdorff_torch(a[..., c], b[..., c]) for c in range(p.shape[-1])])
    n_pred, n_true = ca[-1].shape[1], cb[-1].shape[1]
    if mode == "mlebench" and n_true and n_pred > MLEBENCH_OVERSIZE * n_true:
        return dice, np.array([1.0])
    if not fast:
        return dice, np.array([hausdorff_torch(device_mask(p, device).any(-1), device_mask(t, device).any(-1))])
    return dice, np.array([pair_stats(ca[-1], cb[-1], p.shape[:3], fill)[1]])


def _reduce(table: pd.DataFrame, by: str) -> pd.DataFrame:
    weighted = (table["dice"].fillna(0.0) * table["n_scored"]).groupby(table[by], sort=False).sum()
    n = table.groupby(by, sort=False)["n_scored"].sum()
    out = pd.DataFrame({"dice": (weighted / n.where(n > 0)).astype(float)})
    out["hausdorff"] = table.groupby(by, sort=False)["hausdorff"].agg(_nanmean)
    out["score"] = _mix(out["dice"], out["hausdorff"])
    return out


def competition_score(
    pred, true, *, empty: str = "skip", hausdorff_mode: str = "per_class", method: str = "fast", device=None
) -> ScoreResult:
    """Competition score of predicted against true volumes.

    Reductions: ``dice`` is the nan-mean over all (slice, class) pairs of all volumes
    (pairs with both slices empty are NaN and left out under ``empty="skip"``); ``hausdorff``
    is the nan-mean over all (case-day, class) volumes (both empty: left out; exactly one
    empty: 1), or over case-days of the OR of the classes with ``hausdorff_mode="union"``;
    ``score = 0.4 * dice + 0.6 * (1 - hausdorff)``. It is NaN when everything is empty in
    both. The per-case-day scores are not averaged into ``score``.

    Args:
        pred: list of bool ``(D, H, W, 3)`` volumes (classes in :data:`CLASSES` order), or a
            mapping ``case_day -> volume``.
        true: same kind as ``pred``: a list in the same order, or a mapping with the same
            keys (the table follows its order).
        empty: rule for Dice pairs where both are empty: ``"skip"``, ``"zero"``, ``"one"``.
        hausdorff_mode: ``"per_class"`` (default), ``"union"`` or ``"mlebench"`` (see
            :data:`HAUSDORFF_MODES`).
        method: ``"fast"``, ``"reference"`` (brute force; slow, for checks) or ``"torch"``
            (the exact Hausdorff in torch on ``device``: default the CPU).

    Returns:
        :class:`ScoreResult`.

    Raises:
        ValueError: a bad option, different key sets or lengths, or a volume whose shapes
            differ or are not ``(D, H, W, 3)`` (the message names the case_day).
        TypeError: ``pred`` and ``true`` are not both lists or both mappings.
    """
    acc = ScoreAccumulator(empty=empty, hausdorff_mode=hausdorff_mode, method=method, device=device)
    for name, p, t in _pair_volumes(pred, true):
        acc.add(name, p, t)
    return acc.result()


class ScoreAccumulator:
    """:func:`competition_score` one volume at a time, so a validation set never has to be
    in memory at once: ``add(case_day, pred, true)`` for each volume, then ``result()``.

    Only the per-slice Dice ``(D, C)`` and the Hausdorff values of each volume are kept.
    ``device``: where ``method="torch"`` computes the Hausdorff.
    """

    def __init__(
        self, *, empty: str = "skip", hausdorff_mode: str = "per_class", method: str = "fast", device=None
    ) -> None:
        self.fill = EMPTY_RULES[check_option("empty", empty, EMPTY_RULES)]
        self.mode = check_option("hausdorff_mode", hausdorff_mode, HAUSDORFF_MODES)
        self.method, self.device = check_option("method", method, METHODS), device
        self.rows: list[dict] = []
        self.slice_dice: dict[str, np.ndarray] = {}
        self.volume_hd: list[float] = []

    def add(self, name: str, pred: np.ndarray, true: np.ndarray) -> None:
        """Score one case-day: bool ``(D, H, W, 3)`` prediction and truth."""
        pred, true = (np.ascontiguousarray(x).astype(bool, copy=False) for x in (pred, true))
        if pred.shape != true.shape or pred.ndim != 4 or pred.shape[-1] != NUM_CLASSES:
            raise ValueError(
                f"case_day {name!r}: pred {pred.shape} and true {true.shape} must be equal "
                f"(D, H, W, {NUM_CLASSES}) shapes"
            )
        dice, hd = _volume_stats(pred, true, self.fill, self.mode, self.method, self.device)
        self.slice_dice[name] = dice
        self.volume_hd.extend(hd)
        for c, cls in enumerate(CLASSES):
            scored = ~np.isnan(dice[:, c])
            self.rows.append(
                {
                    "case_day": name,
                    "class": cls,
                    "n_slices": len(dice),
                    "n_scored": int(scored.sum()),
                    "dice": float(dice[scored, c].mean()) if scored.any() else math.nan,
                    "hausdorff": float(hd[0] if len(hd) == 1 else hd[c]),
                }
            )

    def result(self) -> ScoreResult:
        """The :class:`ScoreResult` of every volume added so far."""
        table = pd.DataFrame(
            self.rows, columns=["case_day", "class", "n_slices", "n_scored", "dice", "hausdorff"]
        )
        table["score"] = _mix(table["dice"], table["hausdorff"])
        values = [d.ravel() for d in self.slice_dice.values()]
        dice_all = _nanmean(np.concatenate(values)) if values else math.nan
        hd_all = _nanmean(self.volume_hd)
        return ScoreResult(
            score=float(_mix(dice_all, hd_all)),
            dice=dice_all,
            hausdorff=hd_all,
            table=table,
            per_class=_reduce(table, "class"),
            per_case_day=_reduce(table, "case_day"),
            slice_dice=dict(self.slice_dice),
        )


@dataclass(frozen=True)
class CompetitionMetric:
    """Settings of :func:`competition_score`; calling it scores ``(pred, true)``."""

    empty: str = "skip"
    hausdorff_mode: str = "per_class"
    method: str = "fast"

    def __post_init__(self) -> None:
        check_option("empty", self.empty, EMPTY_RULES)
        check_option("hausdorff_mode", self.hausdorff_mode, HAUSDORFF_MODES)
        check_option("method", self.method, METHODS)

    def __call__(self, pred, true) -> ScoreResult:
        return competition_score(
            pred, true, empty=self.empty, hausdorff_mode=self.hausdorff_mode, method=self.method
        )


def volumes_from_slices(
    masks, case_days: Sequence[str], *, channels_first: bool = True, threshold: float = 0.5
) -> dict[str, np.ndarray]:
    """Group per-slice masks into per-case_day volumes for :func:`competition_score`.

    Args:
        masks: ``(N, C, H, W)`` (or ``(N, H, W, C)`` with ``channels_first=False``) array or
            tensor; bool/0-1, or probabilities (float) thresholded at ``threshold``.
        case_days: ``N`` case_day names; slices of one case_day in slice order (as in
            ``SliceDataset.meta``), not necessarily contiguous.
        channels_first: layout of ``masks``.
        threshold: foreground is ``value > threshold`` for floating inputs.

    Returns:
        ``case_day -> bool (D, H, W, C)``, in order of first appearance.
    """
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    masks = np.asarray(masks)
    if len(masks) != len(case_days):
        raise ValueError(f"{len(masks)} masks but {len(case_days)} case_days")
    masks = masks > threshold if np.issubdtype(masks.dtype, np.floating) else masks.astype(bool)
    if channels_first:
        masks = np.moveaxis(masks, 1, -1)
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(case_days):
        groups.setdefault(str(name), []).append(i)
    return {name: np.ascontiguousarray(masks[idx]) for name, idx in groups.items()}
