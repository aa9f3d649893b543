"""Helpers shared by the benchmark scripts: timing, peak memory, the result line."""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def timed(label: str, out: dict[str, float]):
    """Time a block; store seconds in ``out[label]`` and print it with peak memory."""
    t0 = time.perf_counter()
    yield
    out[label] = time.perf_counter() - t0
    print(f"  {label}: {out[label]:.3f} s (peak RSS {peak_rss_mb():.0f} MiB)", flush=True)


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """Fastest of ``repeat`` runs of ``fn``, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def result(name: str, value: float, unit: str, target: str) -> None:
    """Print the machine-readable closing line ``name: value unit (target: ...)``."""
    print(f"{name}: {value:.4g} {unit} (target: {target})", flush=True)
    sys.stdout.flush()
