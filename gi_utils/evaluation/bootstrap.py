"""The noise of a score: case-days resampled with replacement (bootstrap), fixed seed.

The competition score of a set of case-days is built from sums over them: the Dice sum
and the number of scored (slice, class) pairs, and the Hausdorff terms of the scored
(case-day, class) volumes. :class:`ScoreTerms` keeps those per case-day, so a resampled
score is arithmetic on a ``(resamples, case-days)`` matrix of counts, never a re-scoring:
``score = 0.4 * (w . dice) / (w . pairs) + 0.6 * (1 - (w . hd) / (w . volumes))`` for
the counts ``w`` of one resample.

:func:`score_interval` gives the 95% percentile interval of one score;
:func:`paired_difference` the interval of the difference between two scores on the same
case-days (each resample draws the same case-days for both, so what both get right or
wrong alike cancels). A difference whose interval holds 0 is within the noise.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gi_utils.constants import CLASSES, DICE_WEIGHT, HAUSDORFF_WEIGHT, NUM_CLASSES
from gi_utils.evaluation.metric import ScoreResult

__all__ = ["BOOTSTRAP_RESAMPLES", "BOOTSTRAP_SEED", "INTERVAL_LEVEL", "ScoreTerms", "Interval", "resample_counts",
           "score_interval", "paired_difference", "case_of", "case_halves", "terms_of_result"]  # fmt: skip

#: Resamples per interval, the generator's seed and the interval's coverage.
BOOTSTRAP_RESAMPLES: int = 1000
BOOTSTRAP_SEED: int = 0
INTERVAL_LEVEL: float = 0.95


@dataclass(frozen=True)
class ScoreTerms:
    """Per case-day parts of the competition score under one set of settings.

    Attributes:
        case_days: the case-days, in row order.
        dice: float (n, 3): the Dice sum of each (case-day, class) over its scored slices.
        count: float (n, 3): the scored (slice, class) pairs (both empty: not scored).
        hd: float (n, 3): the Hausdorff term of each (case-day, class); NaN when both the
            prediction and the truth are empty (not scored).
    """

    case_days: tuple[str, ...]
    dice: np.ndarray
    count: np.ndarray
    hd: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.case_days)
        for name in ("dice", "count", "hd"):
            if np.shape(getattr(self, name)) != (n, NUM_CLASSES):
                raise ValueError(f"ScoreTerms.{name} is {np.shape(getattr(self, name))}, expected ({n}, {NUM_CLASSES})")

    def score(self) -> float:
        """The competition score of all the case-days (NaN when nothing is scored)."""
        return float(_scores(self, np.ones((1, len(self.case_days))))[0])

    def subset(self, case_days: Sequence[str]) -> ScoreTerms:
        """The terms of ``case_days`` (in that order).

        Raises:
            KeyError: a case-day these terms do not hold (names it).
        """
        index = {cd: i for i, cd in enumerate(self.case_days)}
        missing = [cd for cd in case_days if cd not in index]
        if missing:
            raise KeyError(f"case-days {missing[:3]} are not in these score terms")
        rows = [index[cd] for cd in case_days]
        return ScoreTerms(tuple(case_days), self.dice[rows], self.count[rows], self.hd[rows])

    @staticmethod
    def concat(parts: Sequence[ScoreTerms]) -> ScoreTerms:
        """The terms of several disjoint sets of case-days, one after the other."""
        return ScoreTerms(tuple(cd for p in parts for cd in p.case_days), *(
            np.concatenate([getattr(p, k) for p in parts]) for k in ("dice", "count", "hd")))  # fmt: skip


@dataclass(frozen=True)
class Interval:
    """A figure and its bootstrap interval ``[low, high]``."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return "" if math.isnan(self.value) else f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def signed(self) -> str:
        """``+0.004 [-0.001, +0.009]`` (for differences)."""
        return "" if math.isnan(self.value) else f"{self.value:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"

    @property
    def above_zero(self) -> bool:
        """The whole interval is above 0: a gain beyond the noise."""
        return self.low > 0

    def to_list(self) -> list[float]:
        return [self.value, self.low, self.high]


