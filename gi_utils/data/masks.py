"""Masks as bits: class c of a pixel is bit c of one uint8, in numpy or torch alike.

The cache, the loaders, validation and the out-of-fold files keep masks packed (3x fewer
bytes than one bool per class); :func:`pack_masks` and :func:`unpack_masks` are the one
place that knows the layout. ``axis`` is where the class axis is (or goes): ``-1`` for the
metric's (D, H, W, 3), ``1`` for a batch (N, 3, S, S), ``0`` for one sample (3, S, S).
"""

from __future__ import annotations

import functools
from typing import TypeVar

import cv2
import numpy as np
import torch

from gi_utils.constants import NUM_CLASSES
from gi_utils.data.body_crop import Box
from gi_utils.data.preprocess import check_mode, fit_slice

__all__ = ["PACK_BITS", "pack_masks", "unpack_masks", "fit_packed_mask", "preprocess_mask"]

#: Bit of each class, in :data:`~gi_utils.constants.CLASSES` order.
PACK_BITS: tuple[int, ...] = tuple(1 << c for c in range(NUM_CLASSES))

Array = TypeVar("Array", np.ndarray, torch.Tensor)


@functools.cache
def _torch_bits(device: torch.device) -> torch.Tensor:
    """:data:`PACK_BITS` as uint8 on ``device``, made once per device (a tensor built from
    host values each call is a copy the host waits for on a GPU)."""
    return torch.tensor(PACK_BITS, dtype=torch.uint8, device=device)


def _bits(like: Array, ndim: int, axis: int) -> Array:
    shape = [1] * ndim
    shape[axis] = NUM_CLASSES
    if isinstance(like, torch.Tensor):
        return _torch_bits(like.device).reshape(shape)
    return np.asarray(PACK_BITS, dtype=np.uint8).reshape(shape)


def pack_masks(mask: Array, axis: int = -1) -> Array:
    """bool/0-1 masks with the classes along ``axis`` -> uint8 without that axis, bit c = class c.

    Works on numpy arrays and torch tensors (on their device).
    """
    if mask.shape[axis] != NUM_CLASSES:
        raise ValueError(
            f"pack_masks: axis {axis} must hold the {NUM_CLASSES} classes, got shape {tuple(mask.shape)}"
        )
    bits = _bits(mask, mask.ndim, axis)
    if isinstance(mask, torch.Tensor):
        return (mask.to(torch.uint8) * bits).sum(axis, dtype=torch.uint8)
    return (np.asarray(mask).astype(np.uint8) * bits).sum(axis=axis, dtype=np.uint8)


def unpack_masks(packed: Array, axis: int = -1) -> Array:
    """uint8 packed masks -> bool with a class axis inserted at ``axis`` (numpy or torch)."""
    ndim = packed.ndim + 1
    axis = axis % ndim
    if isinstance(packed, torch.Tensor):
        return (packed.unsqueeze(axis) & _bits(packed, ndim, axis)) != 0
    return (np.expand_dims(np.asarray(packed), axis) & _bits(packed, ndim, axis)) != 0


def fit_packed_mask(packed: np.ndarray, img_size: int, mode: str, box: Box | None = None) -> np.ndarray:
    """Fit one packed uint8 (H, W) mask to (S, S) with nearest neighbour (or centre padding;
    ``"crop"`` mode: cut to its scan's body ``box`` first)."""
    return fit_slice(packed, img_size, mode, cv2.INTER_NEAREST_EXACT, box)


def preprocess_mask(mask: np.ndarray, img_size: int, mode: str = "resize", box: Box | None = None) -> np.ndarray:
    """Fit a scan's masks to (S, S) with nearest neighbour.

    Args:
        mask: bool (D, H, W, 3) as :func:`gi_utils.data.images.read_volume_mask` returns.
        box: ``"crop"`` mode: the scan's body box.

    Returns:
        bool (D, 3, S, S), channels in :data:`~gi_utils.constants.CLASSES` order.
    """
    check_mode(mode)
    packed = pack_masks(mask)
    return unpack_masks(np.stack([fit_packed_mask(p, img_size, mode, box) for p in packed]), axis=1)
