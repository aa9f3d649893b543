"""benchmarks/gpu_check.py (``make gpu-check``): its parts keep their time budgets (a part
that runs out says so and the next one runs; a failing one is reported and the next one
runs), and CI runs it at its smallest size (``make gpu-check SMOKE=1``, in ``.ci/run``:
the whole check on the CPU, about a minute, is not repeated here; its resume part runs
here once, for UNet, as on a GPU with room for the runs at once). Its figures are tested on
mocked ``torch.cuda`` statistics and fake profiler events."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gi_utils.paths import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
gpu_check = importlib.import_module("gpu_check")
GB = 10**9


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
    # the seconds are the machine's (a loaded CI worker printed "3d: 1 s"): not asserted
    assert re.search(r"^feed: cut at \d+ s of its 0 s; left out: limit; device path$", out, re.M), out
    assert re.search(r"^data: FAILED after \d+ s \(RuntimeError: CUDA error: no kernel image is available\)$", out, re.M), out
    assert re.search(r"^3d: \d+ s of its 100 s$", out, re.M), out
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


# --------------------------------------------------------------------------- resume
def test_resume_runs_start_together_from_the_free_memory_not_the_cards_total(monkeypatch):
    """An H100 (80 GB) with 79 GB free starts every run at once; the same card with 30 GB
    free (another process holds the rest) runs one model's runs after the other, without
    the control; 50 GB free: one model's three runs at once."""
    names = ["UNet", "SegResNet"]
    monkeypatch.setattr(gpu_check.torch.cuda, "get_device_properties",
                        lambda d=None: SimpleNamespace(total_memory=80 * GB))  # fmt: skip
    for free, want in ((79, ([names], True)), (30, ([["UNet"], ["SegResNet"]], False)),
                       (50, ([["UNet"], ["SegResNet"]], True))):  # fmt: skip
        monkeypatch.setattr(gpu_check.torch.cuda, "mem_get_info", lambda d=None, f=free: (f * GB, 80 * GB))
        assert gpu_check.resume_groups(names, "auto") == want, free
    assert gpu_check.resume_groups(names, "cpu") == ([["UNet"], ["SegResNet"]], False)


def test_a_broken_resume_is_told_apart_from_non_deterministic_kernels():
    yes, ok = gpu_check.resume_verdict(same=True, control_same=None)
    assert yes.startswith("yes") and ok
    flaky, ok = gpu_check.resume_verdict(same=False, control_same=False)
    assert "kernels non-deterministic on this card" in flaky and ok  # not the resume's fault
    broken, ok = gpu_check.resume_verdict(same=False, control_same=True)
    assert broken.startswith("NO: resume broken") and not ok
    unknown, ok = gpu_check.resume_verdict(same=False, control_same=None)
    assert unknown.startswith("NO") and "no control" in unknown and not ok


@pytest.mark.slow
def test_the_killed_run_beside_the_uninterrupted_ones_is_killed_at_batch_2_and_resumed(tmp_path, capsys):
    """``together`` (a GPU with room for the runs at once, here on the CPU): the killed
    run's output is followed while the uninterrupted run and the control run beside it, so
    it is killed at its checkpoint after batch 2 and its resumption starts there (once its
    output was read only after the uninterrupted run ended: it had finished, and "resume
    identical" compared two uninterrupted runs). A finished run left in the folders by an
    earlier check with ``--out`` is cleared first."""
    sizes = dict(gpu_check.SMOKE)
    chk = gpu_check.Check(sizes["time_scale"])
    gpu_check.part_data(gpu_check.Part("data", 300), chk, tmp_path, sizes, "cpu")
    stale = tmp_path / "runs" / "unet_cut" / "last.pt"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"a finished run of an earlier check")
    runs = gpu_check.part_resume(gpu_check.Part("resume", 300), chk, tmp_path, sizes, "cpu", together=True,
                                 models=("UNet",))  # fmt: skip
    out = capsys.readouterr().out
    resumed = (tmp_path / "UNet_resumed.log").read_text()
    assert re.search(r"^resuming \S+ at epoch 1, batch 2$", resumed, re.M), resumed
    assert "resume identical, device path, UNet: yes" in out
    assert "uninterrupted runs identical, device path, UNet: yes" in out
    assert chk.failed == [] and list(runs) == ["UNet"]
    assert (runs["UNet"] / "best.safetensors").is_file()  # fold -1: saved by epoch, for the predict part


# --------------------------------------------------------------------------- the command
def test_make_gpu_check_needs_no_venv():
    """The GPU machine has no network: the target must not build .venv, and runs python3
    with the project on PYTHONPATH."""
    made = subprocess.run(["make", "-n", "gpu-check", "VENV=/nonexistent"], cwd=REPO_ROOT, capture_output=True,
                          text=True, check=True).stdout  # fmt: skip
    assert "python3 benchmarks/gpu_check.py" in made and "venv" not in made and "pip" not in made, made
    assert f"PYTHONPATH={REPO_ROOT}" in made
    assert "python3 benchmarks/gpu_check.py" in gpu_check.__doc__


def test_every_part_gives_the_cuda_cache_back(monkeypatch):
    """The training processes of the resume part need the memory the parent's parts cached."""
    freed = []
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_check.torch.cuda, "empty_cache", lambda: freed.append(1))
    chk = gpu_check.Check(scale=1.0)
    chk.run("feed", lambda part: None)
    chk.run("3d", lambda part: 1 / 0)
    assert len(freed) == 2


