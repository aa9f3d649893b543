"""Figures. Overlay computation (RGB arrays) is separate from drawing; every plot function
returns its :class:`matplotlib.figure.Figure`, takes an optional ``ax`` where it draws one
panel, and never calls ``show()`` (MONAI ``matshow3d`` habit).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

if os.environ.get("MPLBACKEND") is None and "ipykernel" not in os.sys.modules:
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from gi_utils.atomic import atomic_path  # noqa: E402
from gi_utils.constants import CLASS_COLORS, CLASSES  # noqa: E402

__all__ = [
    "to_display",
    "overlay_rgb",
    "plot_overlays",
    "METRIC_LABELS",
    "plot_history",
    "plot_organ_area",
    "plot_empty_share",
    "plot_search_trace",
    "save_figure",
]


def to_display(image: np.ndarray, pct: float = 99.5) -> np.ndarray:
    """Scale a 16-bit or float image (H, W) to float [0, 1] for display (clip at ``pct``)."""
    image = np.asarray(image, dtype=np.float32)
    hi = float(np.percentile(image, pct)) if image.size else 1.0
    lo = float(image.min()) if image.size else 0.0
    if hi <= lo:
        return np.zeros_like(image)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0)


def overlay_rgb(image: np.ndarray, mask: np.ndarray | None, alpha: float = 0.45) -> np.ndarray:
    """Blend class masks over a grayscale image.

    Args:
        image: (H, W) grayscale, any dtype (scaled with :func:`to_display`).
        mask: (H, W, 3) bool/0-1 in class order, or ``None`` for the image alone.
        alpha: opacity of the mask colours.

    Returns:
        float32 RGB array (H, W, 3) in [0, 1].
    """
    gray = to_display(image)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    if mask is None:
        return rgb
    mask = np.asarray(mask).astype(bool)
    if mask.shape[:2] != gray.shape or mask.shape[-1] != len(CLASSES):
        raise ValueError(f"mask shape {mask.shape} does not match image {gray.shape} x {len(CLASSES)} classes")
    for c, color in enumerate(CLASS_COLORS):
        m = mask[..., c]
        rgb[m] = (1 - alpha) * rgb[m] + alpha * np.asarray(color, dtype=np.float32)
    return rgb


def _legend(fig: Figure) -> None:
    handles = [Patch(color=c, label=n.replace("_", " ")) for n, c in zip(CLASSES, CLASS_COLORS)]
    fig.legend(handles=handles, loc="lower center", ncol=len(CLASSES), frameon=False)


def plot_overlays(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None],
    titles: Sequence[str] | None = None,
    ncols: int = 4,
    panel_size: float = 2.6,
) -> Figure:
    """A grid of image + coloured-mask overlays, one panel per (image, mask) pair."""
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(panel_size * ncols, panel_size * nrows + 0.4), squeeze=False
    )
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(overlay_rgb(images[k], masks[k]))
            if titles is not None:
                ax.set_title(titles[k], fontsize=8)
    _legend(fig)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


#: How the training curves name history.csv's columns (their y axes).
METRIC_LABELS: dict[str, str] = {
    "train_loss": "training loss (BCE + Dice)", "val_loss": "validation loss", "val_dice": "validation Dice",
    "val_hausdorff": "validation Hausdorff term", "val_score": "validation score",
}  # fmt: skip


def plot_history(
    histories: Mapping[str, pd.DataFrame] | pd.DataFrame,
    metrics: Sequence[str] = ("train_loss", "val_loss", "val_dice", "val_score"),
    title: str = "",
) -> Figure | None:
    """Training curves: one panel per metric (its name on the y axis), one line per run,
    whole epochs on the x axis.

    Args:
        histories: one history table (columns ``epoch`` + metrics), or ``{run: table}``.
        metrics: columns to draw; those absent from every table are skipped.
        title: above the panels (e.g. the architecture).

    Returns:
        The figure; ``None`` for no run (``{}``: none finished an epoch yet).
    """
    if isinstance(histories, pd.DataFrame):
        histories = {"run": histories}
    if not histories:
        return None
    present = [m for m in metrics if any(m in h.columns for h in histories.values())]
    if not present:
        raise ValueError(f"none of the metrics {list(metrics)} is in the histories")
    epochs = sorted({int(e) for hist in histories.values() for e in hist["epoch"]})
    fig, axes = plt.subplots(1, len(present), figsize=(3.6 * len(present), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], present):
        for name, hist in histories.items():
            if metric in hist.columns:
                ax.plot(hist["epoch"], hist[metric], marker="o", ms=3, label=name)
        ax.set_ylabel(METRIC_LABELS.get(metric, metric.replace("_", " ")))
        ax.set_xlabel("epoch")
        if len(epochs) <= 15:  # every epoch a tick, whole numbers only
            ax.set_xticks(epochs)
            ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_organ_area(area: pd.DataFrame, ax: plt.Axes | None = None) -> Figure:
    """Mean organ area (pixels) against relative slice position, one line per class.

    Args:
        area: output of :func:`gi_utils.report.eda.organ_area_by_position`.
    """
    fig = ax.figure if ax is not None else plt.figure(figsize=(6, 3.2))
    ax = ax or fig.add_subplot(111)
    for name, color in zip(CLASSES, CLASS_COLORS):
        ax.plot(area.index, area[name], color=color, label=name.replace("_", " "))
    ax.set_xlabel("relative slice position in the scan (0 = first slice)")
    ax.set_ylabel("mean area (pixels)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_empty_share(share: pd.Series, ax: plt.Axes | None = None) -> Figure:
    """Bar chart of the share of slices where each class (and all) is absent."""
    fig = ax.figure if ax is not None else plt.figure(figsize=(4.5, 3))
    ax = ax or fig.add_subplot(111)
    colors = [*CLASS_COLORS, (0.4, 0.4, 0.4)][: len(share)]
    ax.bar([s.replace("_", " ") for s in share.index], share.values, color=colors)
    ax.set_ylabel("share of slices without mask")
    ax.set_ylim(0, 1)
    for x, v in enumerate(share.values):
        ax.text(x, v + 0.02, f"{v:.0%}", ha="center", fontsize=8)
    fig.tight_layout()
    return fig


def plot_search_trace(trace: Mapping[str, Mapping[str, Mapping[float, float]]],
                      settings: Sequence[str] = ("thresholds", "gate_max")) -> Figure:  # fmt: skip
    """The out-of-fold score against each value of a post-processing setting, one panel per
    setting, one line per class (the first pass of :func:`gi_utils.evaluation.search_postprocess`).

    Args:
        trace: ``{class: {setting: {value: score}}}`` (``SearchResult.trace``).
        settings: the settings to draw (those absent from the trace are skipped).
    """
    present = [s for s in settings if any(s in t for t in trace.values())]
    if not present:
        raise ValueError(f"none of {list(settings)} is in the search trace")
    fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 3.0), squeeze=False)
    for ax, setting in zip(axes[0], present):
        for name, color in zip(CLASSES, CLASS_COLORS):
            values = trace.get(name, {}).get(setting)
            if values:
                xs = sorted(values)
                ax.plot(xs, [values[x] for x in xs], marker="o", ms=3, color=color, label=name.replace("_", " "))
        ax.set_xlabel(setting.replace("_", " ").rstrip("s"))
        ax.set_ylabel("OOF score")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure | None, path: str | os.PathLike, dpi: int = 110, close: bool = False) -> Path | None:
    """Save atomically (temp file + rename); close the figure if asked; return the path.
    No figure (``None``: nothing to draw), nothing written and ``None`` returned.

    In a notebook leave ``close=False`` so the inline backend still shows the figure.
    """
    if fig is None:
        return None
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
    if close:
        plt.close(fig)
    return path
