"""Choosing what reaches ``submission.csv`` by measurement on out-of-fold predictions.

:func:`select` groups the finished runs by configuration (the folds of one architecture
form one model), builds every single model and every blend of two or more (weights on a
grid, chosen on the OOF score), searches each one's post-processing on its OOF volumes,
scores the search out of sample (:func:`~gi_utils.evaluation.cross_fit`: tuned on the other
folds, or on the other half of the cases where a model or blend has one fold), and
chooses by the rules of :mod:`gi_utils.report.decisions` (the simpler option unless the
other's out-of-sample gain is beyond the bootstrap noise). The table has, per candidate:
the fold scores (mean and spread), the OOF score with the models' own settings and with
the searched ones (in-sample), the same two out of sample, the gain of the search and
whether it is kept, the out-of-sample score with the submitted settings on the case-days
all candidates cover and its difference to the chosen one, false-positive slices, and the
searched settings; every score with its 95% bootstrap interval over case-days
(``0.905 [0.893, 0.915]``). The chosen configuration (members, weights, post-processing,
figures, reasons) is written as JSON (:func:`write_best_config`); ``04_submission`` uses
it by default. A configuration that
also has a whole-data run (fold -1, ``cv --final``) submits that run's model with the
post-processing searched on its folds' out-of-fold predictions (:func:`final_runs`).
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gi_utils.atomic import atomic_write_json, read_json
from gi_utils.evaluation.bootstrap import (
    Interval,
    ScoreTerms,
    case_of,
    paired_difference,
    score_interval,
)
from gi_utils.evaluation.ensemble import Blend, weight_grid
from gi_utils.evaluation.oof import OOFCollection, OOFSet, false_positive_slices
from gi_utils.evaluation.search import (
    CrossFit,
    SearchResult,
    cross_fit,
    score_with,
    search_postprocess,
)
from gi_utils.inference.postprocessing import PostProcess
from gi_utils.models.io import ModelConfig
from gi_utils.models.run_folder import PER_RUN_FIELDS, model_stem
from gi_utils.report.decisions import decide, keep_searched
from gi_utils.report.runs import Run

__all__ = ["BEST_CONFIG_NAME", "Candidate", "group_runs", "final_runs", "select", "write_best_config",
           "read_best_config"]  # fmt: skip

BEST_CONFIG_NAME = "best_config.json"
#: What a whole-data run (fold -1, ``cv --final``) changes besides: its epochs are the mean
#: best epoch of its folds, with no early stopping.
_FINAL_ONLY = frozenset({"epochs", "patience"})


def _config_key(run: Run, ignore: frozenset[str] = PER_RUN_FIELDS) -> dict:
    return {k: v for k, v in run.config.items() if k not in ignore}


def final_runs(runs: list[Run], groups: dict[str, list[Run]]) -> dict[str, Run]:
    """The whole-data run (fold -1) of each group of CV runs, where there is one.

    A whole-data run belongs to the group of the same model whose configuration equals
    its own but for the fold, the epochs and early stopping; it has no out-of-fold set of
    its own, so it is submitted with the post-processing searched on its group's.

    Raises:
        ValueError: two whole-data runs of one group (names them).
    """
    out: dict[str, Run] = {}
    for run in runs:
        if int(run.config.get("fold", 0)) != -1:
            continue
        name = model_stem(run.config)
        key = _config_key(run, PER_RUN_FIELDS | _FINAL_ONLY)
        if name in groups and all(_config_key(r, PER_RUN_FIELDS | _FINAL_ONLY) == key for r in groups[name]):
            if name in out:
                raise ValueError(f"two whole-data runs of {name}: {out[name].name} and {run.name}")
            out[name] = run
    return out


def group_runs(runs: list[Run]) -> dict[str, list[Run]]:
    """Validated runs with an OOF set, grouped by configuration (all but the fold).

    Raises:
        ValueError: two runs share a name but not a configuration (names the runs).
    """
    groups: dict[str, list[Run]] = {}
    keys: dict[str, dict] = {}
    for run in runs:
        if not (run.oof_path / "index.json").is_file():
            continue  # fold=-1 (all cases) or an old run: no honest validation
        name, key = model_stem(run.config), _config_key(run)
        if name in keys and keys[name] != key:
            diff = sorted(k for k in key if key[k] != keys[name].get(k))
            raise ValueError(f"runs {groups[name][0].name} and {run.name} share the name {name} but differ in {diff}")
        keys[name] = key
        groups.setdefault(name, []).append(run)
    return {k: sorted(v, key=lambda r: r.config["fold"]) for k, v in groups.items()}


def _default_post(runs: list[Run]) -> PostProcess:
    return PostProcess.from_model_configs([ModelConfig.from_run_config(r.config) for r in runs])


@dataclass
class Candidate:
    """One model or blend: its members (lists of fold runs), weights and OOF volumes."""

    name: str
    members: list[list[Run]]
    weights: tuple[float, ...]
    source: Any  # OOFCollection or Blend
    default: PostProcess
    searched: SearchResult | None = None
    row: dict[str, Any] = field(default_factory=dict)
    #: Per member, the whole-data run submitted instead of its folds (None: the folds).
    finals: tuple[Run | None, ...] = ()
    #: The search scored out of sample (None: one case, nothing to hold out).
    fit: CrossFit | None = None
    #: Whether the searched settings are submitted, and their out-of-sample gain.
    keep_tuned: bool = False
    post_gain: Interval | None = None
    #: Out-of-sample terms under the settings it would submit (ranking and comparisons).
    honest: ScoreTerms | None = None
    #: Figures as ``[value, low, high]`` (for JSON), and why it was chosen (first candidate).
    figures: dict[str, list[float]] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    @property
    def member_names(self) -> tuple[str, ...]:
        """The model name of each member."""
        return tuple(model_stem(member[0].config) for member in self.members)

    @property
    def post(self) -> PostProcess:
        """The post-processing it submits: the searched one where it beat the default out
        of sample (:attr:`keep_tuned`), else the models' own."""
        return self.searched.post if self.keep_tuned and self.searched else self.default

    @property
    def submitted_finals(self) -> list[str]:
        """The whole-data runs it submits instead of folds."""
        return [r.name for r in self.finals if r is not None]

    @property
    def case_days(self) -> list[str]:
        return list(self.source.case_days)

    @property
    def submitted(self) -> list[list[Run]]:
        """Per member, the runs whose models are submitted: its whole-data run where it
        has one, else its folds (averaged at inference)."""
        finals = self.finals or (None,) * len(self.members)
        return [[final] if final is not None else member for member, final in zip(self.members, finals, strict=True)]

    @property
    def model_paths(self) -> list[Path]:
        """The model of every submitted run of every member (:attr:`submitted`)."""
        return [run.model_path for member in self.submitted for run in member]

    @property
    def path_weights(self) -> list[float]:
        """A weight per model of :attr:`model_paths` (a member's weight shared by its runs)."""
        return [w / len(member) for member, w in zip(self.submitted, self.weights, strict=True) for _ in member]

    @property
    def run_names(self) -> list[str]:
        """The run folder of each of :attr:`model_paths`."""
        return [run.name for member in self.submitted for run in member]


