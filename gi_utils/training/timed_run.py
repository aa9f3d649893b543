"""A training run that keeps to its session's time limit, and prints its plan first.

:class:`TimedRun` is a :class:`~gi_utils.training.session.TrainingRun` whose steps are
timed on the session's clock (:class:`~gi_utils.training.time_limit.TimeBudget`):

* before an epoch, after every optimizer step and before a validation it asks whether the
  next piece of work and a save still end inside ``time_limit``; when not, it saves
  ``last.pt`` (in the middle of an epoch if need be: resuming there is exact) and stops
  cleanly. :func:`gi_utils.training.train` then writes ``metrics.json`` with what was
  trained (``time_limit_stop``: true) and returns; run again, in the next session, with
  the same settings, it continues where it stopped and ends as an uninterrupted run would.
  With several processes the main process decides and every process follows.
* after :data:`~gi_utils.training.run_plan.PLAN_STEPS` measured steps of its first
  epoch in the session (or at the end of a shorter epoch) it prints the plan
  (:func:`~gi_utils.training.run_plan.session_plan`): the run against the session's
  limit, the disk, the GPU memory; the same figures go into ``metrics.json``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from accelerate.utils import broadcast

from gi_utils.atomic import free_bytes
from gi_utils.checkpoint import state_nbytes
from gi_utils.constants import KAGGLE_OUTPUT_BYTES
from gi_utils.data.cache import cache_nbytes
from gi_utils.evaluation.oof import oof_bytes_per_slice
from gi_utils.models.run_folder import MODEL_FILE
from gi_utils.paths import kaggle_working_dir, on_kaggle, shown_path
from gi_utils.training.config import TrainConfig
from gi_utils.training.run_plan import (
    PLAN_STEPS,
    DiskFigures,
    PlanInputs,
    session_plan,
    training_slices,
)
from gi_utils.training.session import TrainingRun
from gi_utils.training.time_limit import TimeBudget

__all__ = ["TimedRun"]


class _TimeUp(Exception):
    """Leaves an epoch from its step hook once ``last.pt`` is saved at the limit."""


class TimedRun(TrainingRun):
    """A run that stops cleanly at its session's limit and prints its plan (module docstring).

    Attributes:
        budget: the session's time and the measured durations.
        out_of_time: True once the run stopped at the limit (``last.pt`` is saved).
        run_plan: the :class:`~gi_utils.training.run_plan.SessionPlan` printed (main
            process); its GPU memory is the feed plan's (:attr:`TrainingRun.plan`: the
            card's total, the probe step's peak, the slices kept on the GPU), else on CUDA
            the card's total and the peak of the measured steps.
    """

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__(cfg)
        self.budget = TimeBudget(cfg.time_limit or 0.0)
        self.out_of_time = False
        self.run_plan = None
        self._planned = False

    @property
    def done(self) -> bool:
        return super().done or self.out_of_time

    # ------------------------------------------------------------------ the limit
    def _stop(self, over: bool) -> bool:
        """The main process's ``over``, the same on every process."""
        if self.acc.num_processes > 1:
            flag = torch.tensor([int(over)], device=self.acc.device)
            over = bool(broadcast(flag, from_process=0).item())
        return over

    def _on_step(self, tally, n_batches: int) -> None:
        super()._on_step(tally, n_batches)
        over = self.budget.step_done()
        if not self._planned and self.budget.steps_measured >= PLAN_STEPS:
            self.show_plan()
        if self.budget.limited and n_batches < self.batches_per_epoch and self._stop(over):
            self.checkpoint()
            raise _TimeUp

    def checkpoint(self, finished: bool = False) -> None:
        self.budget.timed("save", lambda: super(TimedRun, self).checkpoint(finished))

    def _val_seconds(self) -> float:
        """The last validation's seconds, else an estimate: a batch of validation (twice
        the training batch, forward only, then scored) about as long as a training step."""
        if not self.validated:
            return 0.0
        if self.budget.val_s is not None:
            return self.budget.val_s
        return len(self.val_loader) * (self.budget.step_s or 0.0)

    def train_epoch(self) -> dict[str, Any] | None:
        """One epoch (:meth:`TrainingRun.train_epoch`), or ``None`` when the session's
        limit stopped the run before, in or at the end of it (``last.pt`` saved)."""
        b = self.budget
        if b.limited and self._stop(not b.allows(b.step_s or 0.0)):  # last.pt is that of the last epoch
            return self._time_up()
        b.epoch_started()
        try:
            row = super().train_epoch()
        except _TimeUp:
            self.data.sampler.skip = 0
            return self._time_up()
        if not self._planned:
            self.show_plan()
        if self.validated and b.limited and self._stop(not b.allows(self._val_seconds())):
            self.checkpoint()  # the epoch trained, its validation not begun
            return self._time_up()
        return row

    def validate_epoch(self, model: torch.nn.Module | None = None) -> dict[str, Any]:
        return self.budget.timed("validation", lambda: super(TimedRun, self).validate_epoch(model))

    def _time_up(self) -> None:
        self.out_of_time = True
        st = self.state
        self.acc.print(f"time limit: the session's {self.budget.limit_s / 3600:.2f} h (time_limit) would be crossed; "
                       f"stopped at epoch {st['epoch'] + 1} of {self.cfg.epochs}, batch {st['n_batches']}, with "
                       f"{shown_path(self.last_path)} saved: run again with the same settings to continue", flush=True)  # fmt: skip
        return None

    def finish(self) -> pd.DataFrame:
        """``metrics.json`` (with the plan and ``time_limit_stop``) once an epoch has
        finished; a run stopped before its first one keeps ``last.pt`` only."""
        self.extra_metrics.update(time_limit_h=self.cfg.time_limit, time_limit_stop=self.out_of_time,
                                  plan=self.run_plan.to_dict() if self.run_plan is not None else None)  # fmt: skip
        if self.out_of_time and not (self.out_dir / MODEL_FILE).is_file():
            if self.cfg.log_with != "none":
                self.acc.end_training()
            self.acc.wait_for_everyone()
            return pd.DataFrame(self.state["history"])
        return super().finish()

    # ------------------------------------------------------------------ the plan
    def show_plan(self) -> None:
        """Print the plan from the steps measured so far (main process; once per session)."""
        if self.budget.step_s is None:
            return
        self._planned = True
        if self.acc.is_main_process:
            self.run_plan = session_plan(self.plan_inputs())
            print(f"plan of {self.out_dir.name} in this session:\n{self.run_plan}", flush=True)

    def plan_inputs(self) -> PlanInputs:
        """The measured figures of the plan: steps, their seconds, the validation, the
        session's time, the bytes written and the room for them, the GPU memory."""
        cfg, b = self.cfg, self.budget
        return PlanInputs(
            epochs=cfg.epochs, steps_per_epoch=math.ceil(self.batches_per_epoch / cfg.grad_accum),
            steps_done=int(self.scheduler.last_epoch), seconds_per_step=float(b.step_s or 0.0),
            val_seconds=self._val_seconds(), val_measured=b.val_s is not None, n_folds=cfg.n_folds,
            img_size=cfg.img_size, limit_hours=float(cfg.time_limit or 0.0),
            hours_used=b.clock() / 3600 if b.limited else 0.0, disk=self._disk(), gpu_memory=self._gpu_memory(),
        )  # fmt: skip

    def _disk(self) -> DiskFigures:
        cfg = self.cfg
        weights = state_nbytes(self.net.state_dict())
        params = sum(p.numel() * p.element_size() for p in self.net.parameters())
        n_val = len(self.data.val_ds.meta) if self.data.val_ds is not None else 0
        run_bytes = (weights * (2 + (self.ema is not None)) + 2 * params  # last.pt (model, AdamW, average) + best
                     + 2 * n_val * oof_bytes_per_slice(cfg.img_size, cfg.gate))  # fmt: skip
        cache_dir = Path(cfg.cache_dir or self.out_dir.parent / "cache") if cfg.cache == "disk" else None
        cache_bytes = (cache_nbytes(training_slices(cfg.data_dir), cfg.img_size, cfg.cache_dtype, cfg.cache_masks)
                       if cache_dir is not None else 0)  # fmt: skip
        runs = self.out_dir.parent
        room = free_bytes(runs)
        if on_kaggle() and room is not None and runs.resolve().is_relative_to(kaggle_working_dir().resolve()):
            held = sum(p.stat().st_size for p in kaggle_working_dir().rglob("*") if p.is_file())
            room = min(room, KAGGLE_OUTPUT_BYTES - held)  # what Kaggle saves as the output
        return DiskFigures(cache_bytes, str(cache_dir or cfg.cache), free_bytes(cache_dir) if cache_dir else None,
                           run_bytes, str(runs), room)  # fmt: skip

    def _gpu_memory(self) -> Mapping[str, float] | None:
        if self.acc.device.type != "cuda":
            return None
        feed = self.plan
        if feed is not None and feed.total is not None and feed.step_bytes is not None:
            resident = (feed.path == "device") * (feed.train_bytes * feed.train_resident
                                                  + feed.val_bytes * feed.val_resident)  # fmt: skip
            return {"total": float(feed.total), "probe_peak": float(feed.step_bytes), "cache": float(resident)}
        total = torch.cuda.mem_get_info(self.acc.device)[1]
        return {"total": float(total), "probe_peak": float(torch.cuda.max_memory_allocated(self.acc.device))}

