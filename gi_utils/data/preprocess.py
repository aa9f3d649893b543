"""Pixel preprocessing shared by training and inference.

One source of truth: :func:`preprocess_volume` (normalise + resize/pad) is what the
dataset cache stores and what inference feeds the model, and :func:`restore_size` maps a
prediction back to the scan's own (H, W).

Normalisation (version :data:`NORM_VERSION`), per scan, not per slice, so that the 2.5D
neighbours of a slice keep their relative brightness:

1. ``hi`` = the :data:`CLIP_PERCENTILE`-th percentile of all voxels of the scan
   (exact, "inverted CDF" definition: the smallest value with at least that fraction of
   voxels at or below it), computed from a histogram of the 16-bit values;
2. ``x = min(v, hi) / hi`` as float32, so the scan maps onto [0, 1] with its brightest
   0.5 % saturated (an all-zero scan stays zero);
3. resize each slice to (S, S) -- ``cv2.INTER_AREA`` when shrinking both axes,
   ``cv2.INTER_LINEAR`` otherwise -- or, in ``"pad"`` mode, pad it centred with zeros,
   or, in ``"crop"`` mode, cut it to the scan's body box
   (:func:`~gi_utils.data.body_crop.body_box`) and resize that;
4. round to float16 (the storage dtype of the cache). The float32 arrays returned here
   hold exactly float16-representable values, so cached and uncached samples are
   bit-identical; float16 keeps ~3 significant digits, finer than the scanner's levels
   over [0, 1].

Masks are resized with nearest neighbour (``cv2.INTER_NEAREST_EXACT``, aligned with the
pixel centres like the linear image resize) and padded with background
(:mod:`gi_utils.data.masks`).
"""

from __future__ import annotations

import cv2
import numpy as np

from gi_utils.data.body_crop import Box, body_box, check_box

__all__ = [
    "NORM_VERSION",
    "CLIP_PERCENTILE",
    "RESIZE_MODES",
    "check_mode",
    "intensity_clip",
    "normalize_volume",
    "fit_slice",
    "preprocess_slice",
    "preprocess_volume",
    "preprocess_volume_f16",
    "restore_size",
    "scan_box",
]

#: Bump when the normalisation or resize changes: it is part of the cache key.
NORM_VERSION: int = 1
#: Percentile of a scan's voxels that maps to 1.0.
CLIP_PERCENTILE: float = 99.5
#: ``"resize"`` (default) stretches each slice to (S, S); ``"pad"`` pads it centred;
#: ``"crop"`` cuts it to the scan's body box, then stretches that.
RESIZE_MODES: tuple[str, ...] = ("resize", "pad", "crop")


def intensity_clip(vol: np.ndarray, percentile: float = CLIP_PERCENTILE) -> float:
    """The value of a scan that maps to 1.0: its ``percentile``-th percentile.

    Args:
        vol: uint16 (D, H, W) (any shape of non-negative integers works).
        percentile: in (0, 100].

    Returns:
        The percentile as a float (0.0 for an all-zero scan).
    """
    if vol.size == 0:
        raise ValueError("intensity_clip: empty volume")
    if not np.issubdtype(vol.dtype, np.unsignedinteger):
        raise ValueError(f"intensity_clip: expected unsigned integer data, got {vol.dtype}")
    counts = np.bincount(vol.ravel())
    cdf = np.cumsum(counts)
    rank = int(np.ceil(percentile / 100.0 * vol.size))
    return float(np.searchsorted(cdf, max(rank, 1)))


def _apply_clip(arr: np.ndarray, hi: float) -> np.ndarray:
    """``min(arr, hi) / hi`` as float32 (elementwise, so slice-wise == volume-wise)."""
    if hi <= 0:
        return np.zeros(arr.shape, np.float32)
    out = np.minimum(arr, hi).astype(np.float32)
    out /= np.float32(hi)
    return out


def normalize_volume(vol: np.ndarray, hi: float | None = None) -> np.ndarray:
    """Per-scan intensity normalisation (steps 1-2 of the module docstring).

    Args:
        vol: uint16 (D, H, W), one whole scan.
        hi: the clip value; default :func:`intensity_clip` of ``vol``.

    Returns:
        float32 (D, H, W) in [0, 1].
    """
    return _apply_clip(vol, intensity_clip(vol) if hi is None else hi)