def test_a_check_without_out_leaves_no_working_folder(monkeypatch, tmp_path):
    """About 1 GB a smoke run: a temporary folder, removed at the end."""
    seen = []

    def data(part, chk, work, sizes, device):
        seen.append(work)
        (work / "big.bin").write_bytes(b"x" * 1000)

    monkeypatch.setattr(gpu_check.tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(gpu_check, "part_data", data)
    monkeypatch.setattr(gpu_check, "part_resume", lambda part, *a: {})
    monkeypatch.setattr(gpu_check, "part_predict", lambda part, *a: None)
    assert gpu_check.main(["--smoke"]) == 0
    assert seen and seen[0].parent == tmp_path and not seen[0].exists()


# --------------------------------------------------------------------------- figures
class FakeCudaStep:
    """A training step "on a GPU" whose memory figures are torch.cuda's mocked statistics:
    ``resident`` bytes allocated before timing (the cache on the device, the model), each
    step peaking ``extra`` bytes above them."""

    def __init__(self, monkeypatch, resident: int, extra: int) -> None:
        self.device, self.stats = torch.device("cuda"), {"allocated": resident, "peak": resident}
        self.extra = extra
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: self.stats["allocated"])
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: self.stats["peak"])
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats",
                            lambda device=None: self.stats.update(peak=self.stats["allocated"]))  # fmt: skip

    def __call__(self, images, masks) -> None:
        self.stats["peak"] = max(self.stats["peak"], self.stats["allocated"] + self.extra)


def test_the_limit_runs_memory_leaves_out_what_was_resident_before_it(monkeypatch):
    """The limit run's peak held the device path's resident slices (6 GB) beside the step's
    3 GB: compared with a probe step, only the 3 GB and the training state count."""
    step = FakeCudaStep(monkeypatch, resident=6 * GB, extra=3 * GB)
    batches = iter([(None, None)] * 20)
    r = gpu_check.measure(step, batches, 4, seconds=60.0, max_steps=5)
    assert r["steps"] == 5
    assert r["peak_mb"] * 2**20 == 9 * GB and r["base_mb"] * 2**20 == 6 * GB
    assert gpu_check.step_bytes_of(r, state_bytes=GB // 2) == 3 * GB + GB // 2


def ev(start: float, end: float, name: str, cuda: bool = True, annotation: bool = False) -> SimpleNamespace:
    kind = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    return SimpleNamespace(time_range=SimpleNamespace(start=start, end=end), name=name, device_type=kind,
                           is_user_annotation=annotation)  # fmt: skip


def test_the_kernel_time_share_counts_kernels_only():
    """kineto's GPU spans of user annotations (ProfilerStep#, record_function) cover the
    whole window; memory copies and sets are no kernels."""
    events = [ev(0, 100, "aten::conv2d", cuda=False), ev(0, 100, "ProfilerStep#3", annotation=True),
              ev(10, 30, "void cudnn::conv_kernel"), ev(20, 40, "ampere_sgemm"),
              ev(50, 90, "Memcpy HtoD (Pinned -> Device)"), ev(60, 95, "Memset (Device)")]  # fmt: skip
    assert gpu_check.events_share(events) == 30 / 100
    assert gpu_check.events_share([ev(0, 100, "aten::add", cuda=False)]) is None


class Pairs(torch.utils.data.Dataset):
    """8 samples of zeros, as a loader's worker returns them (no augmentation)."""

    transform = None

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        return np.zeros((3, 8, 8), np.float32), np.zeros((3, 8, 8), np.float32)


def test_worker_counts_whose_batches_do_not_fit_the_shared_memory_are_cut(monkeypatch):
    """16 workers' batches in a container's 64 MB /dev/shm: that measurement is cut, the
    2 workers' kept."""
    monkeypatch.setattr(gpu_check, "available_cpus", lambda: 16)

    def check(num_workers, batch_bytes, *a, **k):
        if num_workers > 2:
            raise gpu_check.SharedMemoryError(f"shared memory /dev/shm has 64.0 MB free, but num_workers="
                                              f"{num_workers} need more: lower num_workers")  # fmt: skip

    monkeypatch.setattr(gpu_check, "check_shared_memory", check)
    part = gpu_check.Part("feed", 100)
    samples = gpu_check.SeededSamples(Pairs(), 0)
    runs = gpu_check.worker_runs(part, samples, np.zeros(8, bool), 4, cuda=False)
    assert [r[0] for r in runs] == ["workers2"]
    assert part.left_out == ["16 workers (every core): shared memory /dev/shm has 64.0 MB free, but "
                             "num_workers=16 need more"]  # fmt: skip


def test_the_worker_loaders_keep_their_workers_between_epochs():
    """A new epoch does not start the workers again (the figure would time their start)."""
    samples = gpu_check.SeededSamples(Pairs(), 0)
    loader, epoch = gpu_check.worker_loader(samples, np.zeros(8, bool), 4, 1, pin=False)
    first = epoch(0)
    assert len(list(first)) == 2
    assert epoch(1) is first and len(list(epoch(1))) == 2  # the same workers, reset
