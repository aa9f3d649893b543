"""Pixels: slice PNGs read at full bit depth, the masks of a slice, whole scans.

PNGs are 16-bit grayscale and read with ``cv2.IMREAD_UNCHANGED``; nothing is skipped
silently: an image that does not decode or is not what its name says raises an
:class:`~gi_utils.data.errors.ImageReadError` naming the path.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from gi_utils.constants import CLASSES
from gi_utils.data.errors import DataError, ImageReadError
from gi_utils.data.names import FILENAME_RE, parse_slice_filename
from gi_utils.data.rle import RLEError, decode_rle

__all__ = ["PNG_SIGNATURE", "read_image", "slice_mask", "iter_volumes", "read_volume", "read_volume_mask"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_image(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a slice PNG as uint16 (H, W) without losing bit depth.

    8-bit grayscale files are accepted with a warning and widened to uint16 (values
    unchanged); colour images are rejected.

    Args:
        path: the PNG.
        shape: expected (H, W); by default taken from the file name when it follows the
            competition's naming.

    Raises:
        ImageReadError: the file is missing, is not a PNG, does not decode (truncated),
            has colour channels, or its size differs from ``shape`` / its file name. The
            message names the path.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image not found: {path}")
    data = np.fromfile(path, dtype=np.uint8)
    if data[: len(PNG_SIGNATURE)].tobytes() != PNG_SIGNATURE:
        raise ImageReadError(f"image {path} is not a PNG file (no PNG signature at its start)")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageReadError(f"image does not decode (not a PNG or truncated): {path}")
    if img.ndim != 2:
        raise ImageReadError(
            f"image {path} has shape {img.shape}; expected 16-bit grayscale (H, W)"
        )
    if img.dtype == np.uint8:
        warnings.warn(f"image {path} is 8-bit; expected 16-bit, widening to uint16", stacklevel=2)
        img = img.astype(np.uint16)
    elif img.dtype != np.uint16:
        raise ImageReadError(f"image {path} has dtype {img.dtype}; expected uint16")
    if shape is None and FILENAME_RE.match(path.name):
        info = parse_slice_filename(path.name)
        shape = (int(info["height"]), int(info["width"]))
    if shape is not None and img.shape != tuple(shape):
        raise ImageReadError(
            f"image {path} has shape (H, W) = {img.shape}; its name says {tuple(shape)}"
        )
    return img


def slice_mask(row: pd.Series | dict) -> np.ndarray:
    """Decode the three class masks of one metadata row into a bool array (H, W, 3).

    Raises:
        DataError: a mask string is malformed; the message names the id and class.
    """
    shape = (int(row["height"]), int(row["width"]))
    out = np.zeros((*shape, len(CLASSES)), dtype=bool)
    for c, name in enumerate(CLASSES):
        try:
            out[..., c] = decode_rle(row[name], shape)
        except RLEError as err:
            raise DataError(f"bad mask for id {row['id']!r}, class {name!r}: {err}") from err
    return out


def iter_volumes(meta: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
    """Yield ``(case_day, rows)`` per scan, rows in slice order, scans in case/day order."""
    order = meta.sort_values(["case", "day", "slice"], kind="stable")
    for case_day, rows in order.groupby("case_day", sort=False):
        yield str(case_day), rows


def read_volume(rows: pd.DataFrame) -> np.ndarray:
    """Stack the slices of one scan (rows of :func:`iter_volumes`) into uint16 (D, H, W)."""
    rows = rows.sort_values("slice")
    return np.stack([read_image(p, (h, w)) for p, h, w in zip(rows["path"], rows["height"], rows["width"])])


def read_volume_mask(rows: pd.DataFrame) -> np.ndarray:
    """Masks of one scan as bool (D, H, W, 3), slices in order, channels in class order."""
    rows = rows.sort_values("slice")
    return np.stack([slice_mask(r) for _, r in rows.iterrows()])
