"""Run every ``benchmarks/bench_*.py`` in its own process and collect the result lines.

Each benchmark ends with lines ``name: value unit (target: ...)``; this script echoes
each benchmark's output and repeats those lines in a summary at the end. It exits 1 when
any benchmark fails (non-zero exit), naming them.

``--smoke`` (``make bench-smoke``, run by CI after the tests) runs every benchmark at its
smallest size with ``--smoke``, the heavy ones that ``make bench`` leaves out too
(:data:`SMOKE_ONLY`), two at a time: it checks that each still runs, its figures mean
nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULT_RE = re.compile(r"^[a-z0-9_]+: \S+ .*\(target: .*\)$")
#: Benchmarks with a command of their own (``make bench-scale``; the 3-D memory estimate):
#: only the smoke run adds them. ``gpu_check.py`` is ``make gpu-check`` (CI: ``SMOKE=1``).
SMOKE_ONLY = ("fullsize", "memory_3d")


def run_one(script: Path, smoke: bool, threads: int | None) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``script`` (with ``--smoke`` when ``smoke``) with ``threads`` OpenMP threads
    (``None``: the libraries' own choice) unless ``OMP_NUM_THREADS`` is set; its output and
    its seconds."""
    t0 = time.perf_counter()
    env = {**({"OMP_NUM_THREADS": str(threads)} if threads else {}), **os.environ}
    proc = subprocess.run([sys.executable, str(script), *(["--smoke"] if smoke else [])],
                          capture_output=True, text=True, env=env)  # fmt: skip
    return proc, time.perf_counter() - t0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("names", nargs="*", help="only these benchmarks (e.g. bench_infer); default: all")
    p.add_argument("--smoke", action="store_true", help="every benchmark at its smallest size (CI)")
    p.add_argument("--jobs", type=int, default=None, help="benchmarks run at once (default: 2 with --smoke, else 1)")
    args = p.parse_args(argv)
    found = [*HERE.glob("bench_*.py"), *([HERE / f"{n}.py" for n in SMOKE_ONLY] if args.smoke else [])]
    unknown = set(args.names) - {s.stem for s in found}
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(s.stem for s in found))}")
    scripts = sorted(s for s in found if not args.names or s.stem in args.names)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    jobs = max(1, args.jobs or (min(2, cores) if args.smoke else 1))
    threads = max(1, cores // jobs) if jobs > 1 else None  # jobs share the cores instead of oversubscribing them
    summary, failed = [], []
    with ThreadPoolExecutor(jobs) as pool:  # timing runs one at a time unless asked
        for script, (proc, seconds) in zip(scripts, pool.map(lambda s: run_one(s, args.smoke, threads), scripts)):
            print(f"=== {script.stem} ({seconds:.0f} s, exit {proc.returncode})", flush=True)
            print(proc.stdout, end="", flush=True)
            if proc.returncode:
                print(proc.stderr, file=sys.stderr, flush=True)
                failed.append(script.stem)
            summary += [f"{script.stem}.{ln}" for ln in proc.stdout.splitlines() if RESULT_RE.match(ln)]
    print("=== summary")
    print("\n".join(summary))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
