"""What ``04_submission`` submits: the best configuration that ``03_compare`` chose on
out-of-fold predictions by default; explicit models, thresholds or sizes win over it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gi_utils.inference.postprocessing import PostProcess
from gi_utils.models.io import read_model_config
from gi_utils.report.runs import ensemble_paths
from gi_utils.report.selection import BEST_CONFIG_NAME, read_best_config

__all__ = ["SubmissionPlan", "submission_plan"]


@dataclass(frozen=True)
class SubmissionPlan:
    """Models (with weights), the chosen post-processing, the models' own, and why."""

    model_paths: list[Path]
    weights: list[float] | None
    post: PostProcess
    default_post: PostProcess
    source: str


def submission_plan(
    runs_root: str | os.PathLike, runs: str = "", model_paths: str = "", best_config: str = "",
    thresholds: float | list | None = None, min_size: int | None = None,
) -> SubmissionPlan:  # fmt: skip
    """Resolve 04's parameters into a :class:`SubmissionPlan`.

    Order: explicit ``model_paths`` or ``runs`` (the models' own settings, equal weights);
    else ``best_config`` or ``<runs_root>/best_config.json`` when it exists; else every
    finished run. ``thresholds`` / ``min_size`` then override the chosen settings.
    """
    runs_root = Path(runs_root)
    config_path = Path(best_config) if best_config else runs_root / BEST_CONFIG_NAME
    if not (runs or model_paths) and (best_config or config_path.is_file()):
        record = read_best_config(config_path)
        paths, weights = [Path(p) for p in record["model_paths"]], list(record["weights"])
        post, default, source = record["post"], record["default_post"], f"best configuration {config_path}"
    else:
        paths = ensemble_paths(runs_root, runs, model_paths)
        weights = None
        default = PostProcess.from_model_configs([read_model_config(p) for p in paths])
        post, source = default, "the models' own settings"
    return SubmissionPlan(paths, weights, post.override(thresholds, min_size), default, source)
