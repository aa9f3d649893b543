"""How long the submission will take on the hidden test, from its speed on one scan.

The competition runs the submission notebook on a GPU, internet off, within
:data:`SUBMISSION_LIMIT_HOURS` (9 h), on a hidden test of about :data:`HIDDEN_TEST_CASES`
cases (the competition's description). :func:`measure_speed` times each member of the
ensemble on the first scan (with the chosen TTA; a 3-D member with its sliding windows) and
the reading and post-processing around them; :func:`project_submission_time`, a pure
function of those numbers, projects them to the hidden test's slices and, when they do not
fit the limit, names the cheaper setting that does: no TTA, then fewer members (the
slowest left out first).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from gi_utils.constants import REAL_TRAIN_SLICES
from gi_utils.data.images import iter_volumes, read_volume
from gi_utils.data.layout import build_metadata
from gi_utils.data.rle import encode_rle
from gi_utils.inference.postprocessing import PostProcess
from gi_utils.inference.predict import load_models, predict_volume

__all__ = ["SUBMISSION_LIMIT_HOURS", "HIDDEN_TEST_CASES", "TRAIN_CASES", "HIDDEN_TEST_SLICES", "MemberSpeed",
           "SubmissionTime", "tta_passes", "project_submission_time", "measure_speed"]  # fmt: skip

#: The submission notebook's limit on a GPU (the competition's rules).
SUBMISSION_LIMIT_HOURS = 9.0
#: Cases in the hidden test (about 50, the competition's description) and in train (85).
HIDDEN_TEST_CASES, TRAIN_CASES = 50, 85
#: The hidden test's slices, estimated at the training set's slices per case (452.9).
HIDDEN_TEST_SLICES = round(HIDDEN_TEST_CASES * REAL_TRAIN_SLICES / TRAIN_CASES)


@dataclass(frozen=True)
class MemberSpeed:
    """One member's seconds per slice with the chosen TTA, and its forward passes per input
    (1 + the TTA flips); ``is_3d``: sliding windows over the scan."""

    name: str
    seconds_per_slice: float
    passes: int = 1
    is_3d: bool = False


@dataclass(frozen=True)
class SubmissionTime:
    """The projection of :func:`project_submission_time` (hours)."""

    members: list[MemberSpeed]
    overhead_per_slice: float
    slices: int
    limit_hours: float
    hours: float
    fits: bool
    advice: list[str]

    def table(self) -> pd.DataFrame:
        """One row per member and one for reading and post-processing, then the total."""
        rows = [(m.name + (" (3-D windows)" if m.is_3d else ""), m.seconds_per_slice * 1000,
                 m.seconds_per_slice * self.slices / 3600) for m in self.members]  # fmt: skip
        rows.append(("reading, post-processing, encoding", self.overhead_per_slice * 1000,
                     self.overhead_per_slice * self.slices / 3600))  # fmt: skip
        rows.append((f"all, {self.slices} slices (~{HIDDEN_TEST_CASES} cases)",
                     self.hours * 3600 * 1000 / max(self.slices, 1), self.hours))  # fmt: skip
        return pd.DataFrame(rows, columns=["part", "ms per slice", "hours"]).set_index("part").round({"ms per slice": 1, "hours": 3})

    def __str__(self) -> str:
        verdict = "fits" if self.fits else "does NOT fit"
        lines = [self.table().to_string(), f"projected {self.hours:.2f} h against the {self.limit_hours:g} h limit: "
                 f"{verdict}"]  # fmt: skip
        lines += [f"cheaper: {a}" for a in self.advice]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tta_passes(tta: bool | str | Sequence[str]) -> int:
    """Forward passes per input of a TTA setting: 1 + its flips (``True``: one flip)."""
    if tta is True:
        return 2
    if not tta:
        return 1
    return 1 + (1 if isinstance(tta, str) else len(tta))


def _hours(members: Sequence[MemberSpeed], overhead: float, slices: int, tta: bool = True) -> float:
    per_slice = sum(m.seconds_per_slice / (1 if tta else m.passes) for m in members) + overhead
    return per_slice * slices / 3600


def project_submission_time(
    members: Sequence[MemberSpeed], overhead_per_slice: float, slices: int = HIDDEN_TEST_SLICES,
    limit_hours: float = SUBMISSION_LIMIT_HOURS,
) -> SubmissionTime:  # fmt: skip
    """The hours of ``members`` (and the per-slice ``overhead_per_slice``) over ``slices``
    against ``limit_hours``; when over, the advice names the first setting that fits: TTA
    off (each member's time divided by its passes), else the members kept when the slowest
    are left out one by one (with the chosen TTA, then without), else that none does.
    """
    members = list(members)
    hours = _hours(members, overhead_per_slice, slices)
    fits = hours <= limit_hours
    advice: list[str] = []
    if not fits:
        with_tta = any(m.passes > 1 for m in members)
        if with_tta and _hours(members, overhead_per_slice, slices, tta=False) <= limit_hours:
            advice.append(f"tta=False: {_hours(members, overhead_per_slice, slices, tta=False):.2f} h")
        else:
            for tta in (True, False) if with_tta else (True,):
                kept = sorted(members, key=lambda m: m.seconds_per_slice)
                while len(kept) > 1 and _hours(kept, overhead_per_slice, slices, tta) > limit_hours:
                    kept.pop()
                h = _hours(kept, overhead_per_slice, slices, tta)
                if h <= limit_hours:
                    names = ",".join(m.name for m in members if m in kept)
                    advice.append(f"only {names}" + ("" if tta else " and tta=False") + f" (runs=... or model_paths=...): "
                                  f"{h:.2f} h")  # fmt: skip
                    break
            else:
                advice.append(f"none of these settings: a single member without TTA takes "
                              f"{_hours(kept, overhead_per_slice, slices, False):.2f} h; a smaller img_size")  # fmt: skip
    return SubmissionTime(members, overhead_per_slice, slices, limit_hours, hours, fits, advice)


def measure_speed(
    model_paths: Sequence[str | os.PathLike], data_dir: str | os.PathLike, split: str, post: PostProcess, *,
    tta: bool | str | Sequence[str] = False, batch_size: int = 16, device=None, amp: str | None = None,
) -> tuple[list[MemberSpeed], float, str]:  # fmt: skip
    """Time each member on the first scan of ``data_dir/split`` (of ``train`` when the split
    has no images: Kaggle's hidden test while a notebook is saved), each once to warm up and
    once measured, with ``tta``; and the reading, ``post`` and the RLE encoding of that scan.

    Returns:
        ``(members, overhead seconds per slice, the scan's case-day)``.
    """
    root = Path(data_dir)
    if not any((root / split).glob("*/*/scans/*.png")):
        split = "train"
    case_day, rows = next(iter_volumes(build_metadata(root, split, labels=False)))
    start = time.perf_counter()
    vol = read_volume(rows)
    read_s = time.perf_counter() - start
    models = load_models(model_paths, device)
    passes, members = tta_passes(tta), []
    for path, model in zip(model_paths, models, strict=True):
        for _ in range(2):  # the first pass warms up (kernels, caches); the second is measured
            start = time.perf_counter()
            probs, gate = predict_volume([model], vol, tta=tta, batch_size=batch_size, device=device, amp=amp)
            seconds = time.perf_counter() - start
        name = Path(path).parent.name if Path(path).stem == "best" else Path(path).stem  # a run's, or a bundle's file
        members.append(MemberSpeed(name, seconds / len(vol), passes, model[1].spec.is_3d))
    start = time.perf_counter()
    masks = post.apply(probs, gate)
    for d in range(len(masks)):
        for c in range(masks.shape[-1]):
            encode_rle(masks[d, ..., c])
    overhead = (read_s + time.perf_counter() - start) / len(vol)
    return members, overhead, case_day

