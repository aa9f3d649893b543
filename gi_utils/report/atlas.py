"""Pictures of where the score is lost, and a slice viewer.

:func:`worst_cases` draws, for the N worst (case-day, class) rows of an error atlas
(:func:`gi_utils.evaluation.error_atlas`), the slice that sets the Hausdorff distance with
the truth, the prediction, the offending point (a cross) and its nearest voxel of the other
mask (a circle), next to the z-profile of the class (area per slice, true vs predicted)
that makes tail errors visible. :func:`slice_viewer` shows one case-day slice by slice:
a slider and class toggles (ipywidgets) in a live notebook, a static grid when the
notebook runs headless (papermill, nbval), so tests stay deterministic.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from gi_utils.atomic import atomic_write_text
from gi_utils.constants import CLASS_COLORS, CLASSES
from gi_utils.data.images import iter_volumes, read_volume
from gi_utils.data.layout import build_metadata
from gi_utils.data.preprocess import preprocess_volume
from gi_utils.evaluation.atlas import error_atlas
from gi_utils.inference.postprocessing import PostProcess
from gi_utils.progress import headless_kernel
from gi_utils.report.plotting import overlay_rgb

__all__ = ["scan_images", "worst_cases", "slice_viewer", "viewer_for", "atlas_report", "compact_atlas"]


def scan_images(data_dir: str | os.PathLike, case_days: list[str], size: int) -> dict[str, np.ndarray]:
    """Normalised images (D, S, S) of some training case-days, at a model's size."""
    meta = build_metadata(data_dir, "train")
    meta = meta[meta["case_day"].isin(case_days)]
    return {cd: preprocess_volume(read_volume(rows), size) for cd, rows in iter_volumes(meta)}


def _mask_of(mask: np.ndarray, c: int) -> np.ndarray:
    out = np.zeros((*mask.shape[:2], len(CLASSES)), bool)
    out[..., c] = mask[..., c]
    return out


