"""The plan of a run against its session, printed before the hours are spent: how long it
takes (and ``folds all``), what the session's limit leaves, the disk it needs, the GPU
memory, and, when it does not fit, what would.

:func:`session_plan` is a pure function of numbers (:class:`PlanInputs`): measured seconds
per step (``gi_utils.training.timed_run`` measures the first steps of a run) or figures
given (a benchmark's for the card). Its :class:`SessionPlan` prints as one table
(:meth:`SessionPlan.table`) and goes into ``metrics.json`` (:meth:`SessionPlan.to_dict`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from gi_utils.atomic import format_bytes
from gi_utils.paths import shown_path

__all__ = ["PLAN_STEPS", "DiskFigures", "PlanInputs", "SessionPlan", "session_plan", "training_slices"]

#: Optimizer steps measured (after an epoch's first, which starts the loader) before the plan is printed.
PLAN_STEPS = 5
_SIZE_STEP = 32  # img_size is a multiple of 32


def training_slices(data_dir: str | Path) -> int:
    """Slices of ``data_dir/train.csv`` (three rows each), counted without parsing it."""
    with open(Path(data_dir) / "train.csv", "rb") as f:
        return max(sum(1 for _ in f) - 1, 0) // 3


@dataclass(frozen=True)
class DiskFigures:
    """Bytes a run writes and the room it has.

    Attributes:
        cache_bytes: the disk cache (0: none); written at setup, before the plan.
        cache_dir: where it is.
        cache_free: free bytes there after it was written (``None``: unknown).
        run_bytes: what one run adds to its folder: ``last.pt`` and the best weights, and
            the out-of-fold set twice (a better epoch's set is written before the last one
            is removed).
        out_dir: the runs folder.
        out_free: room left there (on Kaggle the output's 20 GB less what it holds).
    """

    cache_bytes: int
    cache_dir: str
    cache_free: int | None
    run_bytes: int
    out_dir: str
    out_free: int | None


@dataclass(frozen=True)
class PlanInputs:
    """The numbers a plan is made of.

    Attributes:
        epochs, steps_per_epoch: the run's optimizer steps (per process).
        steps_done: steps trained already (a resumed run).
        seconds_per_step: one optimizer step.
        val_seconds: one validation (0 for ``fold=-1``); ``val_measured`` False: estimated.
        n_folds, img_size: for ``folds all`` and a smaller size.
        limit_hours: the session's ``time_limit`` (0: none); ``hours_used``: of it, spent.
        disk: bytes written and room (``None``: not asked).
        gpu_memory: optional bytes on the GPU, keys ``total``, ``probe_peak``, ``cache``.
    """

    epochs: int
    steps_per_epoch: int
    steps_done: int
    seconds_per_step: float
    val_seconds: float
    n_folds: int
    img_size: int
    limit_hours: float = 0.0
    hours_used: float = 0.0
    val_measured: bool = False
    disk: DiskFigures | None = None
    gpu_memory: Mapping[str, float] | None = field(default=None)


@dataclass(frozen=True)
class SessionPlan:
    """What :func:`session_plan` worked out (hours; ``hours_left`` is ``inf`` without a limit)."""

    inputs: PlanInputs
    epoch_hours: float
    run_hours: float
    run_left_hours: float
    all_folds_hours: float
    hours_left: float
    fits: bool
    all_folds_fit: bool
    disk_fits: bool
    advice: list[str]

    def table(self) -> pd.DataFrame:
        """One row per figure: ``what``, ``figure``, ``fits`` (a word)."""
        i, rows = self.inputs, []
        total = i.epochs * i.steps_per_epoch
        rows.append(("run", f"{i.epochs} epochs x {i.steps_per_epoch} steps = {total} steps"
                     + (f" ({i.steps_done} done)" if i.steps_done else ""), ""))  # fmt: skip
        rows.append(("seconds per step", f"{i.seconds_per_step:.3g} s", ""))
        rows.append(("validation", f"{i.val_seconds:.3g} s per epoch" + ("" if i.val_measured else " (estimate)"), ""))
        rows.append(("this run", f"{self.run_hours:.2f} h ({self.run_left_hours:.2f} h to go)", _yes(self.fits)))
        rows.append((f"folds all ({i.n_folds})", f"{self.all_folds_hours:.2f} h", _yes(self.all_folds_fit)))
        limit = (f"{i.limit_hours:.2f} h, {i.hours_used:.2f} h used, {self.hours_left:.2f} h left" if i.limit_hours
                 else "none")  # fmt: skip
        rows.append(("session limit", limit, ""))
        if i.disk is not None:
            d = i.disk
            cache = (f"{format_bytes(d.cache_bytes)} in {shown_path(d.cache_dir)}, {_free(d.cache_free)}" if d.cache_bytes
                     else f"none on disk ({shown_path(d.cache_dir)})")  # fmt: skip
            rows.append(("disk: cache", cache, ""))
            rows.append(("disk: checkpoints + out-of-fold",
                         f"{format_bytes(d.run_bytes)} per run, {format_bytes(d.run_bytes * i.n_folds)} for "
                         f"{i.n_folds} folds; {_free(d.out_free)} in {shown_path(d.out_dir)}", _yes(self.disk_fits)))  # fmt: skip
        if i.gpu_memory:
            g = i.gpu_memory
            parts = [f"{name.replace('_', ' ')} {format_bytes(g[name])}" for name in ("probe_peak", "cache", "total")
                     if g.get(name) is not None]  # fmt: skip
            rows.append(("GPU memory", ", ".join(parts), _yes(g.get("probe_peak", 0) <= g.get("total", math.inf))))
        return pd.DataFrame(rows, columns=["what", "figure", "fits"]).set_index("what")

    def __str__(self) -> str:
        table = self.table()
        width = max(len(w) for w in table.index)
        lines = [f"{what:<{width}}  {row.figure}" + (f"  [fits: {row.fits}]" if row.fits else "")
                 for what, row in table.iterrows()]  # fmt: skip
        lines += [f"to fit: {a}" for a in self.advice]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The figures as JSON-ready values (``metrics.json``'s ``plan``)."""
        out = {k: v for k, v in asdict(self).items() if k != "inputs"}
        out.update({k: v for k, v in asdict(self.inputs).items()})
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def _free(free: int | None) -> str:
    return "free space unknown" if free is None else f"{format_bytes(free)} free"


def session_plan(inputs: PlanInputs) -> SessionPlan:
    """Work out the plan of ``inputs`` (see the module docstring).

    An epoch takes ``steps_per_epoch x seconds_per_step + val_seconds``; the run what is
    left of its ``epochs x steps_per_epoch`` steps and validations; ``folds all``,
    ``n_folds`` whole runs. Without a limit everything fits in time. When the run does not
    fit in the hours left, the advice names ``epochs`` that do, the sessions it takes to go
    on (the run saves ``last.pt`` at the limit and continues in the next), and, when one
    epoch does not fit a whole session, a smaller ``img_size`` (the time of a step taken
    as proportional to the pixels) or ``max_steps_per_epoch``; when ``folds all`` does not
    fit, one fold per session; when the disk does not hold what the runs write, what does.
    """
    i = inputs
    step, val = float(i.seconds_per_step), float(i.val_seconds)
    epoch_s = i.steps_per_epoch * step + val
    total_steps = i.epochs * i.steps_per_epoch
    epochs_done = i.steps_done // max(i.steps_per_epoch, 1)
    left_s = (total_steps - i.steps_done) * step + (i.epochs - epochs_done) * val
    limit_s = i.limit_hours * 3600 if i.limit_hours > 0 else math.inf
    left_session = limit_s - i.hours_used * 3600
    fits, all_fit = left_s <= left_session, i.n_folds * i.epochs * epoch_s <= limit_s
    disk_fits = True
    advice: list[str] = []
    if not fits:
        more = int(left_session // epoch_s) if epoch_s > 0 else 0
        if more >= 1:
            advice.append(f"fewer epochs: epochs={epochs_done + more} ends in this session")
        sessions = math.ceil(i.epochs * epoch_s / limit_s)
        advice.append(f"go on in the next session: the run saves last.pt at the limit and continues where it "
                      f"stopped (about {sessions} sessions of {i.limit_hours:.1f} h in all)")  # fmt: skip
    if epoch_s > limit_s:
        share = limit_s / epoch_s
        size = int(i.img_size * math.sqrt(share)) // _SIZE_STEP * _SIZE_STEP
        steps = int((limit_s - val) // step) if limit_s > val else 0
        options = [f"img_size={size}" if size >= _SIZE_STEP else "", f"max_steps_per_epoch={steps}" if steps else ""]
        advice.append("one epoch is longer than a session: " + " or ".join(o for o in options if o))
    if not all_fit and i.epochs * epoch_s <= limit_s:
        advice.append(f"one fold per session: folds all takes {i.n_folds * i.epochs * epoch_s / 3600:.1f} h, "
                      f"a fold {i.epochs * epoch_s / 3600:.1f} h")  # fmt: skip
    if i.disk is not None and i.disk.out_free is not None:
        per_run = i.disk.run_bytes
        if per_run > i.disk.out_free:
            disk_fits = False
            advice.append(f"the disk: one run writes {format_bytes(per_run)}, {format_bytes(i.disk.out_free)} are "
                          "free: a smaller img_size (the out-of-fold set grows with its square)")  # fmt: skip
        elif per_run * i.n_folds > i.disk.out_free:
            disk_fits = False
            advice.append(f"the disk: {int(i.disk.out_free // per_run)} fold(s) per session "
                          f"({format_bytes(per_run)} each, {format_bytes(i.disk.out_free)} free)")  # fmt: skip
    return SessionPlan(i, epoch_s / 3600, i.epochs * epoch_s / 3600, left_s / 3600, i.n_folds * i.epochs * epoch_s / 3600,
                       left_session / 3600, fits, all_fit, disk_fits, advice)  # fmt: skip
