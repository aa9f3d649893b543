"""Tables as a notebook reader wants them: rounded, with plain column names and no more
columns than the point needs. The full tables stay in files (``results.md``,
``selection_full.md``, the atlas CSVs) and in the docs.

* :func:`config_against_preset`: ``02_train``'s configuration beside the preset's values
  and the TrainConfig defaults;
* :func:`history_table`, :func:`fold_table`: one row per epoch, one per fold (``02_train``);
* :func:`compact_results`, :func:`compact_selection`: the runs and the candidates of
  ``03_compare`` in a few columns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gi_utils.constants import CLASSES
from gi_utils.report.runs import Run
from gi_utils.training.config import TrainConfig
from gi_utils.training.presets import TABLE_FIELDS, preset_values

__all__ = ["ARCH_TITLES", "arch_title", "run_title", "plain_value", "config_against_preset", "history_table",
           "fold_table", "compact_results", "compact_selection", "models_table", "postprocess_table"]  # fmt: skip

#: How titles name the architectures (the registry's names are lower case).
ARCH_TITLES: dict[str, str] = {
    "unet": "UNet", "unetplusplus": "UNet++", "deeplabv3plus": "DeepLabV3+", "deeplabv3": "DeepLabV3", "fpn": "FPN",
    "manet": "MA-Net", "linknet": "LinkNet", "pspnet": "PSPNet", "upernet": "UPerNet", "segformer": "SegFormer",
    "segresnet3d": "3-D SegResNet", "unet3d": "3-D UNet",
}  # fmt: skip


def arch_title(arch: str) -> str:
    """``unet`` -> ``UNet`` (:data:`ARCH_TITLES`; an unknown name as it is)."""
    return ARCH_TITLES.get(arch, arch)


def run_title(config: TrainConfig) -> str:
    """``UNet, resnet18 encoder, 64 px, fold 0 of 5`` (``all cases`` for fold -1)."""
    encoder = f", {config.encoder} encoder" if config.spec.has_encoder else ""
    fold = "all cases" if config.fold == -1 else f"fold {config.fold} of {config.n_folds}"
    return f"{arch_title(config.arch)}{encoder}, {config.img_size} px, {fold}"

#: history.csv's columns as the per-epoch table names them, in order.
HISTORY_COLUMNS: dict[str, str] = {
    "epoch": "epoch", "train_loss": "train loss", "val_loss": "val loss", "val_dice": "val Dice",
    "val_hausdorff": "val Hausdorff", "val_score": "val score", "lr": "learning rate", "epoch_time_s": "time (s)",
}  # fmt: skip


def plain_value(value: Any) -> str:
    """A setting as a reader writes it: ``unet``, ``64``, ``0.002``, ``(-2, 0, 2)``, ``None``;
    a dict as keywords, ``encoder_depth=4, decoder_channels=[128, 64]`` (``none`` when empty)."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={plain_value(v)}" for k, v in value.items()) or "none"
    return str(value)


def config_against_preset(config: TrainConfig, preset: str, fields: Sequence[str] = ("fold", *TABLE_FIELDS)) -> pd.DataFrame:
    """The main settings of a run: its value, the preset's and the TrainConfig default, and
    where the value came from (``given``: a parameter set in the notebook or with ``-p``).

    Args:
        config: the run's configuration (:func:`gi_utils.pipeline.train_setup`).
        preset: the preset applied (``"auto"`` already resolved), ``""`` for none.
    """
    base, values = TrainConfig(), preset_values(preset, config.arch) if preset else {}
    preset_config = TrainConfig.from_dict({**values, "arch": config.arch})
    column = f"preset {preset}" if preset else "preset"
    rows = []
    for name in fields:
        value, expected = getattr(config, name), getattr(preset_config, name)
        source = "given" if value != expected else f"preset {preset}" if name in values else "default"
        rows.append({"parameter": name, "value": plain_value(value), "from": source,
                     column: plain_value(expected) if name in values else "·", "default": plain_value(getattr(base, name))})
    return pd.DataFrame(rows).set_index("parameter")


def history_table(runs: Sequence[Run], digits: int = 3) -> pd.DataFrame:
    """One row per epoch of each run (its ``history.csv``), rounded, the best epoch marked.

    Returns:
        Columns ``fold`` (with several runs), :data:`HISTORY_COLUMNS` present, ``best``;
        no run (none finished an epoch: :func:`~gi_utils.report.trained_runs`), no row.
    """
    if not runs:
        return pd.DataFrame(columns=[*HISTORY_COLUMNS.values(), "best"])
    parts = []
    for run in runs:
        hist = run.history
        cols = [c for c in HISTORY_COLUMNS if c in hist.columns]
        table = hist[cols].rename(columns=HISTORY_COLUMNS).copy()
        for col in table.columns:
            if col == "learning rate":
                table[col] = table[col].map(lambda v: f"{v:.1e}")
            elif col == "time (s)":
                table[col] = table[col].round(1)
            elif col != "epoch":
                table[col] = table[col].round(digits)
        table["best"] = np.where(hist["epoch"] == run.metrics.get("best_epoch"), "best", "")
        if len(runs) > 1:
            table.insert(0, "fold", run.config.get("fold"))
        parts.append(table)
    return pd.concat(parts, ignore_index=True)


