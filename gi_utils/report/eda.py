"""Exploratory summaries of the metadata table (pure functions returning tables)."""

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
