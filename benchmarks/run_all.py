"""Run every ``benchmarks/bench_*.py`` in its own process and collect the result lines.

Each benchmark ends with lines ``name: value unit (target: ...)``; this script echoes
each benchmark's output and repeats those lines in a summary at the end.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULT_RE = re.compile(r"^[a-z0-9_]+: \S+ .*\(target: .*\)$")


def main(argv: list[str]) -> int:
    wanted = set(argv)
    scripts = sorted(p for p in HERE.glob("bench_*.py") if not wanted or p.stem in wanted)
    summary, failed = [], []
    for script in scripts:
        print(f"=== {script.stem}", flush=True)
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
        print(proc.stdout, end="")
        if proc.returncode:
            print(proc.stderr, file=sys.stderr)
            failed.append(script.stem)
        summary += [f"{script.stem}.{ln}" for ln in proc.stdout.splitlines() if RESULT_RE.match(ln)]
    print("=== summary")
    print("\n".join(summary))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
