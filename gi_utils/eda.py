"""Exploratory summaries of the metadata table (pure functions returning tables)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from gi_utils.constants import CLASSES
from gi_utils.rle import parse_rle

__all__ = ["dataset_summary", "size_table", "empty_share", "mask_areas", "organ_area_by_position"]


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