def _fold_scores(runs: list[Run]) -> list[float]:
    return [float((r.metrics.get("best") or {}).get("val_score", math.nan)) for r in runs]


def _candidates(groups: dict[str, list[Run]], blend_step: float, max_members: int) -> list[Candidate]:
    singles = {name: OOFCollection([OOFSet(r.oof_path) for r in runs], name) for name, runs in groups.items()}
    out = [Candidate(name, [groups[name]], (1.0,), singles[name], _default_post(groups[name])) for name in groups]
    names = list(groups)
    for k in range(2, min(max_members, len(names)) + 1):
        for combo in itertools.combinations(names, k):
            members = [singles[n] for n in combo]
            runs = [r for n in combo for r in groups[n]]
            default = _default_post(runs)
            blend = Blend(members)
            if not blend.case_days:
                continue
            best_w, best_s = None, -math.inf
            for w in weight_grid(k, blend_step):  # weights chosen on the OOF score (models' settings)
                s = score_with(Blend(members, w).source, blend.case_days, default)
                if s > best_s:
                    best_w, best_s = w, s
            out.append(Candidate(" + ".join(combo), [groups[n] for n in combo], best_w, Blend(members, best_w), default))
    return out


def select(runs: list[Run], *, blend_step: float = 0.25, max_members: int = 3) -> tuple[pd.DataFrame, list[Candidate]]:
    """Evaluate every model and blend of ``runs`` and choose one (see the module docstring).

    Returns:
        ``(table, candidates)``: one row per candidate and the candidates, the chosen one
        first (:func:`~gi_utils.report.decisions.decide`), then the others ranked by their
        out-of-sample score on the case-days all candidates cover. The first candidate
        carries the reasons of the choice (:func:`~gi_utils.report.decisions.explain_choice`).

    Raises:
        ValueError: no run has an out-of-fold set.
    """
    groups = group_runs(runs)
    if not groups:
        raise ValueError("no finished run with an out-of-fold set to select from")
    cands = _candidates(groups, blend_step, max_members)
    finals = final_runs(runs, groups)
    for cand in cands:
        cand.finals = tuple(finals.get(model_stem(member[0].config)) for member in cand.members)
    common = [cd for cd in cands[0].case_days if all(cd in set(c.case_days) for c in cands[1:])]
    starts = {}
    for cand in cands:
        start = starts[cand.name] = PostProcess(**{**cand.default.to_dict(), "size_ref": cand.source.img_size})
        memo: dict = {}
        cand.searched = search_postprocess(cand.source.source, cand.case_days, start, memo=memo)
        folds = _folds_of(cand)
        if len(folds) >= 2 or len({case_of(cd) for cd in cand.case_days}) >= 2:
            cand.fit = cross_fit(cand.source.source, folds if len(folds) >= 2 else cand.case_days, start, memo=memo)
        cand.keep_tuned, cand.post_gain = keep_searched(cand.fit)
        if cand.fit is None:  # nothing to hold out: the default, which nothing tuned, is out of sample anyway
            cand.honest = cand.searched.default_terms
        else:
            cand.honest = cand.fit.tuned if cand.keep_tuned else cand.fit.default
    cands, reasons = decide(cands, common)
    cands[0].reasons = reasons
    for cand in cands:
        _fill_row(cand, cands[0], common, starts[cand.name])
    return pd.DataFrame([c.row for c in cands]), cands


