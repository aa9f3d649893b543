"""3-D Hausdorff distance of the competition metric, exact and fast.

Voxel ``(z, y, x)`` of a ``(D, H, W)`` volume becomes the point ``(z / D, y / H, x / W)``
of the unit cube (depth 1 per slice) and the symmetric Hausdorff distance between the two
point sets is divided by ``sqrt(3)``, so it lies in ``[0, 1)``. Both empty: NaN; exactly
one empty: 1. :mod:`gi_utils.evaluation.metric` mixes it with the Dice into the competition score.

The fast Hausdorff is exact. Only voxels of ``A \\ B`` are at a positive distance from
``B``, and the voxel of ``B`` nearest to a point outside ``B`` is a *boundary* voxel of
``B`` (one with a face neighbour outside ``B``; otherwise one step towards the point along
an axis where they differ stays in ``B`` and is closer). So ``h(A, B)`` is the largest
distance from a voxel of ``A \\ B`` to a k-d tree of the boundary of ``B``, all within the
bounding box of ``A | B``. Interior voxels of ``A`` stay candidates (a blob inside a
hollow shell is farthest from it at its centre); blocks of 4^3, then 2^3 voxels are
dropped only when the 1-Lipschitz bound proves they cannot hold the maximum.
``method="reference"`` is the brute force (:func:`scipy.spatial.distance.directed_hausdorff`
on all foreground voxels), kept for tests and the benchmark. ``method="torch"``
(:func:`hausdorff_torch`) is the same exact distance computed in torch on a device (the
GPU during validation, :mod:`gi_utils.evaluation.device_hausdorff`), equal to the k-d
tree's to rounding.

The voxel-coordinate helpers here (:func:`voxel_coords`, :func:`pair_stats`) also
give the per-slice Dice of a volume pair in the same pass; :mod:`gi_utils.evaluation.metric`
uses them for its fast Dice.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.spatial.distance import directed_hausdorff

from gi_utils.evaluation.device_hausdorff import device_mask, max_sq_distance

__all__ = ["METHODS", "check_option", "voxel_coords", "pair_stats", "hausdorff_3d", "hausdorff_torch",
           "HausdorffPoint", "hausdorff_point"]

#: ``"fast"``: exact boundary k-d tree; ``"reference"``: brute force; ``"torch"``: exact,
#: brute force over the boundary in torch on a device (:func:`hausdorff_torch`).
METHODS: tuple[str, ...] = ("fast", "reference", "torch")
_SQRT3 = math.sqrt(3.0)
_BLOCKS = (4, 2)  # edges of the pruning blocks, in voxels, coarse to fine
_PRUNE_MIN = 512  # below this many query voxels, query them all
_SAMPLE = 256  # query voxels sampled for a first lower bound


def check_option(name: str, value: str, valid) -> str:
    """``value`` if it is one of ``valid``; else a ValueError naming the option."""
    if value not in valid:
        raise ValueError(f"{name}={value!r}; expected one of {sorted(valid)}")
    return value


# ---------------------------------------------------------------- voxel geometry
def _unravel(flat: np.ndarray, shape) -> np.ndarray:
    """``(3, n)`` int64 coordinates of C-order flat indices into a ``(D, H, W)`` array."""
    z, rest = np.divmod(flat, shape[1] * shape[2])
    return np.stack([z, *np.divmod(rest, shape[2])])


def voxel_coords(vol: np.ndarray, union: bool = False) -> list[np.ndarray]:
    """Foreground voxel coordinates ``(3, n)`` of each channel of a ``(D, H, W, C)`` volume
    (one pass over it), plus those of the OR of the channels last when ``union``."""
    flat, start = vol, 0
    if vol.flags.c_contiguous:  # skip the empty slices at both ends
        rows = np.flatnonzero(vol.reshape(len(vol), -1).any(axis=1))
        flat, start = (
            (vol[rows[0] : rows[-1] + 1], rows[0] * vol[0].size) if rows.size else (vol[:0], 0)
        )
    vox, cls = np.divmod(np.flatnonzero(flat) + start, vol.shape[-1])
    parts = [vox[cls == k] for k in range(vol.shape[-1])]
    if union:
        parts.append(vox[np.r_[True, vox[1:] != vox[:-1]]] if vox.size else vox)
    return [_unravel(v, vol.shape) for v in parts]


def _dense(coords: np.ndarray, shape) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    out[tuple(coords)] = True
    return out


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Coordinates of the voxels of ``mask`` with a face neighbour outside it.

    Outside the array counts as inside the mask. That is exact here: every query voxel
    lies inside the array, so the step towards it never leaves the array.
    """
    p = np.pad(mask, 1, constant_values=True)
    inner = p[:-2, 1:-1, 1:-1] & p[2:, 1:-1, 1:-1] & p[1:-1, :-2, 1:-1]
    inner &= p[1:-1, 2:, 1:-1] & p[1:-1, 1:-1, :-2] & p[1:-1, 1:-1, 2:]
    return _unravel(np.flatnonzero(mask & ~inner), mask.shape)


