"""The body box of a scan: the 2nd and 3rd places crop each slice to the body before
resizing it (``TrainConfig.resize_mode="crop"``), so the model's pixels go to the body,
not to the air around it.

They found the box with a trained detector (the 3rd place: EfficientDet-D0 at 256 px).
Here it is read off the scan itself, which needs no model and no labels: the air around
the body is dark, so the box holds the rows and columns where more than
:data:`BODY_MIN_SHARE` of the scan's mean image is brighter than :data:`BODY_THRESHOLD`
of its clip value, widened by :data:`BODY_MARGIN` of each side and kept at least
:data:`BODY_MIN_SIDE` of it. One box per scan (every slice, and so every 2.5D stack and
3-D patch, is cut the same way); an empty scan keeps the whole image.

The box maps a prediction back exactly: :func:`gi_utils.data.restore_size` resizes it
to the box and puts it in place, zeros (no organ) outside.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BODY_THRESHOLD", "BODY_MIN_SHARE", "BODY_MARGIN", "BODY_MIN_SIDE", "Box", "body_box", "check_box"]

#: A pixel of the scan's mean image is body above this share of the scan's clip value.
BODY_THRESHOLD: float = 0.1
#: A row (column) is in the box when more than this share of it is body (noise specks are not).
BODY_MIN_SHARE: float = 0.02
#: Added on each side of the box, as a share of the image's side.
BODY_MARGIN: float = 0.04
#: The box keeps at least this share of each side.
BODY_MIN_SIDE: float = 0.25

#: ``(top, bottom, left, right)``: rows ``top:bottom`` and columns ``left:right`` of (H, W).
Box = tuple[int, int, int, int]


def _span(share: np.ndarray, margin: int, min_side: int) -> tuple[int, int]:
    """First and one-past-last index where ``share > BODY_MIN_SHARE``, widened by ``margin``."""
    n = len(share)
    inside = np.flatnonzero(share > BODY_MIN_SHARE)
    if not len(inside):
        return 0, n
    lo, hi = max(int(inside[0]) - margin, 0), min(int(inside[-1]) + 1 + margin, n)
    if hi - lo < min_side:  # too thin: widened about its centre, inside the image
        lo = min(max((lo + hi - min_side) // 2, 0), n - min_side)
        hi = lo + min_side
    return lo, hi


def body_box(vol: np.ndarray, hi: float) -> Box:
    """The body box of a scan (see the module docstring).

    Args:
        vol: (D, H, W) the raw scan (or (H, W), one slice).
        hi: the scan's clip value (:func:`gi_utils.data.intensity_clip`); 0 for an empty scan.

    Returns:
        ``(top, bottom, left, right)``, half-open, inside (H, W).
    """
    mean = np.asarray(vol, np.float32).reshape(-1, *vol.shape[-2:]).mean(0)
    h, w = mean.shape
    if hi <= 0:
        return 0, h, 0, w
    body = mean > BODY_THRESHOLD * hi
    top, bottom = _span(body.mean(1), int(round(BODY_MARGIN * h)), max(1, int(round(BODY_MIN_SIDE * h))))
    left, right = _span(body.mean(0), int(round(BODY_MARGIN * w)), max(1, int(round(BODY_MIN_SIDE * w))))
    return top, bottom, left, right


def check_box(box: Box | None, h: int, w: int) -> Box:
    """``box`` as ints, checked to lie inside (H, W) and hold a pixel.

    Raises:
        ValueError: no box (``resize_mode="crop"`` needs the scan's), or one outside.
    """
    if box is None:
        raise ValueError("resize mode 'crop' needs the scan's body box (gi_utils.data.body_box)")
    top, bottom, left, right = (int(v) for v in box)
    if not (0 <= top < bottom <= h and 0 <= left < right <= w):
        raise ValueError(f"body box {box} is not inside the (H, W) = ({h}, {w}) image")
    return top, bottom, left, right
