"""Pictures of predictions beside the truth, for the end of a notebook.

* :func:`oof_grid` (``03_compare``): the chosen configuration's out-of-fold predictions --
  each case-day predicted by the models that did not train on it, under the settings it
  submits -- beside the truth and the other candidates', on the same slices;
* :func:`submission_preview` (``04_submission``): slices of the test split with the masks
  ``submission.csv`` holds for them, decoded from the file;
* :func:`validation_preview` (``04_submission`` when the test split has no images, as on
  Kaggle before the submission reruns the notebook): the submitted models on a few
  validation slices (training slices when no split is stored beside the models, said so),
  truth beside prediction.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from gi_utils.atomic import read_json
from gi_utils.constants import CLASSES
from gi_utils.data.images import read_image, slice_mask
from gi_utils.data.layout import build_metadata
from gi_utils.data.rle import decode_rle, parse_rle
from gi_utils.inference.postprocessing import PostProcess
from gi_utils.models.run_folder import SPLIT_FILE
from gi_utils.report.atlas import scan_images
from gi_utils.report.compare import pick_validation_slices, predict_slices
from gi_utils.report.plotting import plot_overlays

__all__ = ["common_case_days", "oof_grid", "submission_preview", "validation_preview", "prediction_preview"]


def common_case_days(candidates: Sequence[Any]) -> list[str]:
    """The case-days every candidate covers, in the first one's order."""
    others = [set(c.case_days) for c in candidates[1:]]
    return [cd for cd in candidates[0].case_days if all(cd in o for o in others)]


def _richest_slices(truth: np.ndarray) -> np.ndarray:
    """Slice indices of a (D, S, S, 3) truth, most classes present first, then largest area."""
    present = truth.reshape(len(truth), -1, truth.shape[-1]).any(1).sum(1)
    area = truth.reshape(len(truth), -1).sum(1)
    return np.lexsort((-area, -present))


def oof_grid(candidates: Sequence[Any], data_dir: str | os.PathLike, n_slices: int = 4, max_candidates: int = 3) -> Figure:
    """Rows = validation slices (from different case-days, those with the most organs);
    columns = the truth, the chosen candidate's out-of-fold prediction under the settings it
    submits, then the next candidates' (at most ``max_candidates`` in all). At the models'
    resolution, as they were scored.

    Args:
        candidates: :func:`gi_utils.report.select`'s, the chosen one first.
        data_dir: the data the runs trained on (for the images).
    """
    shown = list(candidates[:max_candidates])
    case_days = common_case_days(shown)[:n_slices] if len(shown) > 1 else shown[0].case_days[:n_slices]
    if not case_days:
        raise ValueError("the candidates share no validated case-day to show")
    size = int(shown[0].source.img_size)
    images = scan_images(data_dir, case_days, size)
    volumes = {c.name: {cd: (probs, truth, gate) for cd, probs, truth, gate in c.source.source(case_days)} for c in shown}
    pictures, masks, titles = [], [], []
    for cd in case_days:
        _, truth, _ = volumes[shown[0].name][cd]
        z = int(_richest_slices(truth)[0])
        pictures += [images[cd][z]] * (1 + len(shown))
        masks.append(truth[z])
        titles.append(f"{cd} slice {z + 1}\ntruth")
        for k, cand in enumerate(shown):
            probs, _, gate = volumes[cand.name][cd]
            masks.append(cand.post.apply(probs, gate)[z])  # the whole scan: tails and sizes are per scan
            titles.append(("chosen: " if k == 0 else "") + cand.name)
    return plot_overlays(pictures, masks, titles, ncols=1 + len(shown))


