"""Figures that teach one step of the method (``01_eda``): a run-length mask decoded the
right way (row by row) beside the wrong one (column by column, as the competition's text
says), and a 2.5D input, the slices stacked as channels."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from gi_utils.constants import CLASSES
from gi_utils.data.dataset import neighbour_rows
from gi_utils.data.images import read_image
from gi_utils.data.rle import parse_rle
from gi_utils.report.plotting import plot_overlays, to_display

__all__ = ["decode_column_major", "one_class", "decoding_figure", "stack_figure"]


def decode_column_major(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """The *wrong* decoding, for the lesson: pixels numbered top to bottom, then left to
    right (column-major, what the competition's text says), into a bool (H, W) mask. The
    data are row-major: :func:`gi_utils.data.decode_rle` is the one to use."""
    height, width = int(shape[0]), int(shape[1])
    flat = np.zeros(height * width, bool)
    for start, length in zip(*parse_rle(rle, height * width), strict=True):
        flat[start - 1 : start - 1 + length] = True
    return flat.reshape((height, width), order="F")


def one_class(mask: np.ndarray, name: str) -> np.ndarray:
    """A bool (H, W) mask of class ``name`` as the (H, W, 3) class stack overlays draw."""
    out = np.zeros((*mask.shape, len(CLASSES)), bool)
    out[..., CLASSES.index(name)] = mask
    return out


def decoding_figure(image: np.ndarray, right: np.ndarray, wrong: np.ndarray, name: str) -> Figure:
    """The image, the mask decoded row by row and the same RLE decoded column by column.

    Args:
        image: (H, W) slice; right, wrong: bool (H, W) masks of class ``name``.
    """
    return plot_overlays([image, image, image], [None, one_class(right, name), one_class(wrong, name)],
                         ["image", "decoded row by row (right)", "decoded column by column (wrong)"],
                         ncols=3, panel_size=3.0)  # fmt: skip


def stack_figure(meta: pd.DataFrame, slice_id: str, offsets: Sequence[int] = (-2, 0, 2)) -> Figure:
    """One 2.5D input: slice ``slice_id`` and its neighbours at ``offsets`` (clamped to the
    scan, as training does), each as the model's channel, and the three as one RGB image.

    Args:
        meta: the metadata (:func:`gi_utils.data.build_metadata`), sorted by scan and slice.
    """
    i = int(np.flatnonzero(meta["id"].to_numpy() == slice_id)[0])
    rows = neighbour_rows(meta["case_day"], tuple(offsets))[i]
    channels = [to_display(read_image(meta["path"].iloc[r])) for r in rows]
    fig, axes = plt.subplots(1, len(rows) + 1, figsize=(2.8 * (len(rows) + 1), 3.2))
    for k, (ax, r, off) in enumerate(zip(axes[:-1], rows, offsets, strict=True)):
        ax.imshow(channels[k], cmap="gray")
        ax.set_title(f"channel {k}: slice {int(meta['slice'].iloc[r])} (i{off:+d})", fontsize=8)
        ax.axis("off")
    axes[-1].imshow(np.stack(channels[:3], axis=-1) if len(channels) >= 3 else channels[0], cmap="gray")
    axes[-1].set_title("the stack as one RGB image", fontsize=8)
    axes[-1].axis("off")
    fig.tight_layout()
    return fig
