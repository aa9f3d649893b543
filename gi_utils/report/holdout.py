"""The hold-out score of a configuration: predict the test split, post-process each way
asked, score against the hold-out truth (synthetic data, or a hold-out made from training
cases; never on Kaggle, whose truth is hidden)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gi_utils.data.holdout import read_solution, solution_path
from gi_utils.data.images import iter_volumes, read_volume
from gi_utils.data.layout import build_metadata
from gi_utils.evaluation.holdout import score_submission, volume_from_rles
from gi_utils.evaluation.metric import ScoreAccumulator
from gi_utils.inference.blending import blend
from gi_utils.inference.postprocessing import PostProcess
from gi_utils.inference.predict import load_models, predict_volume
from gi_utils.inference.submission import make_submissions
from gi_utils.paths import on_kaggle
from gi_utils.progress import progress_bar

__all__ = ["holdout_available", "holdout_scores", "holdout_table", "with_holdout"]


def holdout_available(data_dir: str | os.PathLike) -> bool:
    """True when ``data_dir`` has a test split's truth beside it and this is not Kaggle."""
    return solution_path(data_dir).is_file() and not on_kaggle()


def holdout_scores(
    model_paths: Sequence[str | os.PathLike], posts: Mapping[str, PostProcess], data_dir: str | os.PathLike,
    weights: Sequence[float] | None = None, tta: bool = True, **metric: Any,
) -> dict[str, float]:  # fmt: skip
    """``{name: hold-out score}`` of one prediction of the test split under each of ``posts``.

    Raises:
        FileNotFoundError: there is no hold-out truth (:func:`holdout_available`).
    """
    if not holdout_available(data_dir):
        raise FileNotFoundError(f"no hold-out truth at {solution_path(data_dir)} (or this is Kaggle)")
    subs = make_submissions(model_paths, data_dir, "test", posts, weights=weights, tta=tta, progress=False)
    meta = build_metadata(data_dir, "test", labels=False)
    return {name: score_submission(df, solution_path(data_dir), meta, **metric).score for name, df in subs.items()}


def holdout_table(candidates: Sequence[Any], data_dir: str | os.PathLike, tta: bool = True,
                  device: str | None = None) -> dict[str, dict[str, float]]:  # fmt: skip
    """Hold-out scores of several candidates (:class:`gi_utils.report.selection.Candidate`),
    each with its models' settings (``default``) and its searched ones (``tuned``).

    Each model is run once per test scan and its probabilities are shared by every
    candidate it belongs to (blends weigh them), so the cost is that of the distinct models.
    """
    if not holdout_available(data_dir):
        raise FileNotFoundError(f"no hold-out truth at {solution_path(data_dir)} (or this is Kaggle)")
    paths = list(dict.fromkeys(str(p) for c in candidates for p in c.model_paths))
    models = dict(zip(paths, load_models(paths, device), strict=True))
    meta = build_metadata(data_dir, "test", labels=False)
    truth = read_solution(solution_path(data_dir))
    accs = {(c.name, kind): ScoreAccumulator() for c in candidates for kind in ("default", "tuned")}
    for case_day, rows in progress_bar(list(iter_volumes(meta)), "hold-out", unit="scan"):
        vol = read_volume(rows)
        true = volume_from_rles(truth, rows)
        preds = {p: predict_volume([models[p]], vol, tta=tta, device=device) for p in paths}
        for c in candidates:
            probs, gate = blend([preds[str(p)] for p in c.model_paths], c.path_weights)
            for kind, post in (("default", c.default), ("tuned", c.searched.post)):
                accs[(c.name, kind)].add(case_day, post.apply(probs, gate), true)
    out: dict[str, dict[str, float]] = {}
    for (name, kind), acc in accs.items():
        out.setdefault(name, {})[kind] = acc.result().score
    return out


def with_holdout(table: Any, scores: Mapping[str, Mapping[str, float]]) -> Any:
    """The selection table with ``Hold-out default`` and ``Hold-out tuned`` columns."""
    out = table.copy()
    for kind in ("default", "tuned"):
        out[f"Hold-out {kind}"] = out["Model"].map(lambda m, k=kind: scores.get(m, {}).get(k, np.nan))
    return out