def _prune(pts: np.ndarray, tree: cKDTree, k: int, origin, size, low: float):
    """Keep the voxels ``pts`` (local coordinates) whose k^3 block may hold the maximum.

    ``d(., B)`` is 1-Lipschitz, so the voxels of a block whose centre is at ``d_c`` lie
    within ``[d_c - r, d_c + r]`` (``r``: half-diagonal) and every non-empty block proves
    the maximum ``>= d_c - r``. Blocks with ``d_c + r`` below the best such lower bound
    are dropped (with a 1e-12 margin for rounding). Returns the kept voxels and the bound.
    """
    block = pts >> k.bit_length() - 1  # k is a power of 2
    grid = block.max(axis=1) + 1
    flat = np.ravel_multi_index(tuple(block), grid)
    occupied = np.zeros(int(np.prod(grid)), dtype=bool)
    occupied[flat] = True
    ids = np.flatnonzero(occupied)
    half = (k - 1) / 2
    d_c, _ = tree.query((_unravel(ids, grid).T * k + half + origin) / size)
    radius = math.sqrt(float(np.sum((half / size) ** 2)))
    low = max(low, float(d_c.max()) - radius)
    upper = np.empty(occupied.shape)
    upper[ids] = d_c + radius
    return pts.compress(upper[flat] >= low - 1e-12, axis=1), low


