"""The hold-out score: a submission scored against a hold-out's truth
(:mod:`gi_utils.data.holdout`) with the exact competition metric, volume by volume; and a
configuration's (predict the test split, post-process each way asked, score), on synthetic
data or a hold-out made from training cases, never on Kaggle, whose truth is hidden. The
selection table shows them with :func:`gi_utils.report.with_holdout`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gi_utils.constants import CLASSES, SUBMISSION_COLUMNS
from gi_utils.data.holdout import read_solution, solution_path
from gi_utils.data.images import iter_volumes, read_volume
from gi_utils.data.layout import build_metadata
from gi_utils.data.rle import decode_rle
from gi_utils.evaluation.metric import ScoreAccumulator, ScoreResult
from gi_utils.inference.blending import blend
from gi_utils.inference.postprocessing import PostProcess
from gi_utils.inference.predict import load_models, predict_volume
from gi_utils.inference.submission import make_submissions
from gi_utils.paths import on_kaggle
from gi_utils.progress import progress_bar

__all__ = ["score_submission", "volume_from_rles", "holdout_available", "holdout_scores", "holdout_table"]


def volume_from_rles(rles: pd.DataFrame, rows: pd.DataFrame) -> np.ndarray:
    """bool (D, H, W, 3) of one scan from a wide (id -> one RLE column per class) table."""
    h, w = int(rows["height"].iloc[0]), int(rows["width"].iloc[0])
    out = np.zeros((len(rows), h, w, len(CLASSES)), bool)
    for d, sid in enumerate(rows["id"]):
        if sid in rles.index:
            for c, name in enumerate(CLASSES):
                out[d, ..., c] = decode_rle(rles.at[sid, name], (h, w))
    return out


def score_submission(
    submission: pd.DataFrame | str | os.PathLike, solution: str | os.PathLike, test_meta: pd.DataFrame,
    **metric: Any,
) -> ScoreResult:  # fmt: skip
    """Competition score of a submission (a table or a CSV) against the solution CSV.

    Args:
        submission: ``id, class, predicted`` (validated by
            :func:`gi_utils.inference.validate_submission` before, ideally).
        solution: the hold-out truth (``id, class, segmentation``).
        test_meta: ``build_metadata(data, "test", labels=False)``: slice order and sizes.
        metric: options of :class:`~gi_utils.evaluation.metric.ScoreAccumulator`
            (``hausdorff_mode="mlebench"``...).

    Raises:
        ValueError: the solution lacks slices of the test set (names the first).
    """
    if not isinstance(submission, pd.DataFrame):
        submission = pd.read_csv(submission, keep_default_na=False, dtype=str)
    if list(submission.columns) != list(SUBMISSION_COLUMNS):
        raise ValueError(f"submission columns are {list(submission.columns)}; expected {list(SUBMISSION_COLUMNS)}")
    pred = submission.pivot(index="id", columns="class", values="predicted").reindex(columns=list(CLASSES))
    pred = pred.fillna("")
    truth = read_solution(Path(solution))
    missing = pd.Index(test_meta["id"]).difference(truth.index)
    if len(missing):
        raise ValueError(f"solution {solution} has no rows for {len(missing)} test slice(s), first {missing[0]!r}")
    acc = ScoreAccumulator(**metric)
    for case_day, rows in iter_volumes(test_meta):
        acc.add(case_day, volume_from_rles(pred, rows), volume_from_rles(truth, rows))
    return acc.result()


def holdout_available(data_dir: str | os.PathLike) -> bool:
    """True when ``data_dir`` has a test split's truth beside it and this is not Kaggle."""
    return solution_path(data_dir).is_file() and not on_kaggle()


def _check_holdout(data_dir: str | os.PathLike) -> None:
    if not holdout_available(data_dir):
        raise FileNotFoundError(f"no hold-out truth at {solution_path(data_dir)} (or this is Kaggle)")


def holdout_scores(
    model_paths: Sequence[str | os.PathLike], posts: Mapping[str, PostProcess], data_dir: str | os.PathLike,
    weights: Sequence[float] | None = None, tta: bool = True, **metric: Any,
) -> dict[str, float]:  # fmt: skip
    """``{name: hold-out score}`` of one prediction of the test split under each of ``posts``.

    Raises:
        FileNotFoundError: there is no hold-out truth (:func:`holdout_available`).
    """
    _check_holdout(data_dir)
    subs = make_submissions(model_paths, data_dir, "test", posts, weights=weights, tta=tta, progress=False)
    meta = build_metadata(data_dir, "test", labels=False)
    return {name: score_submission(df, solution_path(data_dir), meta, **metric).score for name, df in subs.items()}


def holdout_table(candidates: Sequence[Any], data_dir: str | os.PathLike, tta: bool = True,
                  device: str | None = None) -> dict[str, dict[str, float]]:  # fmt: skip
    """Hold-out scores of several candidates (:class:`gi_utils.report.selection.Candidate`),
    each with its models' settings (``default``) and its searched ones (``tuned``).

    Each model is run once per test scan and its probabilities are shared by every
    candidate it belongs to (blends weigh them), so the cost is that of the distinct models.

    Raises:
        FileNotFoundError: there is no hold-out truth (:func:`holdout_available`).
    """
    _check_holdout(data_dir)
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
