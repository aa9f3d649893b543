"""Helpers shared by the benchmark scripts: timing, peak memory, NVML's GPU utilisation,
the result line, the ``--smoke`` flag."""

from __future__ import annotations

import argparse
import os
import resource
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402 - after the environment above

#: What a closing line of a ``--smoke`` run says instead of its target (:func:`result`).
SMOKE_TARGET = "none: --smoke checks that it runs; its figures mean nothing"
_smoke = False  # set by parse_args


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


class NvmlBusy:
    """NVML's utilisation of a GPU while a block runs (``torch.cuda.utilization``: the share
    of the last sample period in which a kernel was running, not the SMs' occupancy),
    sampled every ``period`` seconds: ``mean`` in %, or ``None`` with ``why``."""

    def __init__(self, device, period: float = 0.1) -> None:
        self.device, self.period = device, period
        self.samples: list[float] = []
        self.mean: float | None = None
        self.why = "no GPU" if getattr(device, "type", "cpu") != "cuda" else ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> NvmlBusy:
        if not self.why:
            try:
                torch.cuda.utilization(self.device)
            except ModuleNotFoundError:
                self.why = "not measured: nvidia-ml-py is not installed (pip install 'gi-utils[gpu]')"
            except Exception as err:  # an NVML without the device, a driver without NVML
                self.why = f"not measured: NVML failed ({type(err).__name__}: {err})"
            else:
                self._thread = threading.Thread(target=self._sample, daemon=True)
                self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.period):
            self.samples.append(float(torch.cuda.utilization(self.device)))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            if self.samples:
                self.mean = sum(self.samples) / len(self.samples)
            else:
                self.why = "not measured: the block ended before the first sample"

    def text(self) -> str:
        return f"{self.mean:.0f}% ({len(self.samples)} samples)" if self.mean is not None else self.why


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """Fastest of ``repeat`` runs of ``fn``, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def result(name: str, value: float, unit: str, target: str) -> None:
    """Print the machine-readable closing line ``name: value unit (target: ...)``; under
    ``--smoke`` the target is :data:`SMOKE_TARGET` (its sizes cannot speak to one)."""
    print(f"{name}: {value:.4g} {unit} (target: {SMOKE_TARGET if _smoke else target})", flush=True)
    sys.stdout.flush()


def shape(text: str) -> tuple[int, ...]:
    """``"144x266x266"`` -> ``(144, 266, 266)`` (an argparse type)."""
    return tuple(int(side) for side in text.split("x"))


def parse_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, smoke: dict[str, Any]
) -> argparse.Namespace:
    """``parser``'s arguments plus ``--smoke``: the benchmark at its smallest size, ``smoke``'s
    values in place of the arguments (``make bench-smoke``, in CI: a check that it still
    runs; its figures mean nothing, and :func:`result` prints no target)."""
    global _smoke
    sizes = ", ".join(f"{k} {v}" for k, v in smoke.items())
    parser.add_argument("--smoke", action="store_true", help=f"smallest size ({sizes}): a check that it runs")
    args = parser.parse_args(argv)
    unknown = sorted(set(smoke) - set(vars(args)))
    if unknown:
        raise ValueError(f"smoke sizes {unknown} are no arguments of {parser.prog}")
    if args.smoke:
        vars(args).update(smoke)
    _smoke = bool(args.smoke)
    return args
