"""The comparison stage: results table, curves of all runs, and the same validation slices
predicted by every model next to the ground truth (``03_compare``; also ``02_train``'s
validation overlays)."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from gi_utils.atomic import atomic_write_text
from gi_utils.constants import CLASSES
from gi_utils.data import build_metadata, iter_volumes, read_volume, read_volume_mask
from gi_utils.folds import assign_folds, split_fold
from gi_utils.infer import predict_probs, stack_slices
from gi_utils.models import load_model
from gi_utils.paths import REPO_ROOT, resolve_data_dir
from gi_utils.plotting import plot_overlays
from gi_utils.runs import Run
from gi_utils.transforms import preprocess_volume, restore_size

__all__ = [
    "results_table",
    "table_markdown",
    "pick_validation_slices",
    "predict_slices",
    "prediction_grid",
    "update_readme",
    "readme_results",
    "README_START",
    "README_END",
]

README_START = "<!-- results:start -->"
README_END = "<!-- results:end -->"


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
        rows.append(
            {
                "Model": run.name,
                "Loss Dice": best.get("val_loss", np.nan),
                "Accuracy Dice": best.get("val_dice", np.nan),
                **{f"Dice {c.replace('_', ' ')}": best.get(f"dice_{c}", np.nan) for c in CLASSES},
                "Hausdorff": best.get("val_hausdorff", np.nan),
                "Score": best.get("val_score", np.nan),
                "Encoder": run.config.get("encoder", ""),
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


def _validation_meta(config: dict, data_dir: str | os.PathLike | None) -> pd.DataFrame:
    root = resolve_data_dir(data_dir or config.get("data_dir"))
    meta = build_metadata(root, "train")
    meta = assign_folds(meta, int(config["n_folds"]), int(config["folds_seed"]), data_dir=root,
                        run_dir=Path(config["out_dir"]), drop_bad=bool(config.get("drop_bad_cases")))  # fmt: skip
    return split_fold(meta, int(config["fold"]))[1]


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


def predict_slices(model_path: str | os.PathLike, slices: pd.DataFrame, meta: pd.DataFrame, device: str = "cpu") -> dict[str, np.ndarray]:
    """Masks predicted by one saved model for chosen slices, at their original size.

    Args:
        model_path: a ``best.safetensors`` file.
        slices: rows of ``meta`` to predict.
        meta: the metadata of their scans (for the 2.5D neighbours).

    Returns:
        ``{id: bool (H, W, 3)}``.
    """
    model, config = load_model(model_path, device)
    size, mode = int(config["img_size"]), config.get("resize_mode", "resize")
    threshold = float(config.get("threshold", 0.5))
    out = {}
    wanted = set(slices["case_day"])
    for case_day, rows in iter_volumes(meta[meta["case_day"].isin(wanted)]):
        vol = read_volume(rows)
        ids = rows["id"].tolist()
        idx = [ids.index(i) for i in slices.loc[slices["case_day"] == case_day, "id"]]
        images = stack_slices(preprocess_volume(vol, size, mode), config["slice_offsets"])[idx]
        probs = np.moveaxis(predict_probs(model, images, device=device), 1, -1)
        masks = restore_size(probs, vol.shape[1:], mode) > threshold
        out.update({ids[i]: masks[k] for k, i in enumerate(idx)})
    return out


def prediction_grid(runs: Sequence[Run], data_dir: str | os.PathLike | None = None, n_slices: int = 4, device: str = "cpu") -> Figure:
    """Rows = the same validation slices; columns = ground truth, then each model."""
    folds = {(r.config["fold"], r.config["n_folds"], r.config["folds_seed"]) for r in runs}
    if len(folds) > 1:
        warnings.warn(f"runs were validated on different folds {sorted(folds)}; showing the first run's", stacklevel=2)
    val_meta = _validation_meta(runs[0].config, data_dir)
    picks = pick_validation_slices(val_meta, n_slices)
    preds = {run.name: predict_slices(run.model_path, picks, val_meta, device) for run in runs}
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


def readme_results(readme: str | os.PathLike = REPO_ROOT / "README.md") -> str:
    """The results block of the README (between the two markers)."""
    text = Path(readme).read_text()
    m = re.search(re.escape(README_START) + r"\n(.*?)" + re.escape(README_END), text, flags=re.S)
    if m is None:
        raise ValueError(f"{readme} has no {README_START} ... {README_END} block")
    return m.group(1)


def update_readme(table_md: str, readme: str | os.PathLike = REPO_ROOT / "README.md") -> Path:
    """Replace the README's results block with ``table_md`` (atomic write)."""
    readme = Path(readme)
    readme_results(readme)  # raises when the markers are missing
    text = readme.read_text()
    start = text.index(README_START) + len(README_START)
    end = text.index(README_END)
    return atomic_write_text(readme, text[:start] + "\n" + table_md + text[end:])
