"""Exploratory summaries of the metadata table (pure functions returning tables) and the
sentence each one teaches, written from the figures measured (``*_note``), so that a
notebook's takeaway holds for the data it shows."""

from __future__ import annotations

import numpy as np
import pandas as pd

from gi_utils.constants import CLASSES
from gi_utils.data.images import read_image, slice_mask
from gi_utils.data.rle import parse_rle
from gi_utils.report.plotting import plot_overlays

__all__ = [
    "dataset_summary",
    "size_table",
    "empty_share",
    "mask_areas",
    "organ_area_by_position",
    "sample_labelled",
    "overlay_grid",
    "data_kind",
    "empty_share_note",
    "organ_range",
    "organ_range_note",
    "sizes_note",
]


def dataset_summary(meta: pd.DataFrame) -> pd.Series:
    """Counts of cases, case-days (scans), slices and rows (3 per slice)."""
    return pd.Series(
        {
            "cases": meta["case"].nunique(),
            "case-days": meta["case_day"].nunique(),
            "slices": len(meta),
            "train.csv rows": len(meta) * len(CLASSES),
            "slices without any mask": int(meta["empty"].sum()) if "empty" in meta else np.nan,
        },
        name="count",
    )


def size_table(meta: pd.DataFrame) -> pd.DataFrame:
    """Slices and scans per (width, height, spacing) combination, most common first."""
    g = meta.groupby(["width", "height", "spacing_w", "spacing_h"])
    out = pd.DataFrame({"slices": g.size(), "scans": g["case_day"].nunique()})
    return out.sort_values("slices", ascending=False).reset_index()


def empty_share(meta: pd.DataFrame) -> pd.Series:
    """Share of slices where each class is absent, plus ``all`` (no class at all)."""
    share = {name: float((meta[name] == "").mean()) for name in CLASSES}
    share["all"] = float(meta["empty"].mean())
    return pd.Series(share, name="empty share")


def mask_areas(meta: pd.DataFrame) -> pd.DataFrame:
    """Area in pixels of each class on each slice, from the RLE lengths (no decoding)."""
    return pd.DataFrame(
        {name: [int(parse_rle(r)[1].sum()) for r in meta[name]] for name in CLASSES},
        index=meta["id"],
    )


def organ_area_by_position(meta: pd.DataFrame, bins: int = 20) -> pd.DataFrame:
    """Mean organ area against the slice's relative position in its scan.

    Returns:
        Table indexed by bin centre in [0, 1] with one column per class.
    """
    areas = mask_areas(meta)
    depth = meta.groupby("case_day")["slice"].transform("max").to_numpy()
    pos = (meta["slice"].to_numpy() - 1) / np.maximum(depth - 1, 1)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(pos, edges) - 1, 0, bins - 1)
    table = areas.reset_index(drop=True).groupby(which).mean()
    table.index = (edges[:-1] + edges[1:])[table.index] / 2
    table.index.name = "relative position"
    return table


def sample_labelled(meta: pd.DataFrame, n: int = 8, seed: int = 0) -> pd.DataFrame:
    """``n`` labelled slices drawn at random (seeded), each from a different scan when possible."""
    labelled = meta[~meta["empty"]]
    if labelled.empty:
        raise ValueError("no labelled slice in the table")
    shuffled = labelled.sample(frac=1.0, random_state=seed)
    picks = shuffled.groupby("case_day", sort=False).head(1)
    if len(picks) < n:
        picks = pd.concat([picks, shuffled.drop(picks.index)])
    return picks.head(n).sort_values(["case", "day", "slice"])


def overlay_grid(meta: pd.DataFrame, n: int = 8, seed: int = 0, ncols: int = 4):
    """Figure of ``n`` labelled slices with their three masks overlaid (reads the PNGs)."""
    rows = sample_labelled(meta, n, seed)
    images = [read_image(p) for p in rows["path"]]
    masks = [slice_mask(r) for _, r in rows.iterrows()]
    titles = [f"{i} ({w}x{h})" for i, w, h in zip(rows["id"], rows["width"], rows["height"])]
    return plot_overlays(images, masks, titles, ncols=ncols)


def data_kind(synthetic: bool) -> str:
    """How the notes name the data: ``"these synthetic data"`` or ``"these data"``."""
    return "these synthetic data" if synthetic else "these data"


def empty_share_note(share: pd.Series, synthetic: bool = False) -> str:
    """What :func:`empty_share` teaches, with its figures."""
    per_class = ", ".join(f"the {name.replace('_', ' ')} from {share[name]:.0%}" for name in CLASSES)
    return (f"In {data_kind(synthetic)}, {share['all']:.0%} of the slices hold no organ at all, and each organ alone is "
            f"absent from more ({per_class}). A model "
            "that rarely sees such slices predicts organs where there are none, and a few false-positive pixels far "
            "from the organ set the 3-D Hausdorff distance of the whole scan. So training draws the empty slices at a "
            "chosen rate (`sample_empty_fraction`), and the post-processing chosen in 03 can add a slice gate that "
            "erases a class on slices where the model is unsure.")  # fmt: skip


def organ_range(area: pd.DataFrame, share: float = 0.1) -> tuple[float, float]:
    """The span of relative positions where the organs are: the first and last bin whose
    mean area (all classes) reaches ``share`` of its peak, as bin edges in [0, 1].

    Args:
        area: :func:`organ_area_by_position`.
    """
    total = area.sum(axis=1)
    present = total.index[total >= share * total.max()]
    half = (area.index[1] - area.index[0]) / 2 if len(area) > 1 else 0.5
    return float(max(present.min() - half, 0.0)), float(min(present.max() + half, 1.0))


def organ_range_note(area: pd.DataFrame, synthetic: bool = False) -> str:
    """What :func:`organ_area_by_position` teaches, with the span of :func:`organ_range`."""
    lo, hi = organ_range(area)
    return (f"In {data_kind(synthetic)} the organs lie between {lo:.0%} and {hi:.0%} of the way through a scan, and "
            "their areas rise and fall smoothly from slice to slice. One slice alone does not say where in the body "
            "it is; its neighbours do. That is why the model sees each slice with its neighbours (2.5D: slices "
            "i-2, i, i+2 as the three channels of one image), and why 3-D models, which see many slices at once, "
            "are worth a try.")  # fmt: skip


def sizes_note(sizes: pd.DataFrame, synthetic: bool = False) -> str:
    """What :func:`size_table` teaches."""
    shapes = ", ".join(f"{w}x{h}" for w, h in zip(sizes["width"], sizes["height"], strict=True))
    return (f"The slices of {data_kind(synthetic)} come in {len(sizes)} sizes (width x height: {shapes}) and "
            f"{sizes[['spacing_w']].drop_duplicates().shape[0]} pixel spacings. A model takes one square size, so "
            "every slice is resized on the way in (`img_size`), and each prediction is resized back to its slice's "
            "own size before it is encoded for the submission.")  # fmt: skip
