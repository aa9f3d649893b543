"""The session's time limit: how long a run may still train before it saves ``last.pt`` and
stops cleanly, so that a platform's cut-off never loses a run.

``TrainConfig.time_limit`` (hours from the start of the session; ``None``: the platform's,
:func:`platform_time_limit`; ``0``: none). The figures behind the platform defaults
(gathered from the platforms' documentation and their users' reports, 2026):

* Kaggle: a session lasts at most 12 hours, "Save & Run All" included; an *interactive*
  GPU session may stop at 9 hours (Kaggle sets ``KAGGLE_KERNEL_RUN_TYPE`` to
  ``"Interactive"`` there and ``"Batch"`` in a saved version); 30 GPU hours a week. A
  version stopped at the limit saves no output at all.
* Colab (free): up to 12 hours, often less; idle sessions are disconnected sooner (the
  checkpoint of every epoch, on Drive, covers that).

From these :data:`TIME_MARGIN_HOURS` (30 minutes: saving ``/kaggle/working`` as the
notebook's output and the cells after training) is kept back: Kaggle 11.5 h (8.5 h
interactive), Colab 11.5 h; no limit elsewhere.

The session starts when the notebook's kernel started (this process, or the one that
launched it: :func:`session_start`), so the time a notebook spent before training (the
install, the cache) counts. A run reads the time on one clock (:func:`session_clock`),
seconds since that start; ``$GI_CLOCK_TICK_S`` replaces it by a counter that advances that
many seconds at each reading, which makes where a run stops reproducible (the tests replay
a session's limit with it; every other line of the code path is the real one).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

import psutil

from gi_utils.paths import platform_name

__all__ = ["PLATFORM_HOURS", "TIME_MARGIN_HOURS", "SESSION_START_ENV", "CLOCK_TICK_ENV", "KAGGLE_RUN_TYPE_ENV",
           "platform_time_limit", "session_start", "session_clock", "TimeBudget"]  # fmt: skip

#: The longest session of each platform, in hours (see the module docstring).
PLATFORM_HOURS: dict[str, float] = {"kaggle": 12.0, "kaggle_interactive": 9.0, "colab": 12.0}
#: Hours kept back from a platform's limit for saving the output and the remaining cells.
TIME_MARGIN_HOURS: float = 0.5
#: Seconds since the epoch at which the session started (set once, inherited by launched processes).
SESSION_START_ENV = "GI_SESSION_START"
#: A clock that advances this many seconds at each reading (reproducible stops, for tests).
CLOCK_TICK_ENV = "GI_CLOCK_TICK_S"
#: Kaggle's kind of session: ``"Interactive"`` (an editing session) or ``"Batch"`` (a saved version).
KAGGLE_RUN_TYPE_ENV = "KAGGLE_KERNEL_RUN_TYPE"


def platform_time_limit(platform: str | None = None) -> float:
    """The default ``time_limit`` in hours: the platform's longest session minus
    :data:`TIME_MARGIN_HOURS` (Kaggle 11.5, interactive Kaggle 8.5, Colab 11.5); 0 (no
    limit) elsewhere. ``platform``: ``None`` asks :func:`gi_utils.paths.platform_name`."""
    platform = platform or platform_name()
    if platform == "kaggle" and os.environ.get(KAGGLE_RUN_TYPE_ENV, "").lower() == "interactive":
        platform = "kaggle_interactive"
    hours = PLATFORM_HOURS.get(platform)
    return hours - TIME_MARGIN_HOURS if hours else 0.0


_START: list[float] = []  # this process's session start, once asked (a forked process inherits it)


def session_start() -> float:
    """Seconds since the epoch at which the session started: ``$GI_SESSION_START`` when set
    (a launcher passes it to the processes it starts), else the start of this process (the
    notebook's kernel), remembered here: processes forked from it inherit it."""
    if os.environ.get(SESSION_START_ENV):
        return float(os.environ[SESSION_START_ENV])
    if not _START:
        _START.append(psutil.Process(os.getpid()).create_time())
    return _START[0]


def session_clock() -> Callable[[], float]:
    """Seconds since :func:`session_start`; with ``$GI_CLOCK_TICK_S`` a counter instead,
    ``tick, 2 tick, ...`` at successive readings (see the module docstring)."""
    tick = os.environ.get(CLOCK_TICK_ENV)
    if tick:
        step, count = float(tick), [0]

        def ticking() -> float:
            count[0] += 1
            return count[0] * step

        return ticking
    start = session_start()
    return lambda: time.time() - start


class TimeBudget:
    """What is left of a session's time, and what the steps of a run take, on one clock.

    A run asks :meth:`step_done` after each optimizer step (True: one more step and a save
    would cross the limit), and :meth:`allows` before a longer piece of work (a validation).
    The figures it gives: :attr:`step_s`, the mean seconds of a step in this session (the
    first step of each epoch, which starts the loader, is not counted); :attr:`save_s`,
    the longest save of ``last.pt``; :attr:`val_s`, the last validation's seconds.

    Args:
        limit_hours: hours from the start of the session; 0 or less: no limit.
        clock: seconds since the start of the session (default :func:`session_clock`).
    """

    def __init__(self, limit_hours: float, clock: Callable[[], float] | None = None) -> None:
        self.limit_s = float(limit_hours) * 3600 if limit_hours and limit_hours > 0 else math.inf
        self.clock = clock or session_clock()
        self.step_s: float | None = None
        self.steps_measured = 0
        self.save_s = 0.0
        self.val_s: float | None = None
        self._last: float | None = None

    @property
    def limited(self) -> bool:
        return math.isfinite(self.limit_s)

    def left(self) -> float:
        """Seconds left in the session (``inf`` without a limit)."""
        return self.limit_s - self.clock()

    def allows(self, seconds: float) -> bool:
        """True when ``seconds`` of work and then a save still end inside the limit."""
        return not self.limited or self.clock() + seconds + self.save_s <= self.limit_s

    def epoch_started(self) -> None:
        """The next :meth:`step_done` ends the first step of an epoch (not counted)."""
        self._last = None

    def step_done(self) -> bool:
        """Record the end of an optimizer step; True when one more step (of :attr:`step_s`)
        and a save (:attr:`save_s`) would end after the limit."""
        now = self.clock()
        if self._last is not None:
            self.steps_measured += 1
            dt = now - self._last
            self.step_s = dt if self.step_s is None else self.step_s + (dt - self.step_s) / self.steps_measured
        self._last = now
        return self.limited and now + (self.step_s or 0.0) + self.save_s > self.limit_s

    def timed(self, what: str, work: Callable[[], Any]) -> Any:
        """Run ``work()`` and record its seconds as :attr:`save_s` (``what="save"``, the
        longest) or :attr:`val_s` (``"validation"``); return its result."""
        start = self.clock()
        out = work()
        seconds = self.clock() - start
        if what == "save":
            self.save_s = max(self.save_s, seconds)
        else:
            self.val_s = seconds
        self._last = None  # the next step is measured from its own start
        return out