def worst_cases(atlas: pd.DataFrame, source: Any, post: PostProcess, data_dir: str | os.PathLike,
                n: int = 4) -> Figure:  # fmt: skip
    """A row per worst (case-day, class): truth, prediction with the offending point, z-profile.

    Args:
        atlas: :func:`gi_utils.evaluation.error_atlas` of ``source`` under ``post``.
        source: the OOF volumes (a set, a collection or a blend).
        data_dir: the data the volumes come from (for the images).
    """
    rows = atlas.head(n)
    if rows.empty:
        raise ValueError("the atlas is empty: nothing to show")
    size = int(source.img_size)
    images = scan_images(data_dir, rows["case_day"].unique().tolist(), size)
    fig, axes = plt.subplots(len(rows), 3, figsize=(10, 3.1 * len(rows)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1, 1.6]})  # fmt: skip
    volumes = {cd: (probs, truth, gate) for cd, probs, truth, gate in source.source(rows["case_day"].unique().tolist())}
    for ax_row, (_, r) in zip(axes, rows.iterrows(), strict=True):
        probs, truth, gate = volumes[r["case_day"]]
        pred = post.apply(probs, gate)
        c = CLASSES.index(r["class"])
        z = int(r["hd_slice"])
        img = images[r["case_day"]][z]
        for ax, mask, title in ((ax_row[0], truth, "truth"), (ax_row[1], pred, "prediction")):
            ax.imshow(overlay_rgb(img, _mask_of(mask[z], c)))
            ax.set_title(f"{r['case_day']} slice {z + 1}: {title}", fontsize=8)
            ax.axis("off")
        ax_row[1].plot(r["hd_col"], r["hd_row"], "x", color="magenta", ms=10, mew=2,
                       label="farthest " + ("predicted" if r["hd_side"] == "pred" else "true") + " voxel")  # fmt: skip
        if r["nearest_slice"] >= 0:
            ax_row[1].plot(r["nearest_col"], r["nearest_row"], "o", mfc="none", color="white", ms=9,
                           label=f"nearest (slice {int(r['nearest_slice']) + 1})")  # fmt: skip
        ax_row[1].legend(fontsize=6, loc="lower left")
        d = len(pred)
        ax_row[2].plot(np.arange(1, d + 1), truth[..., c].reshape(d, -1).sum(1), color="black", label="true")
        ax_row[2].plot(np.arange(1, d + 1), pred[..., c].reshape(d, -1).sum(1), color=CLASS_COLORS[c], label="predicted")
        ax_row[2].axvline(z + 1, color="magenta", ls="--", lw=1)
        ax_row[2].set_title(f"{r['class'].replace('_', ' ')}: score {r['score']:.3f}, Hausdorff {r['hausdorff']:.3f}, "
                            f"FP/FN slices {r['fp_slices']}/{r['fn_slices']}", fontsize=8)  # fmt: skip
        ax_row[2].set_xlabel("slice")
        ax_row[2].set_ylabel("area (px)")
        ax_row[2].legend(fontsize=7)
        ax_row[2].grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _static_grid(images, truth, pred, gate, title: str, n: int = 8) -> Figure:
    present = np.flatnonzero((truth | pred).reshape(len(truth), -1).any(1))
    picks = present if len(present) <= n else present[np.linspace(0, len(present) - 1, n).round().astype(int)]
    picks = picks if len(picks) else np.arange(min(n, len(images)))
    fig, axes = plt.subplots(2, len(picks), figsize=(2.1 * len(picks), 5.4), squeeze=False)
    for k, z in enumerate(picks):
        for row, (mask, what) in enumerate(((truth, "truth"), (pred, "prediction"))):
            axes[row][k].imshow(overlay_rgb(images[z], mask[z]))
            extra = ""
            if row == 1 and gate is not None:
                extra = "\ngate " + " ".join(f"{g:.2f}" for g in gate[z])
            axes[row][k].set_title(f"slice {z + 1} {what}{extra}", fontsize=7)
            axes[row][k].axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def slice_viewer(images: np.ndarray, truth: np.ndarray, pred: np.ndarray, gate: np.ndarray | None = None,
                 title: str = "", interactive: bool | None = None):  # fmt: skip
    """Image, truth and prediction of one case-day, slice by slice.

    Args:
        images: (D, H, W); truth, pred: bool (D, H, W, 3); gate: (D, 3) or None.
        interactive: ``None``: a widget (slider, class toggles) in a live notebook with
            ipywidgets, else a static grid of the slices that hold an organ (headless runs).

    Returns:
        An ``ipywidgets.VBox`` or a closed matplotlib Figure: either is shown once by
        ``display()``.
    """
    if interactive is None:
        interactive = not headless_kernel()
    try:
        import ipywidgets as widgets  # noqa: PLC0415 - optional: the static grid needs none
        from IPython.display import display  # noqa: PLC0415
    except ImportError:
        interactive = False
    if not interactive:  # closed, so the notebook's display() shows it once (an open one is shown again)
        fig = _static_grid(images, truth, pred, gate, title)
        plt.close(fig)
        return fig
    slider = widgets.IntSlider(value=len(images) // 2, min=0, max=len(images) - 1, description="slice")
    toggles = [widgets.ToggleButton(value=True, description=c.replace("_", " ")) for c in CLASSES]
    out = widgets.Output()

    def draw(_=None) -> None:
        keep = np.array([t.value for t in toggles])
        z = slider.value
        with out:
            out.clear_output(wait=True)
            fig, axes = plt.subplots(1, 2, figsize=(7, 3.6))
            for ax, mask, what in ((axes[0], truth, "truth"), (axes[1], pred, "prediction")):
                ax.imshow(overlay_rgb(images[z], mask[z] & keep))
                ax.set_title(f"slice {z + 1} {what}", fontsize=8)
                ax.axis("off")
            if gate is not None:
                axes[1].set_xlabel("gate " + " ".join(f"{g:.2f}" for g in gate[z]))
            display(fig)
            plt.close(fig)

    for w in (slider, *toggles):
        w.observe(draw, names="value")
    draw()
    return widgets.VBox([widgets.HTML(f"<b>{title}</b>"), slider, widgets.HBox(toggles), out])


def viewer_for(source: Any, case_day: str, post: PostProcess, data_dir: str | os.PathLike,
               interactive: bool | None = None):  # fmt: skip
    """:func:`slice_viewer` of one case-day of OOF volumes under ``post``."""
    (_, probs, truth, gate), = source.source([case_day])
    images = scan_images(data_dir, [case_day], int(source.img_size))[case_day]
    return slice_viewer(images, truth, post.apply(probs, gate), gate, case_day, interactive)


def atlas_report(candidates: list[Any], runs_root: str | os.PathLike, data_dir: str | os.PathLike,
                 n: int = 4) -> pd.DataFrame:  # fmt: skip
    """The error atlas of every candidate model (single models and the best blend), saved
    as ``<runs>/atlas/<model>.csv``, and a figure of the ``n`` worst (case-day, class) of the
    chosen one (the first candidate).

    Returns:
        The chosen candidate's ``n`` worst rows, worst first, in a few rounded columns
        (the CSV files hold them all).
    """
    chosen = [c for c in candidates if len(c.members) == 1] + [c for c in candidates[:1] if len(c.members) > 1]
    worst = None
    for cand in chosen:
        table = error_atlas(cand.source, cand.post)
        atomic_write_text(Path(runs_root) / "atlas" / f"{cand.name.replace(' + ', '+')}.csv", table.to_csv(index=False))
        if cand is candidates[0]:
            worst = table.head(n)
    if worst is None or worst.empty:
        return pd.DataFrame()
    fig = worst_cases(worst, candidates[0].source, candidates[0].post, data_dir, n)
    fig.suptitle(f"{candidates[0].name}: its {len(worst)} worst (case-day, organ), worst first", fontsize=10, y=1.01)
    return compact_atlas(worst)


def compact_atlas(atlas: pd.DataFrame) -> pd.DataFrame:
    """Atlas rows in the columns a reader needs: the case-day and class, their score, Dice
    and Hausdorff term (3 decimals), the false-positive and false-negative slices, and which
    voxel sets the distance."""
    side = {"pred": "a predicted voxel far from the truth", "true": "a true voxel the prediction missed", "": ""}
    where = [f"{side[s]}, slice {int(z) + 1}" if s else "" for s, z in zip(atlas["hd_side"], atlas["hd_slice"], strict=True)]
    return pd.DataFrame({
        "case-day": atlas["case_day"], "class": atlas["class"].str.replace("_", " "),
        "score": atlas["score"].round(3), "Dice": atlas["dice"].round(3), "Hausdorff": atlas["hausdorff"].round(3),
        "false-positive slices": atlas["fp_slices"], "missed slices": atlas["fn_slices"],
        "what sets the distance": where,
    }).reset_index(drop=True)  # fmt: skip