def check_mode(mode: str) -> None:
    """``ValueError`` unless ``mode`` is one of :data:`RESIZE_MODES`."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; expected one of {list(RESIZE_MODES)}")


def _pad_offsets(h: int, w: int, size: int) -> tuple[int, int]:
    if h > size or w > size:
        raise ValueError(
            f"pad mode: slice (H, W) = ({h}, {w}) is larger than img_size={size}; "
            f"use img_size >= {max(h, w)} or mode='resize'"
        )
    return (size - h) // 2, (size - w) // 2


def scan_box(vol: np.ndarray, mode: str, hi: float | None = None) -> Box | None:
    """The body box of a scan in ``"crop"`` mode (``hi``: its clip value, computed when not
    given), ``None`` in the others."""
    if mode != "crop":
        return None
    return body_box(vol, intensity_clip(vol) if hi is None else hi)


def fit_slice(img: np.ndarray, size: int, mode: str, interp: int, box: Box | None = None) -> np.ndarray:
    """Resize (with ``interp``) or centre-pad one (H, W) or (H, W, C) array to (size, size[, C]);
    in ``"crop"`` mode its ``box`` (the scan's body box) is cut out first."""
    h, w = img.shape[:2]
    if mode == "crop":
        top, bottom, left, right = check_box(box, h, w)
        img, h, w = img[top:bottom, left:right], bottom - top, right - left
    if mode == "pad":
        top, left = _pad_offsets(h, w, size)
        out = np.zeros((size, size, *img.shape[2:]), img.dtype)
        out[top : top + h, left : left + w] = img
        return out
    if (h, w) == (size, size):
        return img.copy()
    return cv2.resize(img, (size, size), interpolation=interp)


def _image_interp(h: int, w: int, size: int) -> int:
    return cv2.INTER_AREA if h >= size and w >= size else cv2.INTER_LINEAR


def preprocess_slice(img: np.ndarray, img_size: int, hi: float, mode: str = "resize",
                     box: Box | None = None) -> np.ndarray:  # fmt: skip
    """Normalise one uint16 (H, W) slice with its scan's clip ``hi`` and fit it (``box``:
    its scan's body box, ``"crop"`` mode).

    Returns:
        float16 (S, S); identical to the matching slice of :func:`preprocess_volume`.
    """
    check_mode(mode)
    h, w = img.shape
    if mode == "crop":
        top, bottom, left, right = check_box(box, h, w)
        h, w = bottom - top, right - left
    out = fit_slice(_apply_clip(img, hi), img_size, mode, _image_interp(h, w, img_size), box)
    return out.astype(np.float16)


def preprocess_volume(
    vol: np.ndarray, img_size: int, mode: str = "resize", hi: float | None = None, box: Box | None = None
) -> np.ndarray:
    """Normalise a whole scan and resize (or pad) every slice to (S, S).

    Args:
        vol: uint16 (D, H, W).
        img_size: S.
        mode: ``"resize"``, ``"pad"`` (centred zero padding; needs S >= H, W) or
            ``"crop"`` (the body box, then resized).
        hi: clip value; default :func:`intensity_clip` of ``vol``.
        box: ``"crop"`` mode: the body box; default :func:`scan_box` of ``vol``.

    Returns:
        float32 (D, S, S) in [0, 1], values rounded to float16 precision.
    """
    return preprocess_volume_f16(vol, img_size, mode, hi, box).astype(np.float32)


def preprocess_volume_f16(
    vol: np.ndarray, img_size: int, mode: str = "resize", hi: float | None = None, box: Box | None = None
) -> np.ndarray:
    """:func:`preprocess_volume` in the cache's storage dtype, float16 (D, S, S)."""
    if vol.ndim != 3:
        raise ValueError(f"preprocess_volume: expected (D, H, W), got shape {vol.shape}")
    hi = intensity_clip(vol) if hi is None else hi
    box = scan_box(vol, mode, hi) if box is None else box
    out = np.empty((vol.shape[0], img_size, img_size), np.float16)
    for d in range(vol.shape[0]):  # slice by slice: the same code path as preprocess_slice
        out[d] = preprocess_slice(vol[d], img_size, hi, mode, box)
    return out


def restore_size(arr: np.ndarray, size_hw: tuple[int, int], mode: str = "resize",
                 box: Box | None = None) -> np.ndarray:  # fmt: skip
    """Map a prediction at (S, S) back to the scan's (H, W): the inverse of the fit step.

    Args:
        arr: (D, S, S) or (D, S, S, C). Bool or integer arrays (masks) are resized with
            nearest neighbour; float arrays (probabilities, logits) linearly.
        size_hw: the scan's (H, W).
        mode: the mode the input was made with; ``"pad"`` crops the centred window,
            ``"crop"`` resizes to ``box`` and puts it in place, zeros outside.
        box: ``"crop"`` mode: the scan's body box (:func:`scan_box`).

    Returns:
        (D, H, W) or (D, H, W, C), same dtype as ``arr``.
    """
    check_mode(mode)
    if arr.ndim not in (3, 4) or arr.shape[1] != arr.shape[2]:
        raise ValueError(f"restore_size: expected (D, S, S) or (D, S, S, C), got {arr.shape}")
    h, w = (int(v) for v in size_hw)
    size = arr.shape[1]
    if mode == "crop":
        top, bottom, left, right = check_box(box, h, w)
        out = np.zeros((arr.shape[0], h, w, *arr.shape[3:]), arr.dtype)
        out[:, top:bottom, left:right] = restore_size(arr, (bottom - top, right - left), "resize")
        return out
    if mode == "pad":
        top, left = _pad_offsets(h, w, size)
        return arr[:, top : top + h, left : left + w].copy()
    is_float = np.issubdtype(arr.dtype, np.floating)
    interp = cv2.INTER_LINEAR if is_float else cv2.INTER_NEAREST_EXACT
    work = arr if arr.dtype != bool else arr.view(np.uint8)
    if work.dtype == np.float16:
        work = work.astype(np.float32)
    out = np.empty((arr.shape[0], h, w, *arr.shape[3:]), work.dtype)
    for d in range(arr.shape[0]):
        r = cv2.resize(work[d], (w, h), interpolation=interp)
        out[d] = r.reshape(out.shape[1:])  # cv2 drops a trailing channel axis of size 1
    return out.astype(arr.dtype, copy=False)
