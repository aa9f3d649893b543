"""What ``04_submission`` submits: the best configuration that ``03_compare`` chose on
out-of-fold predictions by default; explicit models, thresholds or sizes win over it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gi_utils.inference.postprocessing import PostProcess
from gi_utils.inference.timing import SubmissionTime, measure_speed, project_submission_time
from gi_utils.models.io import read_model_config
from gi_utils.paths import kaggle_input_dir, shown_path
from gi_utils.report.runs import as_roots, ensemble_paths
from gi_utils.report.selection import BEST_CONFIG_NAME, read_best_config

__all__ = ["SubmissionPlan", "find_best_config", "submission_plan", "submission_time"]


@dataclass(frozen=True)
class SubmissionPlan:
    """Models (with weights), the chosen post-processing, the models' own, and why."""

    model_paths: list[Path]
    weights: list[float] | None
    post: PostProcess
    default_post: PostProcess
    source: str


def find_best_config(runs_roots: list[Path], best_config: str = "", out_root: Path | None = None) -> Path | None:
    """The best configuration 04 submits: ``best_config`` if given; else the first
    ``best_config.json`` of ``out_root`` (where 03 wrote it), of the runs folders, or of a
    dataset attached on Kaggle (the bundle of ``make kaggle``); ``None`` if there is none."""
    if best_config:
        return Path(best_config)
    places = [*([out_root] if out_root else []), *runs_roots]
    found = [p / BEST_CONFIG_NAME for p in places if (p / BEST_CONFIG_NAME).is_file()]
    if not found and kaggle_input_dir().is_dir():
        found = sorted(kaggle_input_dir().glob(f"*/{BEST_CONFIG_NAME}")) + sorted(kaggle_input_dir().glob(f"*/*/{BEST_CONFIG_NAME}"))
    return found[0] if found else None


def submission_plan(
    runs_root: str | os.PathLike | list, runs: str = "", model_paths: str = "", best_config: str = "",
    thresholds: float | list | None = None, min_size: int | None = None, out_root: str | os.PathLike | None = None,
) -> SubmissionPlan:  # fmt: skip
    """Resolve 04's parameters into a :class:`SubmissionPlan`.

    Order: explicit ``model_paths`` or ``runs`` (the models' own settings, equal weights);
    else the best configuration (:func:`find_best_config`; its models looked up beside it,
    then by run name in the runs folders); else every finished run. ``thresholds`` /
    ``min_size`` then override the chosen settings.

    Args:
        runs_root: a folder of run folders, or a list of them (read only).
        out_root: where 03 wrote its files, if elsewhere than the runs folders.
    """
    roots = as_roots(runs_root)
    config_path = None if (runs or model_paths) else find_best_config(roots, best_config,
                                                                       Path(out_root) if out_root else None)
    if config_path is not None:
        record = read_best_config(config_path, roots)
        paths, weights = [Path(p) for p in record["model_paths"]], list(record["weights"])
        post, default, source = record["post"], record["default_post"], f"best configuration {shown_path(config_path)}"
    else:
        paths = ensemble_paths(roots, runs, model_paths)
        weights = None
        default = PostProcess.from_model_configs([read_model_config(p) for p in paths])
        post, source = default, "the models' own settings"
    return SubmissionPlan(paths, weights, post.override(thresholds, min_size), default, source)


def submission_time(plan: SubmissionPlan, data_dir: str | os.PathLike, split: str = "test", tta: bool = True,
                    batch_size: int = 16) -> SubmissionTime:  # fmt: skip
    """04's projection of the hidden test's time with ``plan``'s members, ``tta`` and their
    3-D windows, from their speed on the first scan (:mod:`gi_utils.inference.timing`),
    against the competition's 9 hours; printable (a table and, when over, what fits)."""
    members, overhead, _ = measure_speed(plan.model_paths, data_dir, split, plan.post, tta=tta, batch_size=batch_size)
    return project_submission_time(members, overhead)