def resample_counts(n: int, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """How many times each of ``n`` case-days is drawn in each resample: int (B, n), rows
    summing to ``n``. The same ``(n, n_resamples, seed)`` gives the same matrix."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_resamples, n))
    return np.stack([np.bincount(row, minlength=n) for row in draws]) if n else np.zeros((n_resamples, 0), int)


def _scores(terms: ScoreTerms, counts: np.ndarray) -> np.ndarray:
    """The score of each resample (rows of ``counts``, (B, n)): (B,)."""
    w = np.asarray(counts, np.float64)
    scored = ~np.isnan(terms.hd)
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = (w @ terms.dice.sum(1)) / (w @ terms.count.sum(1))
        hd = (w @ np.where(scored, terms.hd, 0.0).sum(1)) / (w @ scored.sum(1))
    return DICE_WEIGHT * dice + HAUSDORFF_WEIGHT * (1.0 - hd)


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    values = values[~np.isnan(values)]
    if not values.size:
        return math.nan, math.nan
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def score_interval(terms: ScoreTerms, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                   level: float = INTERVAL_LEVEL) -> Interval:  # fmt: skip
    """The score of ``terms`` and its ``level`` percentile interval over case-days
    resampled with replacement (NaN for no case-day)."""
    if not terms.case_days:
        return Interval(math.nan, math.nan, math.nan)
    counts = resample_counts(len(terms.case_days), n_resamples, seed)
    return Interval(terms.score(), *_percentiles(_scores(terms, counts), level))


def paired_difference(
    a: ScoreTerms, b: ScoreTerms, case_days: Sequence[str] | None = None, n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED, level: float = INTERVAL_LEVEL,
) -> Interval:  # fmt: skip
    """``score(a) - score(b)`` on the same case-days and its paired bootstrap interval.

    Args:
        a, b: the terms of two candidates (or two settings of one).
        case_days: where to compare (default: the case-days of ``a`` that ``b`` also has).

    Raises:
        KeyError: one of ``case_days`` is missing from ``a`` or ``b`` (names it).
    """
    if case_days is None:
        held = set(b.case_days)
        case_days = [cd for cd in a.case_days if cd in held]
    if not case_days:
        return Interval(math.nan, math.nan, math.nan)
    a, b = a.subset(case_days), b.subset(case_days)
    counts = resample_counts(len(case_days), n_resamples, seed)
    diff = _scores(a, counts) - _scores(b, counts)
    return Interval(a.score() - b.score(), *_percentiles(diff, level))


def case_of(case_day: str) -> str:
    """``case123_day20`` -> ``case123`` (a name without ``_day`` is its own case)."""
    return re.sub(r"_day\d+$", "", case_day)


def case_halves(case_days: Sequence[str]) -> dict[int, list[str]]:
    """Two pseudo-folds of ``case_days`` split by case (every day of a case on one side):
    the cases in natural order (``case2`` before ``case10``), alternated. Deterministic.

    Raises:
        ValueError: fewer than two cases (one cannot be tuned on one and scored on another).
    """
    cases = sorted({case_of(cd) for cd in case_days}, key=lambda c: [int(t) if t.isdigit() else t
                                                                   for t in re.split(r"(\d+)", c)])  # fmt: skip
    if len(cases) < 2:
        raise ValueError(f"cannot split {len(case_days)} case-day(s) of {len(cases)} case(s) into two halves by case")
    side = {c: i % 2 for i, c in enumerate(cases)}
    return {k: [cd for cd in case_days if side[case_of(cd)] == k] for k in (0, 1)}


def terms_of_result(result: ScoreResult) -> ScoreTerms:
    """The :class:`ScoreTerms` of a per-class :class:`~gi_utils.evaluation.ScoreResult`
    (e.g. a hold-out scored with :class:`~gi_utils.evaluation.ScoreAccumulator`), so its
    score gets an interval too.

    Raises:
        ValueError: the result's table does not hold every class of each case-day.
    """
    table = result.table
    case_days = list(dict.fromkeys(table["case_day"]))
    shape = (len(case_days), NUM_CLASSES)
    if len(table) != shape[0] * shape[1] or list(table["class"][:NUM_CLASSES]) != list(CLASSES):
        raise ValueError(f"the score table has {len(table)} rows, not one per (case-day, class) of {shape}")
    count = table["n_scored"].to_numpy(np.float64).reshape(shape)
    dice = np.nan_to_num(table["dice"].to_numpy(np.float64)).reshape(shape) * count
    return ScoreTerms(tuple(case_days), dice, count, table["hausdorff"].to_numpy(np.float64).reshape(shape))