def _directed(pts: np.ndarray, target: np.ndarray, origin, size, low: float = 0.0) -> float:
    """``max(low, largest distance from the voxels pts to the mask target)``.

    ``pts``: ``(3, n)`` voxels outside ``target``, in the coordinates of the crop
    ``target`` (non-empty) whose corner is voxel ``origin`` of a volume of ``size``;
    distances are in unit-cube coordinates.
    """
    if pts.shape[1] == 0:
        return low
    tree = cKDTree((_boundary(target).T + origin) / size, balanced_tree=False, compact_nodes=False)
    if pts.shape[1] >= _PRUNE_MIN:  # a lower bound from a sample sharpens the pruning
        dist, _ = tree.query((pts[:, :: max(1, pts.shape[1] // _SAMPLE)].T + origin) / size)
        low = max(low, float(dist.max()))
    for k in _BLOCKS:
        if pts.shape[1] < _PRUNE_MIN:
            break
        pts, low = _prune(pts, tree, k, origin, size, low)
    dist, _ = tree.query((pts.T + origin) / size)
    if dist.size == 0:
        return low
    return max(low, float(dist.max()))


def pair_stats(
    ca: np.ndarray, cb: np.ndarray, shape, fill: float, with_hd: bool = True
) -> tuple[np.ndarray, float]:
    """Per-slice Dice ``(D,)`` and normalised Hausdorff of one volume pair given as voxel
    coordinates ``(3, n)``, computed inside their joint bounding box."""
    na, nb = ca.shape[1], cb.shape[1]
    if na == 0 and nb == 0:
        return np.full(shape[0], fill), math.nan
    both = np.concatenate([ca, cb], axis=1)
    lo, hi = both.min(axis=1), both.max(axis=1) + 1
    la, lb = ca - lo[:, None], cb - lo[:, None]
    a, b = _dense(la, hi - lo), _dense(lb, hi - lo)
    a_in_b = b[tuple(la)]
    total = np.bincount(ca[0], minlength=shape[0]) + np.bincount(cb[0], minlength=shape[0])
    inter = np.bincount(ca[0].compress(a_in_b), minlength=shape[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(total > 0, 2.0 * inter / total, fill)
    if not with_hd:
        return dice, math.nan
    if na == 0 or nb == 0:
        return dice, 1.0
    size = np.asarray(shape, dtype=np.float64)
    h = _directed(la.compress(~a_in_b, axis=1), b, lo, size)
    h = _directed(lb.compress(~a[tuple(lb)], axis=1), a, lo, size, low=h)
    return dice, h / _SQRT3


def hausdorff_3d(
    pred: np.ndarray, true: np.ndarray, method: str = "fast", device: torch.device | str | None = None
) -> float:
    """Normalised symmetric 3-D Hausdorff distance between two ``(D, H, W)`` masks.

    Voxel ``(z, y, x)`` is mapped to ``(z / D, y / H, x / W)``; the symmetric Hausdorff
    distance between the two point sets is divided by ``sqrt(3)``.

    Args:
        pred: bool ``(D, H, W)`` (nonzero = foreground).
        true: mask of the same shape.
        method: ``"fast"`` (exact, boundary k-d tree) or ``"reference"`` (brute force
            :func:`scipy.spatial.distance.directed_hausdorff` on all foreground voxels) or
            ``"torch"`` (exact, :func:`hausdorff_torch` on ``device``).
        device: where ``method="torch"`` computes (default: the CPU).

    Returns:
        Distance in ``[0, 1)``; NaN when both masks are empty; 1.0 when exactly one is.
    """
    check_option("method", method, METHODS)
    pred, true = (np.asarray(x).astype(bool, copy=False) for x in (pred, true))
    if pred.shape != true.shape or pred.ndim != 3:
        raise ValueError(f"pred {pred.shape} and true {true.shape} must be equal (D, H, W) shapes")
    if method == "torch":
        return hausdorff_torch(pred, true, device)
    if method == "fast":
        (ca,), (cb,) = voxel_coords(pred[..., None]), voxel_coords(true[..., None])
        return pair_stats(ca, cb, pred.shape, math.nan)[1]
    shape = np.array(pred.shape, dtype=np.float64)
    a, b = np.argwhere(pred) / shape, np.argwhere(true) / shape
    if len(a) == 0 or len(b) == 0:
        return math.nan if len(a) == len(b) else 1.0
    return max(directed_hausdorff(a, b)[0], directed_hausdorff(b, a)[0]) / _SQRT3


def hausdorff_torch(pred, true, device: torch.device | str | None = None) -> float:
    """:func:`hausdorff_3d` of two ``(D, H, W)`` masks (arrays or tensors) computed in torch
    on ``device`` (default: where ``pred`` is), exact
    (:func:`~gi_utils.evaluation.device_hausdorff.max_sq_distance`); NaN when both are empty,
    1.0 when exactly one is."""
    a = device_mask(pred, device)
    b = device_mask(true, a.device)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"pred {tuple(a.shape)} and true {tuple(b.shape)} must be equal (D, H, W) shapes")
    na, nb = int(a.any()), int(b.any())
    if not (na and nb):
        return math.nan if na == nb else 1.0
    sq, scale = max_sq_distance(a, b)
    return math.sqrt(sq) / scale / _SQRT3


class HausdorffPoint(NamedTuple):
    """Where the Hausdorff distance of a volume pair is set.

    ``voxel`` (z, y, x) is the farthest point: a predicted voxel far from the truth
    (``side="pred"``, a false positive) or a true voxel far from the prediction
    (``side="true"``, a miss); ``nearest`` is the closest voxel of the other mask (None
    when that mask is empty: distance 1, ``voxel`` is then the first slice's voxel of the
    mask that is there). ``distance`` is normalised as in :func:`hausdorff_3d`.
    """

    distance: float
    voxel: tuple[int, int, int] | None
    side: str
    nearest: tuple[int, int, int] | None


def hausdorff_point(pred: np.ndarray, true: np.ndarray) -> HausdorffPoint:
    """The distance of :func:`hausdorff_3d` and the voxel that sets it (exact; slower
    than the distance alone: every voxel outside the other mask is queried)."""
    pred, true = (np.asarray(x).astype(bool, copy=False) for x in (pred, true))
    if pred.shape != true.shape or pred.ndim != 3:
        raise ValueError(f"pred {pred.shape} and true {true.shape} must be equal (D, H, W) shapes")
    a, b = np.argwhere(pred), np.argwhere(true)
    if len(a) == 0 and len(b) == 0:
        return HausdorffPoint(math.nan, None, "", None)
    if len(a) == 0 or len(b) == 0:
        first = (a if len(a) else b)[0]
        return HausdorffPoint(1.0, tuple(int(v) for v in first), "pred" if len(a) else "true", None)
    size = np.asarray(pred.shape, dtype=np.float64)
    best = HausdorffPoint(0.0, tuple(int(v) for v in a[0]), "pred", tuple(int(v) for v in a[0]))
    for side, src, dst_mask in (("pred", pred & ~true, true), ("true", true & ~pred, pred)):
        pts = np.argwhere(src)
        if not len(pts):
            continue
        bound = _boundary(dst_mask).T
        dist, idx = cKDTree(bound / size).query(pts / size)
        k = int(np.argmax(dist))
        if dist[k] / _SQRT3 > best.distance:
            best = HausdorffPoint(float(dist[k]) / _SQRT3, tuple(int(v) for v in pts[k]), side,
                                  tuple(int(v) for v in bound[idx[k]]))  # fmt: skip
    return best