def _fill_row(cand: Candidate, chosen: Candidate, common: list[str], start: PostProcess) -> None:
    """The table row and the figures of one candidate."""
    nan = Interval(math.nan, math.nan, math.nan)
    fit = cand.fit
    figures = {
        "oof_default": score_interval(cand.searched.default_terms), "oof_tuned": score_interval(cand.searched.terms),
        "held_out_default": score_interval(fit.default) if fit else nan,
        "held_out_tuned": score_interval(fit.tuned) if fit else nan, "tuned_gain": cand.post_gain or nan,
        "common": score_interval(cand.honest.subset(common)),
        "vs_chosen": nan if cand is chosen else paired_difference(cand.honest, chosen.honest, common),
    }  # fmt: skip
    held_on = "" if fit is None else f"{len(fit.folds)} folds" if fit.by == "folds" else "case halves"
    fp0, fp1 = (false_positive_slices(cand.source, p, cand.case_days)["fp_slices"]
                for p in (start, cand.searched.post))  # fmt: skip
    cand.row = {
        "Model": cand.name, "Weights": "/".join(f"{w:g}" for w in cand.weights),
        "Folds": len(cand.members[0]) if len(cand.members) == 1 else "",
        "Fold score": _mean_std(_fold_scores(cand.members[0])) if len(cand.members) == 1 else "",
        "OOF case-days": len(cand.case_days),
        "OOF default": str(figures["oof_default"]), "OOF tuned": str(figures["oof_tuned"]),
        "Held out on": held_on, "Held-out default": str(figures["held_out_default"]),
        "Held-out tuned": str(figures["held_out_tuned"]), "Tuned gain": figures["tuned_gain"].signed(),
        "Post": "tuned" if cand.keep_tuned else "default", "Common": str(figures["common"]),
        "Δ vs chosen": figures["vs_chosen"].signed(), "FP slices default": fp0, "FP slices tuned": fp1,
        "Settings": _describe(cand.searched.post),
    }  # fmt: skip
    cand.figures = {k: v.to_list() for k, v in figures.items()}