def fold_table(runs: Sequence[Run], digits: int = 3) -> pd.DataFrame:
    """One row per run (fold) at its best epoch, and with two folds or more a last row of
    the mean and standard deviation over folds; no run, no row."""
    if not runs:
        return pd.DataFrame(columns=["run", "fold", "best epoch", "val Dice", "val Hausdorff", "val score",
                                     "minutes"]).set_index("run")  # fmt: skip
    rows = []
    for run in runs:
        best = run.metrics.get("best") or {}
        rows.append({"run": run.name, "fold": run.config.get("fold"), "best epoch": run.metrics.get("best_epoch"),
                     "val Dice": best.get("val_dice", math.nan), "val Hausdorff": best.get("val_hausdorff", math.nan),
                     "val score": best.get("val_score", math.nan),
                     "minutes": run.metrics.get("train_time_s", math.nan) / 60})  # fmt: skip
    table = pd.DataFrame(rows)
    if len(table) > 1:
        figures = ["val Dice", "val Hausdorff", "val score"]
        mean, std = table[figures].mean(), table[figures].std(ddof=1)
        summary = {"run": "mean ± sd", "fold": "", "best epoch": "", "minutes": table["minutes"].sum()}
        summary |= {k: f"{mean[k]:.{digits}f} ± {std[k]:.{digits}f}" for k in figures}
        table = pd.concat([table.astype({k: object for k in figures}), pd.DataFrame([summary])], ignore_index=True)
    for col in ("val Dice", "val Hausdorff", "val score"):
        table[col] = table[col].map(lambda v: f"{v:.{digits}f}" if isinstance(v, float) else v)
    table["minutes"] = table["minutes"].map(lambda v: f"{v:.1f}")
    return table.set_index("run")


def compact_results(table: pd.DataFrame, runs: Sequence[Run] = (), digits: int = 3) -> pd.DataFrame:
    """:func:`gi_utils.report.results_table` in the columns a reader compares: the run, its
    fold, the validation Dice, Hausdorff term and score at the best epoch, the epochs, size
    and training minutes. Of ``runs`` (those of the table), one the session's time limit
    stopped says so beside its epochs (``2 of 2 run, 20 planned: stopped by the time
    limit``): its figures are those of an unfinished run."""
    stopped = {r.name: r.config.get("epochs") for r in runs if r.time_limit_stop}
    epochs = [f"{b:g} of {e:g}" + (f" run, {stopped[m]} planned: stopped by the time limit" if m in stopped else "")
              for m, b, e in zip(table["Model"], table["Best epoch"], table["Epochs"], strict=True)]  # fmt: skip
    out = pd.DataFrame({
        "run": table["Model"], "fold": table["Fold"], "Dice": table["Accuracy Dice"].round(digits),
        "Hausdorff": table["Hausdorff"].round(digits), "score": table["Score"].round(digits),
        "best epoch": epochs,
        "params (M)": table["Params (M)"].round(1), "minutes": table["Train time (min)"].round(1),
    })  # fmt: skip
    return out.set_index("run")


def compact_selection(table: pd.DataFrame) -> pd.DataFrame:
    """The selection table of :func:`gi_utils.report.select` in six columns: the candidate,
    its weights, its out-of-sample score (with the settings it submits, on the case-days all
    candidates cover, 95% interval), its difference to the chosen one, which
    post-processing it submits, and its score on the hold-out where there is one."""
    out = pd.DataFrame({
        "candidate": table["Model"], "weights": table["Weights"],
        "held-out score [95% interval]": table["Common"],
        "vs chosen": table["Δ vs chosen"].replace("", "chosen"),
        "post-processing": table["Post"].map({"tuned": "searched", "default": "model's own"}),
    })  # fmt: skip
    if "Hold-out tuned" in table:
        submitted = np.where(table["Post"] == "tuned", table["Hold-out tuned"], table["Hold-out default"])
        out["hold-out score"] = [f"{v:.3f}" if np.isfinite(v) else "" for v in submitted.astype(float)]
    return out.set_index("candidate")


def models_table(model_paths: Sequence[Any], weights: Sequence[float] | None = None) -> pd.DataFrame:
    """The models a submission averages: each file's run folder (or name) and its weight."""
    paths = [Path(p) for p in model_paths]
    weights = list(weights) if weights is not None else [1.0 / len(paths)] * len(paths)
    names = [p.parent.name if p.name == "best.safetensors" else p.stem for p in paths]
    return pd.DataFrame({"model": names, "weight": [round(w, 3) for w in weights]}).set_index("model")


def postprocess_table(post: Any) -> pd.DataFrame:
    """A :class:`~gi_utils.inference.PostProcess` as one row per organ: the threshold, the
    smallest component kept (pixels at the models' size), the slice gates and the tail cut
    (0: off)."""
    d = post.to_dict()
    return pd.DataFrame({
        "threshold": d["thresholds"], "min size (px)": d["min_size"], "slice gate": d["gate_max"],
        "gate head": d["gate_head"], "tail (slices)": d["tail"],
    }, index=pd.Index([c.replace("_", " ") for c in CLASSES], name="organ"))  # fmt: skip
