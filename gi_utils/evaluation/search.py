"""Post-processing searched on out-of-fold predictions against the competition score.

:func:`search_postprocess` tunes, class by class, the threshold, the minimum component size,
the slice gates (largest probability; classifier head) and the tail removal of a
:class:`~gi_utils.inference.PostProcess` by coordinate descent: each step tries every value
of one setting of one class with the others fixed, over every volume, and keeps the best
(a tie keeps the current value). It is deterministic and exact: the masks are built with
the same step functions as :meth:`PostProcess.apply`, and the score is the competition
score of :func:`~gi_utils.evaluation.metric.competition_score` (a test checks both).

It is fast because only the class being tuned is recomputed: the Dice sums and the
Hausdorff term of every (volume, class) are kept, the connected components of a volume are
labelled once per threshold, and the statistics of a mask already seen are reused (most
gate and tail values leave most volumes unchanged).

:func:`cross_fit` guards against fitting noise: it tunes on the volumes of all folds but
one and scores the held-out fold with the result, for each fold in turn, and keeps the
per case-day terms of both the tuned and the starting settings (:class:`ScoreTerms`, for
bootstrap intervals); with fewer than two folds the case-days are split in two halves by
case (:func:`~gi_utils.evaluation.bootstrap.case_halves`). :func:`cross_validated_search`
gives its mean scores over the folds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gi_utils.constants import CLASSES, DICE_WEIGHT, HAUSDORFF_WEIGHT, NUM_CLASSES
from gi_utils.evaluation.bootstrap import ScoreTerms, case_halves
from gi_utils.evaluation.hausdorff import pair_stats, voxel_coords
from gi_utils.inference.postprocessing import (
    PostProcess,
    keep_components,
    label_components,
    slice_gate,
    strip_tails,
)

__all__ = ["SEARCH_GRID", "MIN_GAIN", "SearchResult", "CrossFit", "VolumeSource", "search_postprocess",
           "cross_validated_search", "cross_fit", "score_with", "score_terms"]  # fmt: skip

#: Values tried per setting (``min_size`` in pixels at the volumes' resolution).
SEARCH_GRID: dict[str, tuple] = {
    "thresholds": (0.3, 0.4, 0.5, 0.6, 0.7),
    "min_size": (0, 10, 25, 50),
    "gate_max": (0.0, 0.5, 0.7, 0.9),
    "gate_head": (0.0, 0.3, 0.5, 0.7),
    "tail": (0, 1, 2),
}
#: The order in which the settings of a class are tuned.
_ORDER = ("thresholds", "min_size", "gate_max", "gate_head", "tail")

#: A source of volumes: called with a list of case-days (or None: all) and ``truth``
#: (False: leave the truth out), yields ``(case_day, probs uint8 (D, S, S, 3), truth bool
#: (D, S, S, 3) or None, gate (D, 3) or None)``.
VolumeSource = Callable[..., Iterable[tuple[str, np.ndarray, np.ndarray | None, np.ndarray | None]]]
#: A setting changes only when the score gains at least this much (less is noise).
MIN_GAIN: float = 1e-3


def _truth_coords(truth: np.ndarray) -> list[np.ndarray]:
    """Voxel coordinates (3, n) of each class of a bool (D, S, S, 3) truth."""
    return [voxel_coords(np.ascontiguousarray(truth[..., c])[..., None])[0] for c in range(NUM_CLASSES)]


@dataclass
class SearchResult:
    """What :func:`search_postprocess` found.

    Attributes:
        post: the tuned settings (``source="search"``).
        score, default_score: the competition score of the tuned and the starting settings
            on the volumes searched.
        trace: per class and setting, ``{value: score}`` of the first pass (for plots).
        evaluations: masks scored (cache hits not counted).
        terms, default_terms: the per case-day terms of ``score`` and ``default_score``.
    """

    post: PostProcess
    score: float
    default_score: float
    trace: dict[str, dict[str, dict[float, float]]] = field(default_factory=dict)
    evaluations: int = 0
    terms: ScoreTerms | None = None
    default_terms: ScoreTerms | None = None


def _mix(dice_sum: float, n_scored: float, hd: np.ndarray) -> float:
    dice = dice_sum / n_scored if n_scored else math.nan
    hd = hd[~np.isnan(hd)]
    h = float(hd.mean()) if hd.size else math.nan
    return DICE_WEIGHT * dice + HAUSDORFF_WEIGHT * (1.0 - h)


class _Stats:
    """Per (volume, class): Dice sum, scored pairs and Hausdorff term; the score from them."""

    def __init__(self, case_days: Sequence[str]) -> None:
        self.case_days = tuple(case_days)
        self.index = {cd: i for i, cd in enumerate(case_days)}
        n = len(case_days)
        self.dice = np.zeros((n, NUM_CLASSES))
        self.count = np.zeros((n, NUM_CLASSES))
        self.hd = np.full((n, NUM_CLASSES), math.nan)

    def score(self) -> float:
        return _mix(float(self.dice.sum()), float(self.count.sum()), self.hd.ravel())

    def terms(self) -> ScoreTerms:
        """A copy of the per case-day terms."""
        return ScoreTerms(self.case_days, self.dice.copy(), self.count.copy(), self.hd.copy())

    def score_with(self, c: int, dice: np.ndarray, count: np.ndarray, hd: np.ndarray) -> float:
        """The score if class ``c`` had these per-volume values."""
        d = self.dice.sum() - self.dice[:, c].sum() + dice.sum()
        n = self.count.sum() - self.count[:, c].sum() + count.sum()
        others = np.delete(self.hd, c, axis=1).ravel()
        return _mix(float(d), float(n), np.concatenate([others, hd]))


class _VolumeCache:
    """Masks of one (volume, class) for several settings, built with the shared steps."""

    def __init__(self, probs: np.ndarray, truth: np.ndarray, gate: np.ndarray | None, c: int) -> None:
        self.probs = probs[..., c]
        self.truth = truth  # voxel coordinates (3, n) of the class's true mask
        self.shape = self.probs.shape
        self.slice_max = self.probs.reshape(len(self.probs), -1).max(1) / 255.0
        self.head = None if gate is None else gate[:, c]
        self._labels: dict[float, list] = {}
        self._masks: dict[tuple, np.ndarray] = {}

    def mask(self, threshold: float, min_size: int) -> np.ndarray:
        """The thresholded mask without the components under ``min_size`` pixels."""
        key = (threshold, min_size)
        if key not in self._masks:
            if threshold not in self._labels:
                binary = self.probs > np.float32(threshold * 255.0)
                slices = np.flatnonzero(binary.reshape(len(binary), -1).any(1))
                self._labels[threshold] = [(d, binary[d], *label_components(binary[d])) for d in slices]
            out = np.zeros(self.shape, bool)
            for d, binary, labels, areas in self._labels[threshold]:
                out[d] = keep_components(labels, areas, min_size) if min_size > 1 else binary
            self._masks[key] = out
        return self._masks[key]


def _settings(post: PostProcess, c: int, size: tuple[int, int]) -> tuple:
    return (post.thresholds[c], post.sizes_for(size)[c], post.gate_max[c], post.gate_head[c], post.tail[c])


def _stats_of(cache: _VolumeCache, settings: tuple, memo: dict, key: tuple) -> tuple[float, int, float, bool]:
    """(Dice sum, scored pairs, Hausdorff, new) of one (volume, class) under ``settings``."""
    threshold, min_size, gate_max, gate_head, tail = settings
    mask = cache.mask(threshold, min_size)
    present = mask.reshape(len(mask), -1).any(1)
    keep = slice_gate(cache.slice_max, gate_max, cache.head, gate_head)
    keep &= strip_tails(present & keep, tail)
    kept = present & keep
    full_key = (*key, threshold, min_size, np.packbits(kept).tobytes())
    if full_key in memo:
        return (*memo[full_key], False)
    final = mask if kept.sum() == present.sum() else mask & kept[:, None, None]
    dice, hd = pair_stats(voxel_coords(final[..., None])[0], cache.truth, cache.shape, math.nan)
    scored = ~np.isnan(dice)
    value = (float(dice[scored].sum()), int(scored.sum()), hd)
    memo[full_key] = value
    return (*value, True)


def search_postprocess(
    volumes: VolumeSource, case_days: Sequence[str], start: PostProcess | None = None, *,
    grid: Mapping[str, Sequence] | None = None, rounds: int = 2, use_head: bool | None = None,
    memo: dict | None = None, min_gain: float = MIN_GAIN,
) -> SearchResult:  # fmt: skip
    """Coordinate-descent search of the post-processing on the volumes ``case_days``.

    Args:
        volumes: a :data:`VolumeSource` (e.g. :meth:`gi_utils.evaluation.OOFSet.source`).
        case_days: the volumes to tune on.
        start: the settings to start from (default: thresholds 0.5, nothing else). Its
            ``size_ref`` must be the volumes' size (or None): ``min_size`` values are
            pixels of the volumes' slices.
        grid: values per setting (default :data:`SEARCH_GRID`).
        rounds: passes over all settings of all classes (stops early when nothing changes).
        use_head: tune ``gate_head`` (default: when the volumes carry gate probabilities).
        memo: a dict shared between searches on the same volumes (reuses statistics).
        min_gain: a setting changes only when the score gains at least this much: smaller
            gains are within the noise of a validation set, and following them tunes to it.

    Returns:
        :class:`SearchResult`.
    """
    grid = {**SEARCH_GRID, **(grid or {})}
    memo = {} if memo is None else memo
    post = start or PostProcess()
    ref = post.size_ref
    stats = _Stats(case_days)
    sizes: dict[str, tuple[int, int]] = {}
    evaluations = 0
    has_head = False
    # starting statistics of every (volume, class)
    truths = memo.setdefault("truth", {})
    for cd, probs, truth, gate in volumes(list(case_days), truth=True):
        sizes[cd] = probs.shape[1:3]
        truths.setdefault(cd, _truth_coords(truth))
        if ref is not None and sizes[cd] != (ref, ref):
            raise ValueError(f"volume {cd!r} is {sizes[cd]}, the settings' size_ref is {ref}: "
                             "search on volumes at the models' img_size")  # fmt: skip
        has_head |= gate is not None
        i = stats.index[cd]
        for c in range(NUM_CLASSES):
            cache = _VolumeCache(probs, truths[cd][c], gate, c)
            d, n, h, new = _stats_of(cache, _settings(post, c, sizes[cd]), memo, (cd, c))
            stats.dice[i, c], stats.count[i, c], stats.hd[i, c] = d, n, h
            evaluations += new
    default_score, default_terms = stats.score(), stats.terms()
    use_head = has_head if use_head is None else use_head
    order = [name for name in _ORDER if name != "gate_head" or use_head]
    trace: dict[str, dict[str, dict[float, float]]] = {cls: {} for cls in CLASSES}
    for round_no in range(rounds):
        changed = False
        for c in range(NUM_CLASSES):
            for name in order:
                values = list(grid[name])
                n = len(case_days)
                per_value = {v: (np.zeros(n), np.zeros(n), np.full(n, math.nan)) for v in values}
                for cd, probs, _, gate in volumes(list(case_days), truth=False):
                    i = stats.index[cd]
                    cache = _VolumeCache(probs, truths[cd][c], gate, c)
                    base = _settings(post, c, sizes[cd])
                    for v in values:
                        trial = tuple(v if k == _ORDER.index(name) else x for k, x in enumerate(base))
                        d, cnt, h, new = _stats_of(cache, trial, memo, (cd, c))
                        per_value[v][0][i], per_value[v][1][i], per_value[v][2][i] = d, cnt, h
                        evaluations += new
                scores = {v: stats.score_with(c, *per_value[v]) for v in values}
                if round_no == 0:
                    trace[CLASSES[c]][name] = scores
                best = max(values, key=lambda v: scores[v])  # the first of equal scores
                if scores[best] >= stats.score() + min_gain:  # clearly better than the current settings
                    post = post.with_class(c, **{name: best})
                    stats.dice[:, c], stats.count[:, c], stats.hd[:, c] = per_value[best]
                    changed = True
        if not changed:
            break
    post = PostProcess(**{**post.to_dict(), "source": "search"})
    return SearchResult(post, stats.score(), default_score, trace, evaluations, stats.terms(), default_terms)


def score_with(volumes: VolumeSource, case_days: Sequence[str], post: PostProcess, memo: dict | None = None) -> float:
    """The competition score of ``post`` on the volumes ``case_days`` (the search's arithmetic)."""
    return score_terms(volumes, case_days, post, memo).score()


def score_terms(volumes: VolumeSource, case_days: Sequence[str], post: PostProcess,
                memo: dict | None = None) -> ScoreTerms:  # fmt: skip
    """The per case-day terms of the score of ``post`` on the volumes ``case_days``."""
    memo = {} if memo is None else memo
    stats = _Stats(case_days)
    truths = memo.setdefault("truth", {})
    for cd, probs, truth, gate in volumes(list(case_days), truth=_truth_missing(truths, case_days)):
        i = stats.index[cd]
        if truth is not None:
            truths.setdefault(cd, _truth_coords(truth))
        for c in range(NUM_CLASSES):
            cache = _VolumeCache(probs, truths[cd][c], gate, c)
            d, n, h, _ = _stats_of(cache, _settings(post, c, probs.shape[1:3]), memo, (cd, c))
            stats.dice[i, c], stats.count[i, c], stats.hd[i, c] = d, n, h
    return stats.terms()


def _truth_missing(truths: Mapping[str, Any], case_days: Sequence[str]) -> bool:
    """True when the truth of some of ``case_days`` is not cached yet."""
    return any(cd not in truths for cd in case_days)


@dataclass
class CrossFit:
    """What :func:`cross_fit` found.

    Attributes:
        folds: fold (or half) -> its case-days.
        by: ``"folds"`` (the models' own folds) or ``"case halves"`` (two halves by case).
        posts: fold -> the settings tuned on all the others.
        tuned: per case-day terms, each case-day under the settings tuned without its fold.
        default: the same case-days under the starting settings.
    """

    folds: dict[int, list[str]]
    by: str
    posts: dict[int, PostProcess]
    tuned: ScoreTerms
    default: ScoreTerms


def cross_fit(volumes: VolumeSource, folds: Mapping[int, Sequence[str]] | Sequence[str],
              start: PostProcess | None = None, **kwargs) -> CrossFit:  # fmt: skip
    """Tune on all folds but one, score the held-out fold, for each fold.

    Args:
        volumes: a :data:`VolumeSource`.
        folds: fold -> its case-days; with fewer than two folds (or a plain list of
            case-days) the case-days are split in two halves by case and each half is
            scored with the settings tuned on the other (cross-fitting).
        start: the starting (default) settings.
        kwargs: options of :func:`search_postprocess` (``memo`` shared by every search).

    Raises:
        ValueError: fewer than two folds and fewer than two cases (names the counts).
    """
    if isinstance(folds, Mapping) and len(folds) >= 2:
        folds, by = {int(k): list(v) for k, v in sorted(folds.items())}, "folds"
    else:
        every = [cd for cds in folds.values() for cd in cds] if isinstance(folds, Mapping) else list(folds)
        folds, by = case_halves(every), "case halves"
    memo = kwargs.pop("memo", {})
    start = start or PostProcess()
    posts, tuned, default = {}, [], []
    for k, held in folds.items():
        rest = [cd for j, cds in folds.items() if j != k for cd in cds]
        posts[k] = search_postprocess(volumes, rest, start, memo=memo, **kwargs).post
        tuned.append(score_terms(volumes, held, posts[k], memo))
        default.append(score_terms(volumes, held, start, memo))
    return CrossFit(folds, by, posts, ScoreTerms.concat(tuned), ScoreTerms.concat(default))


def cross_validated_search(
    volumes: VolumeSource, folds: Mapping[int, Sequence[str]], start: PostProcess | None = None, **kwargs
) -> dict[str, float]:
    """Tune on all folds but one, score the held-out fold, for each fold (:func:`cross_fit`).

    Args:
        folds: fold -> its case-days (at least two folds).

    Returns:
        ``{"tuned_held_out": mean over folds of the held-out score with settings tuned on
        the others, "default_held_out": the same folds under ``start``, "fold_<k>": each
        held-out tuned score}``.
    """
    if len(folds) < 2:
        raise ValueError(f"cross_validated_search needs at least 2 folds, got {sorted(folds)}")
    fit = cross_fit(volumes, folds, start, **kwargs)
    out: dict[str, float] = {}
    tuned, default = [], []
    for k, held in fit.folds.items():
        tuned.append(fit.tuned.subset(held).score())
        default.append(fit.default.subset(held).score())
        out[f"fold_{k}"] = tuned[-1]
    out["tuned_held_out"] = float(np.mean(tuned))
    out["default_held_out"] = float(np.mean(default))
    return out