def _folds_of(cand: Candidate) -> dict[int, list[str]]:
    if len(cand.members) != 1:
        return {}
    return {k: v for k, v in cand.source.folds.items() if k >= 0}


def _mean_std(values: list[float]) -> str:
    v = np.asarray(values, float)
    return f"{v.mean():.3f}" if len(v) == 1 else f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"


def _describe(post: PostProcess) -> str:
    parts = []
    for c, short in enumerate(("lb", "sb", "st")):
        bits = [f"t{post.thresholds[c]:g}"]
        if post.min_size[c]:
            bits.append(f"min{post.min_size[c]}")
        if post.gate_max[c]:
            bits.append(f"max{post.gate_max[c]:g}")
        if post.gate_head[c]:
            bits.append(f"head{post.gate_head[c]:g}")
        if post.tail[c]:
            bits.append(f"tail{post.tail[c]}")
        parts.append(f"{short}: {' '.join(bits)}")
    return "; ".join(parts)


def write_best_config(path: str | os.PathLike, best: Candidate, extra: dict[str, Any] | None = None) -> Path:
    """The chosen configuration as JSON: model paths (relative to the file) with their run
    folders' names and weights, the post-processing it submits (``post``: the searched
    settings where they beat the default out of sample, else the models' own; both are
    kept, as ``searched_post`` and ``default_post``), the table's figures (``scores``;
    ``figures``: ``[value, low, high]``) and the reasons of the choice (``reasons``, one
    sentence per decision). Nothing in it is absolute, so the file and the runs can move
    (an attached Kaggle dataset, another notebook)."""
    here = Path(path).parent
    record = {
        "name": best.name, "model_paths": [os.path.relpath(p, here) for p in best.model_paths],
        "runs": best.run_names, "weights": best.path_weights,
        "whole_data": [r.name for r in best.finals if r is not None],
        "post": best.post.to_dict(), "default_post": best.default.to_dict(),
        "searched_post": best.searched.post.to_dict() if best.searched else None,
        "post_kept": "searched" if best.keep_tuned else "default",
        "scores": {k: v for k, v in best.row.items() if k != "Model"}, "figures": best.figures,
        "reasons": list(best.reasons),
        **(extra or {}),
    }  # fmt: skip
    return atomic_write_json(path, record)


def read_best_config(path: str | os.PathLike, runs_roots: list[Path] | tuple[Path, ...] = ()) -> dict[str, Any]:
    """A best configuration written by :func:`write_best_config`, its settings as
    :class:`PostProcess` (``post``, ``default_post``) and its model files checked.

    A relative model path is relative to the file; where it is not there (the runs were
    attached elsewhere), the model is looked up by its run folder's name in ``runs_roots``.

    Raises:
        FileNotFoundError: the file or one of its models is missing (names it and where
            it was looked for).
    """
    record = read_json(path)
    here = Path(path).parent
    names = record.get("runs") or [None] * len(record["model_paths"])
    paths, missing = [], []
    for p, run in zip(record["model_paths"], names, strict=True):
        places = [Path(p) if Path(p).is_absolute() else here / p]
        places += [Path(r) / run / Path(p).name for r in runs_roots] if run else []
        found = next((q for q in places if q.is_file()), None)
        paths.append(str(found or places[0]))
        if found is None:
            missing.append(f"{p} (looked in {', '.join(str(q.parent) for q in places)})")
    if missing:
        raise FileNotFoundError(f"{path} names model file(s) that do not exist: {missing[:3]}")
    record["model_paths"] = paths
    record["post"] = PostProcess.from_dict(record["post"])
    record["default_post"] = PostProcess.from_dict(record["default_post"])
    return record
