"""The plan of a synthetic dataset: which cases, days, image sizes and slice counts
(:class:`ScanSpec`, one per scan), drawn like the real data and deterministic by seed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gi_utils.constants import BAD_CASE_DAYS, REAL_SIZES

__all__ = ["MAX_CASE", "MAX_DAY", "REAL_SLICES", "ScanSpec", "plan_dataset"]

MAX_CASE = 156  # real case numbers go up to case156
MAX_DAY = 40
#: Real slices per scan by (width, height); every other size has 144.
REAL_SLICES = {(276, 276): 80}


@dataclass(frozen=True)
class ScanSpec:
    """One scan (case-day) to synthesise. Width/height follow the file-name order."""

    case: int
    day: int
    width: int
    height: int
    spacing: float
    n_slices: int
    seed: int = 0

    @property
    def case_day(self) -> str:
        return f"case{self.case}_day{self.day}"

    def filename(self, slice_no: int) -> str:
        """``slice_0001_360_310_1.50_1.50.png``: width, height, spacing (2 decimals)."""
        sp = f"{self.spacing:.2f}"
        return f"slice_{slice_no:04d}_{self.width}_{self.height}_{sp}_{sp}.png"

    def folder(self, split: str) -> Path:
        return Path(split) / f"case{self.case}" / self.case_day / "scans"


def _spacing_for(width: int, height: int) -> float:
    return next((s for w, h, s, _ in REAL_SIZES if (w, h) == (width, height)), 1.50)


def plan_dataset(
    n_cases: int = 20,
    n_test_cases: int = 2,
    seed: int = 0,
    slices_per_scan: int | None = None,
    size: tuple[int, int] | None = None,
) -> dict[str, list[ScanSpec]]:
    """Choose cases, days, image sizes and slice counts (nothing is rendered).

    Case numbers are drawn from 1..156 without replacement (train and test disjoint),
    1-3 days per case from 0..40 (never one of ``BAD_CASE_DAYS``). Sizes follow the real
    proportions of scans; with at least 4 train scans, at least one is 360x310 and one
    276x276 or 234x234.

    Args:
        n_cases: train cases (>= 1). n_test_cases: test cases (>= 0). seed: any int >= 0.
        slices_per_scan: slices of every scan; ``None`` = real (144; 80 for 276x276).
        size: force every scan to ``(width, height)`` (>= 32 each); ``None`` = sample.

    Returns:
        ``{"train": [...], "test": [...]}``, scans sorted by case and day.
    """
    for name, value, low in (("n_cases", n_cases, 1), ("n_test_cases", n_test_cases, 0),
                             ("seed", seed, 0)):  # fmt: skip
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if slices_per_scan is not None and not (
        isinstance(slices_per_scan, (int, np.integer)) and 4 <= slices_per_scan <= 9999
    ):
        raise ValueError(f"slices_per_scan must be None or an integer 4..9999, got {slices_per_scan!r}")
    if size is not None and (
        len(size) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 32 for v in size)
    ):
        raise ValueError(f"size must be (width, height), integers >= 32, got {size!r}")
    rng = np.random.default_rng([seed, 7])
    cases = rng.choice(np.arange(1, max(MAX_CASE, n_cases + n_test_cases) + 1),
                       n_cases + n_test_cases, replace=False)  # fmt: skip
    real = [(w, h) for w, h, _, _ in REAL_SIZES]
    n_scans = np.array([n / REAL_SLICES.get((w, h), 144) for w, h, _, n in REAL_SIZES])
    plan: dict[str, list[ScanSpec]] = {}
    for split, split_cases in (("train", cases[:n_cases]), ("test", cases[n_cases:])):
        keys = [(int(c), int(d)) for c in sorted(split_cases) for d in sorted(rng.choice(
            [d for d in range(MAX_DAY + 1) if f"case{c}_day{d}" not in BAD_CASE_DAYS],
            rng.integers(1, 4), replace=False))]  # fmt: skip
        picks = list(rng.choice(len(real), len(keys), p=n_scans / n_scans.sum()))
        if split == "train" and len(keys) >= 4:  # make rare sizes appear in a small set
            order = [int(i) for i in rng.permutation(len(keys))]
            for want in ({1}, {2, 3}):
                if not want & set(picks):
                    spare = [i for i in order if picks[i] == 0 or picks.count(picks[i]) > 1]
                    picks[spare[0]] = min(want)
        specs = []
        for (case, day), pick in zip(keys, picks, strict=True):
            w, h = size if size is not None else real[pick]
            n = slices_per_scan or REAL_SLICES.get((w, h), 144)
            specs.append(ScanSpec(case, day, int(w), int(h), _spacing_for(w, h), int(n), int(seed)))
        plan[split] = specs
    return plan