def submission_preview(submission: pd.DataFrame, meta: pd.DataFrame, n_slices: int = 4) -> Figure | None:
    """The ``n_slices`` slices with the largest predicted area (one per scan first), each
    image with the masks decoded from ``submission``; ``None`` when nothing was predicted.

    Args:
        submission: ``id, class, predicted`` (what ``submission.csv`` holds).
        meta: the metadata of the predicted split (:func:`gi_utils.data.build_metadata`,
            ``labels=False``).
    """
    filled = submission[submission["predicted"] != ""]
    if filled.empty:
        return None
    area = filled.groupby("id")["predicted"].agg(lambda rles: sum(int(parse_rle(r)[1].sum()) for r in rles))
    ranked = meta.set_index("id").loc[area.index].assign(area=area.to_numpy()).sort_values("area", ascending=False)
    picks = ranked.groupby("case_day", sort=False).head(1)
    picks = pd.concat([picks, ranked.drop(picks.index)]).head(n_slices)
    images, masks, titles = [], [], []
    for sid, row in picks.iterrows():
        rles = filled[filled["id"] == sid].set_index("class")["predicted"]
        shape = (int(row["height"]), int(row["width"]))
        mask = np.zeros((*shape, len(CLASSES)), bool)
        for c, name in enumerate(CLASSES):
            mask[..., c] = decode_rle(rles.get(name, ""), shape)
        images.append(read_image(row["path"]))
        masks.append(mask)
        titles.append(f"{sid}\nfrom submission.csv")
    return plot_overlays(images, masks, titles, ncols=min(4, len(images)))


def _validation_case_days(model_paths: Sequence[str | os.PathLike]) -> list[str]:
    """The validation case-days of the first model's run (its ``split.json``), if stored."""
    split = Path(model_paths[0]).parent / SPLIT_FILE
    return list(read_json(split).get("val_case_days", [])) if split.is_file() else []


def validation_preview(model_paths: Sequence[str | os.PathLike], data_dir: str | os.PathLike, post: PostProcess,
                       weights: Sequence[float] | None = None, n_slices: int = 4) -> tuple[Figure, str]:  # fmt: skip
    """Truth beside the submitted models' prediction on ``n_slices`` slices of the training
    data: the first model's validation case-days when its run folder says which, else any
    training scans (which the models have seen).

    Returns:
        ``(figure, what)``: ``what`` says which slices they are, for the notebook to print.
    """
    meta = build_metadata(data_dir, "train")
    held = _validation_case_days(model_paths)
    if held:
        meta, what = meta[meta["case_day"].isin(held)].reset_index(drop=True), "validation slices of the first model"
    else:
        what = "training slices (no validation split is stored beside the models; they have seen these)"
    picks = pick_validation_slices(meta, n_slices)
    preds = predict_slices(model_paths, picks, meta, post=post, weights=weights)
    images, masks, titles = [], [], []
    for _, row in picks.iterrows():
        images += [read_image(row["path"])] * 2
        masks += [slice_mask(row), preds[row["id"]]]
        titles += [f"{row['id']}\ntruth", "prediction"]
    return plot_overlays(images, masks, titles, ncols=2), what


def prediction_preview(submission: pd.DataFrame, meta: pd.DataFrame, model_paths: Sequence[str | os.PathLike],
                       data_dir: str | os.PathLike, post: PostProcess, weights: Sequence[float] | None = None,
                       n_slices: int = 4) -> tuple[Figure | None, str]:  # fmt: skip
    """What ``04_submission`` shows after writing the file: test slices with the masks
    decoded from it (:func:`submission_preview`), or, when the test split has no slice (on
    Kaggle the test scans appear only when the notebook runs for a submission), the same
    models on training data (:func:`validation_preview`).

    Returns:
        ``(figure, caption)``: the caption says what the figure shows (the figure is None
        when the test slices got no mask at all, said so).
    """
    if len(meta):
        fig = submission_preview(submission, meta, n_slices)
        if fig is None:
            return None, "No slice of the test split got a mask: every row of submission.csv is empty."
        return fig, ("The test slices with the largest predicted area, each with the masks decoded back from "
                     "submission.csv: what the grader will read.")  # fmt: skip
    fig, what = validation_preview(model_paths, data_dir, post, weights, n_slices)
    return fig, (f"The test folder has no images, so the file holds its header alone. Instead, the same models and "
                 f"settings on {what}: truth on the left, prediction on the right.")  # fmt: skip
