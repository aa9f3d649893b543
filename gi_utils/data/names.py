"""Slice ids and slice file names of the Kaggle layout.

An id is ``case123_day20_slice_0001``; a file is ``slice_0001_266_266_1.50_1.50.png``,
whose four numbers are **width, height** (pixels) and the pixel spacing in mm along width
and height: the image array of ``slice_0067_360_310_1.50_1.50.png`` has shape
(H, W) = (310, 360).
"""

from __future__ import annotations

import os
import re

from gi_utils.data.errors import DataError

__all__ = ["ID_RE", "FILENAME_RE", "parse_id", "make_id", "parse_slice_filename"]

#: ``caseN_dayD_slice_SSSS``.
ID_RE = re.compile(r"^case(?P<case>\d+)_day(?P<day>\d+)_slice_(?P<slice>\d+)$")
#: ``slice_SSSS_W_H_SW_SH.png``.
FILENAME_RE = re.compile(
    r"^slice_(?P<slice>\d+)_(?P<width>\d+)_(?P<height>\d+)_"
    r"(?P<spacing_w>\d+(?:\.\d+)?)_(?P<spacing_h>\d+(?:\.\d+)?)\.png$"
)


def parse_id(slice_id: str) -> tuple[int, int, int]:
    """Split ``"case123_day20_slice_0001"`` into ``(123, 20, 1)``.

    Raises:
        DataError: the id does not have the form ``caseN_dayD_slice_SSSS``.
    """
    m = ID_RE.match(slice_id) if isinstance(slice_id, str) else None
    if m is None:
        raise DataError(f"id {slice_id!r} is not of the form 'caseN_dayD_slice_SSSS'")
    return int(m["case"]), int(m["day"]), int(m["slice"])


def make_id(case: int, day: int, slice_no: int) -> str:
    """Inverse of :func:`parse_id`: ``(123, 20, 1)`` -> ``"case123_day20_slice_0001"``."""
    return f"case{case}_day{day}_slice_{slice_no:04d}"


def parse_slice_filename(name: str) -> dict[str, float | int]:
    """Parse ``slice_0067_360_310_1.50_1.50.png``.

    Returns:
        ``{"slice": 67, "width": 360, "height": 310, "spacing_w": 1.5, "spacing_h": 1.5}``;
        the image array of that file has shape (height, width) = (310, 360).

    Raises:
        DataError: the name does not follow ``slice_SSSS_W_H_SW_SH.png``.
    """
    m = FILENAME_RE.match(os.path.basename(name))
    if m is None:
        raise DataError(
            f"slice file name {name!r} does not follow 'slice_SSSS_W_H_SW_SH.png' "
            "(slice number, width, height, pixel spacing in mm)"
        )
    return {
        "slice": int(m["slice"]),
        "width": int(m["width"]),
        "height": int(m["height"]),
        "spacing_w": float(m["spacing_w"]),
        "spacing_h": float(m["spacing_h"]),
    }
