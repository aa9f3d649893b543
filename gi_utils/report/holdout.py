"""The hold-out scores in the selection table (scored by :mod:`gi_utils.evaluation.holdout`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["with_holdout"]


def with_holdout(table: Any, scores: Mapping[str, Mapping[str, float]]) -> Any:
    """The selection table with ``Hold-out default`` and ``Hold-out tuned`` columns."""
    out = table.copy()
    for kind in ("default", "tuned"):
        out[f"Hold-out {kind}"] = out["Model"].map(lambda m, k=kind: scores.get(m, {}).get(k, np.nan))
    return out
