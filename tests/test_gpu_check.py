"""benchmarks/gpu_check.py runs on a CPU at a small size (the same script a GPU machine
runs at 320 px): train, kill, resume, submit, and one line per fact."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gi_utils.paths import REPO_ROOT

pytestmark = pytest.mark.slow


def test_gpu_check_runs_on_cpu(tmp_path):
    done = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "gpu_check.py"), "--cpu", "--img-size", "64",
                           "--steps", "6", "--cases", "6", "--slices", "16", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    assert lines["device"] == "cpu" and lines["amp mode"] in ("no", "bf16")
    assert lines["resume identical"].startswith("yes (killed mid-epoch: yes")
    assert float(lines["samples/s"]) > 0 and lines["peak GPU memory"] == "n/a (CPU)"
    assert float(lines["samples/s, device path"]) > 0 and lines["device path / 2 workers"].endswith("x")
