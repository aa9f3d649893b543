"""The comparison stage: results table, curves of all runs, and the same validation slices
predicted by every model next to the ground truth (``03_compare``; also ``02_train``'s
validation overlays). Predictions go through the submission's own prediction and
post-processing (:mod:`gi_utils.inference`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from gi_utils.constants import CLASSES
from gi_utils.data.images import iter_volumes, read_volume, read_volume_mask
from gi_utils.data.layout import build_metadata
from gi_utils.inference.postprocessing import PostProcess
from gi_utils.inference.predict import load_models, predict_volumes
from gi_utils.models.io import load_model
from gi_utils.models.registry import find_arch
from gi_utils.report.plotting import plot_overlays
from gi_utils.report.runs import Run

__all__ = [
    "results_table",
    "table_markdown",
    "validation_meta",
    "pick_validation_slices",
    "predict_slices",
    "prediction_grid",
]

def _param_count(run: Run) -> float:
    model, _ = load_model(run.model_path)
    return sum(p.numel() for p in model.parameters()) / 1e6


def results_table(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run, in the seed template's form (Model | Loss Dice | Accuracy Dice)
    extended with per-class Dice, the competition score, size and time.

    ``Loss Dice`` is the validation loss (the training loss, BCE + Dice by default) and
    ``Accuracy Dice`` the validation Dice coefficient, both at the best epoch (highest
    validation competition score).
    """
    rows = []
    for run in runs:
        best = run.metrics.get("best") or {}
        fold = run.config.get("fold", 0)
        spec = find_arch(run.config.get("arch"))
        rows.append(
            {
                "Model": run.name,
                "Fold": "all (not validated)" if fold == -1 else str(fold),
                "Loss Dice": best.get("val_loss", np.nan),
                "Accuracy Dice": best.get("val_dice", np.nan),
                **{f"Dice {c.replace('_', ' ')}": best.get(f"dice_{c}", np.nan) for c in CLASSES},
                "Hausdorff": best.get("val_hausdorff", np.nan),
                "Score": best.get("val_score", np.nan),
                "Encoder": run.config.get("encoder", "") if spec is None or spec.has_encoder else "",
                "Params (M)": _param_count(run),
                "Img size": run.config.get("img_size", np.nan),
                "Best epoch": run.metrics.get("best_epoch", np.nan),
                "Epochs": run.metrics.get("epochs_run", np.nan),
                "Train time (min)": run.metrics.get("train_time_s", np.nan) / 60,
            }
        )
    return pd.DataFrame(rows)


def table_markdown(table: pd.DataFrame) -> str:
    """GitHub Markdown of :func:`results_table` (3 decimals for scores)."""
    fmt = table.copy()
    for col in fmt.columns:
        if fmt[col].dtype.kind == "f":
            digits = 1 if col in ("Params (M)", "Train time (min)") else 3
            fmt[col] = fmt[col].map(lambda v, d=digits: "" if pd.isna(v) else f"{v:.{d}f}")
    header = "| " + " | ".join(fmt.columns) + " |"
    sep = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(fmt.columns))) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in fmt.itertuples(index=False)]
    return "\n".join([header, sep, *body]) + "\n"


def validation_meta(run: Run, data_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """The validation slices of ``run``, as its ``split.json`` records them, read from
    ``data_dir`` (default: the folder the run trained on)."""
    root = Path(data_dir or run.split["data_dir"])
    meta = build_metadata(root, "train")
    return meta[meta["case_day"].isin(run.split["val_case_days"])].reset_index(drop=True)


def pick_validation_slices(val_meta: pd.DataFrame, n: int = 4) -> pd.DataFrame:
    """Deterministic pick of ``n`` informative validation slices from different scans:
    in each scan the slice with the most classes present, then the largest mask."""
    labelled = val_meta[~val_meta["empty"]].copy()
    if labelled.empty:
        raise ValueError("the validation fold has no labelled slice to show")
    labelled["n_classes"] = (labelled[list(CLASSES)] != "").sum(axis=1)
    labelled["rle_len"] = labelled[list(CLASSES)].apply(lambda r: sum(len(s) for s in r), axis=1)
    best = labelled.sort_values(["n_classes", "rle_len"], ascending=False, kind="stable")
    picks = best.groupby("case_day", sort=False).head(1)
    if len(picks) < n:  # fewer scans than panels: take more slices per scan
        picks = pd.concat([picks, best.drop(picks.index)]).head(n)
    return picks.head(n).sort_values(["case", "day", "slice"])


def predict_slices(model_paths: Sequence[str | os.PathLike], slices: pd.DataFrame, meta: pd.DataFrame,
                   device: str = "cpu", post: PostProcess | None = None,
                   weights: Sequence[float] | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """Masks an ensemble predicts for chosen slices, through the same prediction and
    post-processing as the submission (whole scans, each scan's own size).

    Args:
        model_paths: ``best.safetensors`` files (one model, or an ensemble).
        slices: rows of ``meta`` to return.
        meta: the metadata of their scans.
        post: the post-processing (``None``: the models' own settings).
        weights: one per model (``None``: equal).

    Returns:
        ``{id: bool (H, W, 3)}``.
    """
    models = load_models(model_paths, device)
    post = post or PostProcess.from_model_configs([c for _, c in models])
    wanted = set(slices["id"])
    out = {}
    for _, rows, probs, gate in predict_volumes(models, meta[meta["case_day"].isin(set(slices["case_day"]))],
                                                device=device, weights=weights, progress=False):  # fmt: skip
        masks = post.apply(probs, gate)
        for d, sid in enumerate(rows["id"]):
            if sid in wanted:
                out[sid] = masks[d]
    return out


def prediction_grid(runs: Sequence[Run], data_dir: str | os.PathLike | None = None, n_slices: int = 4,
                    device: str = "cpu") -> Figure | None:  # fmt: skip
    """Rows = the same validation slices; columns = ground truth, then each model validated
    on the first run's split (the runs of other folds are left out: they trained on it).
    No run (none finished an epoch yet): ``None``."""
    if not runs:
        return None
    runs = [r for r in runs if r.split["val_case_days"] == runs[0].split["val_case_days"]]
    val_meta = validation_meta(runs[0], data_dir)
    picks = pick_validation_slices(val_meta, n_slices)
    preds = {run.name: predict_slices([run.model_path], picks, val_meta, device) for run in runs}
    images, masks, titles = [], [], []
    for case_day, rows in iter_volumes(val_meta[val_meta["case_day"].isin(set(picks["case_day"]))]):
        vol, true = read_volume(rows), read_volume_mask(rows)
        ids = rows["id"].tolist()
        for sid in picks.loc[picks["case_day"] == case_day, "id"]:
            i = ids.index(sid)
            images += [vol[i]] * (1 + len(runs))
            masks += [true[i], *(preds[r.name][sid] for r in runs)]
            titles += [f"{sid}\nground truth", *(r.name for r in runs)]
    return plot_overlays(images, masks, titles, ncols=1 + len(runs))
