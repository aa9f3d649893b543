"""benchmarks/gpu_check.py (``make gpu-check``): its parts keep their time budgets (a part
that runs out says so and the next one runs; a failing one is reported and the next one
runs), and CI runs it at its smallest size (``make gpu-check SMOKE=1``, in ``.ci/run``:
the whole check on the CPU, about a minute, is not repeated here)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from gi_utils.paths import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
gpu_check = importlib.import_module("gpu_check")


def test_a_part_out_of_time_is_cut_a_failing_one_reported_and_the_next_still_runs(monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "BUDGETS", {"data": 100.0, "feed": 0.0, "3d": 100.0})
    chk = gpu_check.Check(scale=1.0)
    ran = []

    def work(part, name):
        for step in ("limit", "device path"):
            if part.left() < 1:
                part.cut(step)
                continue
            ran.append((name, step))
        return name

    def broken(part):
        raise RuntimeError("CUDA error: no kernel image is available")

    assert chk.run("feed", work, "feed") == "feed"
    assert chk.run("data", broken) is None
    assert chk.run("3d", work, "3d") == "3d"
    out = capsys.readouterr().out
    assert ran == [("3d", "limit"), ("3d", "device path")]
    assert "feed: cut at 0 s of its 0 s; left out: limit; device path" in out
    assert "data: FAILED after 0 s (RuntimeError: CUDA error: no kernel image is available)" in out
    assert "3d: 0 s of its 100 s" in out
    assert (chk.cut, chk.failed) == (["feed"], ["data"])
    chk.fact("resume identical, device path, UNet", "NO", ok=False)
    assert chk.failed == ["data", "resume identical, device path, UNet"]


def test_the_kernel_time_share_counts_overlapping_kernels_once():
    assert gpu_check.busy_share([(20, 30), (0, 10), (5, 15)], (0, 40)) == 25 / 40
    assert gpu_check.busy_share([(0, 50)], (0, 40)) == 1.0
    assert gpu_check.busy_share([], (0, 40)) == 0.0


def test_the_run_plan_printed_by_a_training_process_is_found():
    text = ("caching volumes\nfeed plan: device path (data_path='device'): training slices on the GPU; fits\n"
            "  cache 0.39 GB training + 0.00 GB validation slices\n  NVIDIA H100: ...\nsaved checkpoint x\n")  # fmt: skip
    assert gpu_check.plan_block(text).splitlines() == text.splitlines()[1:4]
    assert gpu_check.plan_block("no plan") == "feed plan: not printed"


def test_ci_runs_the_smallest_size_and_without_a_gpu_the_full_size_refuses(capsys):
    assert "make gpu-check SMOKE=1" in (REPO_ROOT / ".ci" / "run").read_text()
    make = (REPO_ROOT / "Makefile").read_text()
    assert "benchmarks/gpu_check.py $(if $(SMOKE),--smoke)" in make
    if gpu_check.torch.cuda.is_available():
        pytest.skip("a GPU is here: the full size would run")
    assert gpu_check.main([]) == 2
    assert "make gpu-check SMOKE=1" in capsys.readouterr().err


def test_make_gpu_check_needs_no_venv():
    """The GPU machine has no network: the target must not build .venv, and runs python3
    with the project on PYTHONPATH."""
    made = subprocess.run(["make", "-n", "gpu-check", "VENV=/nonexistent"], cwd=REPO_ROOT, capture_output=True,
                          text=True, check=True).stdout  # fmt: skip
    assert "python3 benchmarks/gpu_check.py" in made and "venv" not in made and "pip" not in made, made
    assert f"PYTHONPATH={REPO_ROOT}" in made
    assert "python3 benchmarks/gpu_check.py" in gpu_check.__doc__
