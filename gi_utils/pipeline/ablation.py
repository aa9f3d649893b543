"""An honest ablation of the winners' levers on the synthetic data:
``python -m gi_utils.pipeline ablation`` (``make ablation``).

Fold 0 at the demo's scale: a baseline run of the ``demo`` preset, then one run per lever
with that lever alone switched on (:data:`LEVERS`; ``-p NAME VALUE`` changes every run,
``--levers`` picks some). Every run's model predicts its validation scans at their own
resolution, as a submission does (a body-cropped model's predictions mapped back through
its box), and is scored with the competition metric; each lever's score is compared with
its reference run on the same case-days, with a paired bootstrap interval
(:func:`gi_utils.evaluation.paired_difference`, case-days resampled). A difference whose
interval holds 0 is within the noise of the fold's case-days.

The figures are of the synthetic phantom, not of the competition's data: they say whether
a lever works as built, not what it gains on the leaderboard. Where the phantom cannot
show what a lever is for, the table says why instead of showing a number (the tail filter:
the phantom's masks are complete; larger encoders: no pretrained weights offline).

Each run is a normal resumable run folder under ``<runs_dir>/ablation/`` (classification
and 3-D round-1 runs under ``pretrain/``, out of 03's sight); a second call continues where
the first stopped, and the table is written to ``ablation.md`` and ``ablation.json`` there.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from gi_utils.atomic import atomic_write_json, atomic_write_text
from gi_utils.constants import CLASSES
from gi_utils.data.images import read_volume_mask
from gi_utils.data.layout import build_metadata
from gi_utils.evaluation.bootstrap import (
    ScoreTerms,
    paired_difference,
    score_interval,
    terms_of_result,
)
from gi_utils.evaluation.metric import ScoreAccumulator
from gi_utils.inference.postprocessing import PostProcess
from gi_utils.inference.predict import load_models, predict_volumes
from gi_utils.models.run_folder import MODEL_FILE, SWA_MODEL_FILE
from gi_utils.paths import default_runs_dir
from gi_utils.pipeline.data_root import ensure_data
from gi_utils.report.runs import load_run
from gi_utils.training.config import TrainConfig
from gi_utils.training.launcher import launch
from gi_utils.training.presets import preset_config

__all__ = ["ABLATION_DIR", "BASE_RUNS", "LEVERS", "Lever", "parse_levers", "run_ablation", "score_run",
           "ablation_markdown"]  # fmt: skip

#: The ablation's folder under the runs folder.
ABLATION_DIR = "ablation"
_PRETRAIN = "pretrain"
_LABEL = "synthetic data (the phantom of gi_utils.synthetic), not the competition's"


@dataclass(frozen=True)
class Lever:
    """One lever of the ablation.

    Attributes:
        name: its run folder's name and its row in the table.
        source: who used it (docs/levers.md).
        changes: the TrainConfig values it sets, given the baseline's config.
        reference: the run it is compared with (:data:`BASE_RUNS` or another lever).
        first: a run trained before it, whose weights it starts from (``init_from``):
            the classification-first run, the 3-D round 1 on crops.
        unmeasured: why the synthetic data cannot show it (then nothing is trained).
        model_file: the file of the run folder scored: the run's best model, or for SWA
            the average itself (a run keeps its best epoch where that scores higher, which
            would score the baseline's model again).
    """

    name: str
    source: str
    changes: Callable[[TrainConfig], dict[str, Any]] = field(default=lambda base: {})
    reference: str = "baseline"
    first: Callable[[TrainConfig], dict[str, Any]] | None = None
    unmeasured: str = ""
    model_file: str = MODEL_FILE


#: Runs that are references, not levers: the demo baseline, the baseline with the
#: classifier gate (the reference of the classification-first run), the 3-D model.
BASE_RUNS: dict[str, Callable[[TrainConfig], dict[str, Any]]] = {
    "baseline": lambda base: {},
    "gate": lambda base: {"gate": True},
    "segresnet3d": lambda base: {"arch": "segresnet3d"},
}

_LEVER_LIST = [
    Lever("swa", "3rd, 2nd", lambda base: {"swa_epochs": max(1, base.epochs // 2)}, model_file=SWA_MODEL_FILE),
    Lever("lovasz", "3rd", lambda base: {"loss": "bce_dice_lovasz"}),
    Lever("cutmix_mixup", "3rd", lambda base: {"mix": "cutmix_mixup", "mix_p": 0.33}),
    Lever("five_slices", "3rd, 2nd", lambda base: {"slice_offsets": [-2, -1, 0, 1, 2]}),
    Lever("body_crop", "3rd, 2nd", lambda base: {"resize_mode": "crop", "cache_masks": True}),
    Lever("classification_first", "3rd", lambda base: {"gate": True}, reference="gate",
          first=lambda base: {"gate": True, "seg_weight": 0.0, "sample_empty_fraction": 1.0}),
    Lever("tail_filter", "1st", unmeasured=(
        "not measured: the phantom's masks are complete, so no slice past the last annotated one "
        "shows an unannotated organ; there is nothing ambiguous for the filter to drop")),
    Lever("larger_encoder", "3rd, 1st", unmeasured=(
        "not measured: the write-ups' gain comes with ImageNet weights on the full data; offline, at "
        "128 px, for a few hundred CPU steps, a larger encoder would measure the step budget, not the encoder")),
    Lever("3d_crops", "1st", lambda base: {"arch": "segresnet3d", "patch_size": 0, "lr": base.lr / 3, "epochs": 2},
          reference="segresnet3d",
          first=lambda base: {"arch": "segresnet3d", "patch_size": base.img_size // 2}),
]  # fmt: skip
#: Every lever, by name (``3d_crops`` is asked for by name: it is the slowest).
LEVERS: dict[str, Lever] = {lever.name: lever for lever in _LEVER_LIST}
_DEFAULT = tuple(name for name in LEVERS if name != "3d_crops")


def parse_levers(levers: str | Sequence[str]) -> list[str]:
    """``"all"`` -> every lever but ``3d_crops``; ``"swa,lovasz"`` -> those.

    Raises:
        ValueError: an unknown name (the valid ones listed).
    """
    names = list(_DEFAULT) if levers == "all" else (
        [n.strip() for n in levers.split(",") if n.strip()] if isinstance(levers, str) else list(levers))  # fmt: skip
    bad = [n for n in names if n not in LEVERS]
    if bad or not names:
        raise ValueError(f"levers {bad or names} are not valid; choose 'all' or some of {', '.join(LEVERS)}")
    return names




def score_run(run_dir: str | os.PathLike, data_dir: str | os.PathLike, device: str | None = None,
              model_file: str = MODEL_FILE) -> ScoreTerms:  # fmt: skip
    """The competition score's terms of a run's model (``model_file`` in its folder) on its
    validation scans, predicted at their own resolution (as a submission is) and
    post-processed with its run's threshold and minimum size."""
    run = load_run(run_dir)
    cfg = run.config
    meta = build_metadata(data_dir, "train")
    val = meta.loc[meta["case_day"].isin(run.split["val_case_days"])]
    models = load_models([Path(run_dir) / model_file], device)
    post = PostProcess((cfg["threshold"],) * len(CLASSES), (cfg["min_size"],) * len(CLASSES), size_ref=cfg["img_size"])
    acc = ScoreAccumulator()
    for case_day, rows, probs, gate in predict_volumes(models, val, device=device, progress=False):
        acc.add(case_day, post.apply(probs, gate), read_volume_mask(rows))
    return terms_of_result(acc.result())


def run_ablation(
    preset: str = "demo", levers: str | Sequence[str] = "all", overrides: Mapping[str, Any] | None = None, *,
    fold: int = 0, runs_dir: str | os.PathLike | None = None, data_dir: str | os.PathLike = "",
    num_processes: int = 1, device: str | None = None,
) -> pd.DataFrame:  # fmt: skip
    """Train what :data:`LEVERS` (``levers``) need on ``fold``, score it, write the table.

    Returns:
        One row per lever: ``lever, source, reference, reference_score, score,
        difference, low, high, note`` (NaN and the reason for an unmeasured lever).
    """
    names = parse_levers(levers)
    root = ensure_data(data_dir)
    out = default_runs_dir(runs_dir) / ABLATION_DIR
    given = {**dict(overrides or {}), "fold": fold, "data_dir": str(root)}
    base = preset_config(preset, **given)
    trained: dict[str, Path] = {}

    def train_in(folder: Path, changes: Mapping[str, Any]) -> Path:
        print(f"=== ablation: {folder.name}", flush=True)  # the preset's values for the run's own arch
        launch(preset_config(preset, **{**given, **changes, "out_dir": str(folder)}), num_processes)
        return folder

    def run(name: str) -> Path:
        if name not in trained:
            lever = LEVERS.get(name)
            changes = dict(BASE_RUNS[name](base)) if lever is None else dict(lever.changes(base))
            if lever is not None and lever.first is not None:
                changes["init_from"] = str(train_in(out / _PRETRAIN / f"{name}_first", lever.first(base)))
            trained[name] = train_in(out / name, changes)
        return trained[name]

    rows = []
    terms: dict[str, ScoreTerms] = {}
    for name in names:
        lever = LEVERS[name]
        row = {"lever": name, "source": lever.source}
        if lever.unmeasured:
            rows.append({**row, "note": lever.unmeasured})
            continue
        for which in (lever.reference, name):
            if which not in terms:
                file = LEVERS[which].model_file if which in LEVERS else MODEL_FILE
                terms[which] = score_run(run(which), root, device, file)
        ref, own = terms[lever.reference], terms[name]
        diff = paired_difference(own, ref)
        verdict = "a gain" if diff.above_zero else "a loss" if diff.high < 0 else "within the noise"
        rows.append({**row, "reference": lever.reference, "reference_score": score_interval(ref).value,
                     "score": score_interval(own).value, "difference": diff.value, "low": diff.low, "high": diff.high,
                     "note": verdict})  # fmt: skip
    table = pd.DataFrame(rows)
    atomic_write_json(out / "ablation.json", {"data": _LABEL, "preset": preset, "fold": fold,
                                             "overrides": dict(overrides or {}), "rows": rows})  # fmt: skip
    atomic_write_text(out / "ablation.md", ablation_markdown(table, preset, fold))
    return table


def ablation_markdown(table: pd.DataFrame, preset: str, fold: int) -> str:
    """The ablation table in Markdown, labelled with its data, preset and fold."""
    head = (f"Ablation on {_LABEL}: fold {fold}, preset `{preset}`; each lever alone against its reference, "
            "scored at the scans' own resolution; difference with its 95% paired bootstrap interval over case-days.\n\n"
            "| lever | used by | compared with | reference | with the lever | difference [95% interval] | |\n"
            "|---|---|---|---|---|---|---|\n")  # fmt: skip
    lines = []
    for r in table.to_dict("records"):
        if "score" not in r or pd.isna(r["score"]):
            lines.append(f"| {r['lever']} | {r['source']} | | | | | {r['note']} |")
            continue
        lines.append(f"| {r['lever']} | {r['source']} | {r['reference']} | {r['reference_score']:.3f} | "
                     f"{r['score']:.3f} | {r['difference']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}] | {r['note']} |")  # fmt: skip
    return head + "\n".join(lines) + "\n"
