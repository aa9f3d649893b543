"""The GPU acceptance check (issue 27): one command on a fresh GPU machine, one line per
fact, in at most 6 minutes including the data and caches it builds.

    make gpu-check              # on a GPU machine: python3 benchmarks/gpu_check.py
    make gpu-check SMOKE=1      # its smallest size, on a CPU too (CI): --smoke

The facts come in parts, each with a time budget (:data:`BUDGETS`, seconds on a GPU): a
part that runs out says that it was cut and what it left out, and the next part runs.

* card: the device by name, compute capability, memory, torch / CUDA / cuDNN versions and
  the mixed precision ``amp="auto"`` picks;
* feed (UNet/ResNet-34, 320 px, batch 64): the run's feed plan (its probe step and the
  free memory it saw); samples/s of the pure-step limit (one batch already on the
  device), the device path, 2 loader workers and one worker per core; device/limit and
  device/2 workers; NVML's busy % during the device run (``nvidia-ml-py``, the ``gpu``
  extra: "a kernel was running") and the kernel-time share of a ``torch.profiler`` window
  on it; the peak GPU memory of each;
* 3-D (SegResNet, the ``gpu`` preset): batch and patch depth from probe steps; one epoch
  of the preset's patches on the device path and on 2 loader workers;
* resume: a UNet run and a SegResNet run on the device path, killed (SIGKILL) at their
  checkpoint after batch 2 inside the epoch and resumed there, end with the weights of
  uninterrupted runs (``last.pt`` compared tensor by tensor); where the GPU has room for
  the runs at once, a second uninterrupted run is the control that tells kernels which
  differ from run to run (not a failure) from a broken resume;
* predict: 04's prediction (:func:`gi_utils.inference.make_submission` on the trained
  UNet) in slices/s, with 04's defaults with and without flip TTA, against a
  slice-by-slice loop like the public notebooks' (the same masks in full precision); the
  submission written and validated.

On a GPU session of this project: build the wheels the GPU image lacks, here, from the
project root after ``make venv`` (about 25 MB; ``python3 /work/shared/tools/gpu_wheels.py
--help``)::

    python3 /work/shared/tools/gpu_wheels.py                      # -> .whl/

then run, on the device machine from the project root (carry ``.whl``; ``timeout_s`` 480;
no network there and no ``.venv``: the image's python3 with the wheels installed)::

    python3 -m pip install -q --no-index --no-deps --no-compile .whl/*.whl && \\
      export PYTHONPATH=$PWD NO_ALBUMENTATIONS_UPDATE=1 HF_HUB_OFFLINE=1 GI_HEADLESS=1 && \\
      set -o pipefail && python3 benchmarks/gpu_check.py 2>&1 | tee $OUT/gpu_check.txt

(``make gpu-check`` runs the same: the venv's python where it exists, else python3.) The
working folder is a temporary one, removed at the end, unless ``--out`` names one.

Exit status 1 when a part failed or a check did not hold (a resume not identical, a
submission not valid); with ``--smoke`` a cut part counts as a failure too (CI must see
every part run).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import _common  # noqa: E402,F401 - sets the offline environment variables first
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import parse_args, peak_rss_mb  # noqa: E402
from bench_feed import Stepper, cycle, measure, sync, worker_loader  # noqa: E402
from bench_infer import reference_loop  # noqa: E402

from gi_utils.checkpoint import load_state  # noqa: E402
from gi_utils.data import (  # noqa: E402
    SHM_PATH,
    DeviceBatches,
    DevicePatches,
    GpuAugment,
    GpuAugment3d,
    PatchDataset,
    SharedMemoryError,
    SliceDataset,
    batch_nbytes,
    build_metadata,
    build_transforms,
    build_transforms_3d,
    check_shared_memory,
)
from gi_utils.device import device_name, resolve_amp  # noqa: E402
from gi_utils.inference import PostProcess, load_models, make_submission, validate_submission  # noqa: E402
from gi_utils.losses import build_loss  # noqa: E402
from gi_utils.models import build_model  # noqa: E402
from gi_utils.synthetic import generate_dataset  # noqa: E402
from gi_utils.training import (  # noqa: E402
    DeviceLoader,
    EpochSampler,
    SeededSamples,
    available_cpus,
    load_fold_data,
    plan_feed,
    preset_config,
)

SEED = 0
#: Seconds each part may take on a GPU (355 s in all; the rest of the 6 minutes is the
#: imports and the card's start). ``--time-scale`` multiplies them.
BUDGETS: dict[str, float] = {"data": 45, "feed": 110, "3d": 60, "resume": 100, "predict": 40}
FULL = {"size": 320, "batch": 64, "cases": 16, "folds": 4, "slices": 80, "test_cases": 2, "seconds": 12.0,
        "size_3d": 320, "run_batch": 16, "run_steps": 6, "time_scale": 1.0}  # fmt: skip
SMOKE = {"size": 64, "batch": 4, "cases": 3, "folds": 3, "slices": 16, "test_cases": 1, "seconds": 1.0,
         "size_3d": 32, "run_batch": 4, "run_steps": 4, "time_scale": 4.0}  # fmt: skip


class Part:
    """One part's clock: :meth:`left` seconds of its budget; :meth:`cut` records what it
    had to leave out (printed when the part ends)."""

    def __init__(self, name: str, seconds: float) -> None:
        self.name, self.seconds, self.t0, self.left_out = name, float(seconds), time.perf_counter(), []

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)

    def cut(self, what: str) -> None:
        self.left_out.append(what)

    def spent(self) -> float:
        return time.perf_counter() - self.t0


class Check:
    """The parts of one check and their outcome (``failed``, ``cut``: part names)."""

    def __init__(self, scale: float) -> None:
        self.scale, self.failed, self.cut, self.facts = scale, [], [], {}

    def run(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run part ``name`` within its budget; an exception is printed and the check goes on.
        The GPU memory the part's tensors left in torch's cache is given back (the resume
        part's training processes need it)."""
        part = Part(name, BUDGETS[name] * self.scale)
        try:
            out = fn(part, *args)
        except Exception as err:  # reported; the other parts still run
            traceback.print_exc()
            print(f"{name}: FAILED after {part.spent():.0f} s ({type(err).__name__}: {err})", flush=True)
            self.failed.append(name)
            return None
        finally:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        if part.left_out:
            self.cut.append(name)
            print(f"{name}: cut at {part.spent():.0f} s of its {part.seconds:.0f} s; left out: "
                  f"{'; '.join(part.left_out)}", flush=True)  # fmt: skip
        else:
            print(f"{name}: {part.spent():.0f} s of its {part.seconds:.0f} s", flush=True)
        return out

    def fact(self, key: str, text: str, ok: bool = True) -> None:
        """Print one fact (``key: text``); ``ok=False`` makes the check fail."""
        self.facts[key] = text
        print(f"{key}: {text}", flush=True)
        if not ok:
            self.failed.append(key)


def gb(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 1e9:.2f} GB"


def peak(r: dict[str, float], cuda: bool) -> str:
    if not cuda:
        return f"peak RSS {r['peak_mb']:.0f} MiB"
    return (f"peak GPU memory {gb(r['peak_mb'] * 2**20)}, "
            f"{gb((r['peak_mb'] - r['base_mb']) * 2**20)} above the {gb(r['base_mb'] * 2**20)} allocated before it")


# --------------------------------------------------------------------------- parts
def part_card(chk: Check, device: torch.device, amp: str) -> None:
    versions = f"torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}, cuDNN {torch.backends.cudnn.version()}"
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        chk.fact("card", f"{device_name(device)}, compute capability {p.major}.{p.minor}, {p.multi_processor_count} SMs, "
                         f"{gb(p.total_memory)}, {available_cpus()} CPU cores")  # fmt: skip
    else:
        chk.fact("card", f"none: {device_name(device)} with {available_cpus()} cores (the GPU facts below are n/a)")
    if os.path.isdir(SHM_PATH):  # where loader workers hand their batches over (a container's 64 MB by default)
        shm = shutil.disk_usage(SHM_PATH)
        chk.fact("shared memory", f"{SHM_PATH} {gb(shm.free)} free of {gb(shm.total)} (loader workers' batches)")
    else:
        chk.fact("shared memory", f"no {SHM_PATH} (loader workers' batches are not checked)")
    chk.fact("versions", versions)
    chk.fact("amp", f"{amp} (amp='auto' on this device)")


def run_config(work: Path, name: str, sizes: dict, device: str, **values: Any):
    """The TrainConfig of a run of this check (the ``gpu`` preset; on the CPU ``smoke``'s 3-D sizes)."""
    preset = "gpu" if device != "cpu" else "smoke"
    base = {"arch": "unet", "encoder": "resnet34", "weights": None, "img_size": sizes["size"], "epochs": 1,
            "n_folds": sizes["folds"], "cache": "disk", "cache_dtype": "float16", "cache_masks": True, "num_workers": 2,
            "data_dir": str(work / "data"), "out_dir": str(work / "runs" / name), "device": device,
            "progress": False, "max_steps_per_epoch": 0}  # fmt: skip
    return preset_config(preset, **{**base, **values})


def part_data(part: Part, chk: Check, work: Path, sizes: dict, device: str) -> dict:
    data = work / "data"
    t0 = time.perf_counter()
    if not (data / "train.csv").is_file():
        generate_dataset(data, sizes["cases"], sizes["test_cases"], SEED, slices_per_scan=sizes["slices"])
    made = time.perf_counter() - t0
    unet = load_fold_data(run_config(work, "unet", sizes, device))  # builds the folds and the disk cache runs reuse
    seg = load_fold_data(run_config(work, "seg", sizes, device, arch="segresnet3d", img_size=sizes["size_3d"]))
    chk.fact("data", f"{sizes['cases']} synthetic cases x {sizes['slices']} slices (+{sizes['test_cases']} test) in "
                     f"{made:.0f} s; caches at {sizes['size']} and {sizes['size_3d']} px in "
                     f"{time.perf_counter() - t0 - made:.0f} s")  # fmt: skip
    return {"meta": build_metadata(data), "unet": unet, "seg": seg}


def busy_share(spans: list[tuple[float, float]], window: tuple[float, float]) -> float:
    """Share of ``window`` covered by the union of the intervals ``spans`` (kernels that
    overlap, on several streams, count once)."""
    busy, end = 0.0, window[0]
    for lo, hi in sorted(spans):
        lo = max(lo, end)
        busy += max(0.0, hi - lo)
        end = max(end, hi)
    return min(1.0, busy / max(window[1] - window[0], 1e-9))


#: Steps in the ``torch.profiler`` window (each step's few thousand events are parsed on the CPU).
PROFILE_STEPS = {"full": 5, "smoke": 2}
#: Device events that move memory, not kernels (kineto names them "Memcpy HtoD (...)", "Memset (Device)").
MEMORY_OPS = re.compile(r"memcpy|memset", re.IGNORECASE)


def kernel_spans(events) -> list[tuple[float, float]]:
    """``(start, end)`` of the kernels among ``torch.profiler`` ``events``: device events
    that are neither user annotations (kineto's ``gpu_user_annotation`` spans: a
    ``ProfilerStep#`` or ``record_function`` range on the GPU's timeline, spanning the
    kernels in it and the gaps between them) nor memory copies or sets."""
    return [(e.time_range.start, e.time_range.end) for e in events
            if e.device_type == torch.autograd.DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
            and not MEMORY_OPS.search(e.name)]  # fmt: skip


def events_share(events) -> float | None:
    """:func:`busy_share` of the kernels over the span of every event; ``None``: no kernel."""
    spans = kernel_spans(events)
    if not spans:
        return None
    window = (min(e.time_range.start for e in events), max(e.time_range.end for e in events))
    return busy_share(spans, window)


def kernel_share(step: Stepper, batches, n: int) -> tuple[float | None, int]:
    """Share of a ``torch.profiler`` window of ``n`` steps in which a kernel ran
    (:func:`events_share`) and the number of events; ``None``: no kernel recorded."""
    cuda = step.device.type == "cuda"
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(n):
            step(*next(batches))
        sync(step.device)
    events = prof.events()
    return events_share(events), len(events)


def step_bytes_of(r: dict[str, float], state_bytes: int) -> int:
    """The step's own memory in a :func:`measure` result, like a probe step's: its peak
    above what was allocated when timing began (data kept on the device, the training
    state) plus the training state (``state_bytes``: model, gradients, optimizer moments),
    which a probe step allocates itself."""
    return int((r["peak_mb"] - r["base_mb"]) * 2**20) + int(state_bytes)


def worker_runs(part: Part, samples, empty, batch: int, cuda: bool) -> list[tuple]:
    """The worker path's runs of the feed part (2 workers and one per core): ``(key, label,
    batches, watch)``; a count whose batches do not fit the shared memory
    (:func:`check_shared_memory`) is cut, not run into a bus error."""
    runs, batch_bytes = [], batch_nbytes(samples[0]) * batch
    for w in sorted({2, available_cpus()}):
        label = f"{w} workers" + (" (every core)" if w == available_cpus() else "")
        try:
            check_shared_memory(w, batch_bytes)
        except SharedMemoryError as err:
            part.cut(f"{label}: {str(err).split(': lower')[0]}")
            continue
        _, epoch = worker_loader(samples, empty, batch, w, cuda)
        runs.append((f"workers{w}", label, lambda e=epoch: cycle(e), False))
    return runs


def part_feed(part: Part, chk: Check, data: dict, sizes: dict, device: torch.device, amp: str, smoke: bool) -> None:
    cuda, s, b = device.type == "cuda", sizes["size"], sizes["batch"]
    fold, meta = data["unet"], data["meta"]
    cfg = run_config(Path(fold.data_dir).parent, "feed", sizes, device.type if not cuda else "auto", batch_size=b)
    net = build_model("unet", "resnet34", 3, 3, weights=None)
    plan = plan_feed(cfg, fold, net, build_loss("bce_dice"), device, amp, torch.channels_last)
    print(plan.summary(), flush=True)
    cache = fold.cache
    step = Stepper("unet", device, amp, {})
    seconds, max_steps = sizes["seconds"], 8 if smoke else 100_000
    ds = SliceDataset(meta, s, (-2, 0, 2), build_transforms(s, True), cache=cache)
    empty = ds.meta["empty"].to_numpy()
    on_device = DeviceBatches(meta, cache, (-2, 0, 2), device)
    loader = DeviceLoader(on_device, EpochSampler(empty, SEED), b, GpuAugment(s), SEED)

    def device_epoch(epoch: int):
        loader.set_epoch(epoch)
        return iter(loader)

    samples = SeededSamples(ds, SEED)
    got: dict[str, dict[str, float]] = {}
    one = next(iter(loader))
    runs = [("limit", "pure-step limit", lambda: cycle(lambda _e: [one] * 64), False),
            ("device", "device path", lambda: cycle(device_epoch), True),
            *worker_runs(part, samples, empty, b, cuda)]  # fmt: skip
    while runs:  # a worker loader (its workers, their batches in shared memory) ends with its run
        key, label, batches, watch = runs.pop(0)
        if part.left() < seconds + 5:
            part.cut(label)
            continue
        got[key] = r = measure(step, batches(), b, seconds, max_steps, watch=watch and cuda)
        batches = None
        chk.fact(label, f"{r['samples_s']:.1f} samples/s ({r['steps']:.0f} steps of {b} at {s} px; {peak(r, cuda)})")
    if "limit" in got and plan.step_bytes is not None:
        chk.fact("probe step", f"{gb(plan.step_bytes)} planned against {gb(step_bytes_of(got['limit'], step.state_bytes))}"
                 " measured in the limit run (its peak above the memory allocated before it, plus the model, "
                 "gradients and AdamW state: like the probe's)")  # fmt: skip
    dev, two = got.get("device"), got.get("workers2")
    if dev and "limit" in got:
        chk.fact("device / limit", f"{dev['samples_s'] / got['limit']['samples_s']:.2f}x "
                                   "(target on an H100 >= 0.85; on a T4 >= 0.90)")  # fmt: skip
    if dev and two:
        chk.fact("device / 2 workers", f"{dev['samples_s'] / two['samples_s']:.2f}x (target on an H100 >= 5)")
    if dev:
        chk.fact("NVML busy during the device run", dev["util_text"] if cuda else "n/a (no GPU)")
    if part.left() > 5:
        n = PROFILE_STEPS["smoke" if smoke else "full"]
        share, n_events = kernel_share(step, cycle(device_epoch), n)
        why = (f"n/a: the profiler recorded no kernel ({n_events} events; CUPTI not available to torch.profiler?)"
               if cuda else f"n/a (no GPU; the profiler saw {n_events} CPU events)")  # fmt: skip
        chk.fact("kernel-time share of the device run",
                 f"{share:.0%} (torch.profiler, {n} steps; kernels only)" if share is not None else why)  # fmt: skip
    else:
        part.cut("the profiler window")


def epoch_time(step: Stepper, loader, batch: int, part: Part) -> tuple[float, int, int]:
    """Seconds of epoch 1 of ``loader`` (after two warm-up steps of epoch 0), steps done,
    steps of the epoch; an epoch the part's budget cannot finish stops early."""
    loader.sampler.set_epoch(0)  # a DeviceLoader's and a DataLoader's EpochSampler
    it = iter(loader)
    for _ in range(2):
        step(*next(it))
    del it
    sync(step.device)
    loader.sampler.set_epoch(1)
    total, done, t0 = len(loader), 0, time.perf_counter()
    for images, masks in loader:
        step(images, masks)
        done += 1
        if part.left() < 3:
            break
    sync(step.device)
    return time.perf_counter() - t0, done, total


def part_3d(part: Part, chk: Check, data: dict, sizes: dict, device: torch.device, amp: str) -> None:
    cuda, fold = device.type == "cuda", data["seg"]
    cfg = run_config(Path(fold.data_dir).parent, "seg", sizes, "auto" if cuda else "cpu", arch="segresnet3d",
                     img_size=sizes["size_3d"])  # fmt: skip
    kw = cfg.model_kwargs
    net = build_model("segresnet3d", in_channels=1, classes=3, **kw)
    plan = plan_feed(cfg, fold, net, build_loss("bce_dice"), device, amp, torch.channels_last_3d)
    print(plan.summary(), flush=True)
    sized = plan.sizes
    if sized:
        tried = ", ".join(f"{b}x{d}: {'out of memory' if p is None else gb(p)}" for b, d, p in sized["tried"])
        how = "from probe steps" if sized["fits"] else "kept: no probed size fits"
        chk.fact("3-D sizes", f"batch {sized['batch_size']} x depth {sized['patch_depth']} {how} (batch x depth: "
                              f"peak of its step: {tried})")  # fmt: skip
    else:
        chk.fact("3-D sizes", f"batch {cfg.batch_size} x depth {cfg.patch_depth}: the preset's (no GPU: nothing probed)")
    # the epochs below: the preset's patches, not the probed ones, on both paths: what a
    # 16 GB card trains, and an epoch 2 workers can feed within the part's budget
    batch, depth = cfg.batch_size, cfg.patch_depth
    why = "the preset's patches, not the probed ones: a 16 GB card's, the same on both paths"
    step = Stepper("segresnet3d", device, amp, kw)
    ds = PatchDataset(fold.train_meta, fold.cache, depth, build_transforms_3d(), cfg.patches_per_volume)
    empty = np.zeros(len(ds), bool)
    loaders = {"device path": DeviceLoader(DevicePatches(ds, fold.cache, device, SEED), EpochSampler(empty, SEED),
                                           batch, GpuAugment3d(), SEED)}  # fmt: skip
    samples = SeededSamples(ds, SEED)
    try:
        check_shared_memory(2, batch_nbytes(samples[0]) * batch)
        loaders["2 workers"] = worker_loader(samples, empty, batch, 2, cuda)[0]
    except SharedMemoryError as err:
        part.cut(f"the epoch on 2 workers: {str(err).split(': lower')[0]}")
    took = {}
    for name, loader in loaders.items():
        if part.left() < 5:
            part.cut(f"the epoch on the {name}")
            continue
        seconds, done, total = epoch_time(step, loader, batch, part)
        took[name] = seconds * total / max(done, 1)
        how = "" if done == total else f", extrapolated from {done} of {total} steps (cut)"
        if done < total:
            part.cut(f"{total - done} steps of the epoch on the {name}")
        chk.fact(f"3-D SegResNet epoch, {name}", f"{took[name]:.1f} s ({total} steps of {batch} patches of "
                                                 f"{depth}x{sizes['size_3d']}x{sizes['size_3d']}, {why}{how})")  # fmt: skip
    if len(took) == 2:
        chk.fact("3-D epoch, 2 workers / device path", f"{took['2 workers'] / took['device path']:.2f}x "
                                                       "(target on a GPU >= 4)")  # fmt: skip


#: Free GPU memory (bytes) from which the resume part starts one model's first three runs
#: at once (``"model"``: the uninterrupted run, its control and the run to kill) and both
#: models' six (``"all"``). Estimated: SegResNet's step at the preset's 2 x 32 x 320 x 320
#: patches ~12 GB (``benchmarks/memory_3d.py``), UNet's at batch 16 ~3 GB, a CUDA context
#: ~0.5 GB per process; the plan each run prints gives the figures measured.
TOGETHER_FREE: dict[str, float] = {"model": 45e9, "all": 60e9}
#: The output line at which the resume part kills a run (SIGKILL): its checkpoint after batch 2.
KILL_AT = ("saved checkpoint", "batch 2)")
#: What the resumed run must print: it went on from that checkpoint.
RESUMED_AT = re.compile(r"^resuming .+ at epoch 1, batch 2$", re.MULTILINE)
#: The resume part's runs of one model and their run folders (suffixes of its ``out_dir``).
ROLES: dict[str, str] = {"full": "", "control": "_control", "killed": "_cut", "resumed": "_cut"}


class Training:
    """A training process (``python -m gi_utils.training --config``) with its output in
    ``log``, killed when ``timeout`` seconds have passed; with ``kill_after=(start, part)``
    its output is followed as it comes (a thread: other processes may be waited for
    meanwhile) and it is killed (SIGKILL) at the first line that starts with ``start`` and
    holds ``part``."""

    def __init__(self, cfg, log: Path, timeout: float, kill_after: tuple[str, str] | None = None) -> None:
        cfg_file = log.with_suffix(".json")
        cfg_file.write_text(json.dumps(cfg.to_dict()))
        self.log, self.kill_after, self.killed = log, kill_after, False
        self.out = open(log, "w")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen([sys.executable, "-m", "gi_utils.training", "--config", str(cfg_file)],
                                     stdout=subprocess.PIPE if kill_after else self.out, stderr=subprocess.STDOUT,
                                     text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
        self.timer = threading.Timer(max(timeout, 0.0), self.proc.kill)
        self.timer.start()
        self.reader = threading.Thread(target=self._follow, daemon=True) if kill_after else None
        if self.reader is not None:
            self.reader.start()

    def _follow(self) -> None:
        start, part = self.kill_after
        for line in self.proc.stdout:
            self.out.write(line)
            if not self.killed and line.startswith(start) and part in line:
                self.proc.send_signal(signal.SIGKILL)
                self.killed = True

    def wait(self) -> tuple[int, bool, str]:
        """``(exit code, killed as asked, output)``; a run out of time exits -9, not killed as asked."""
        self.proc.wait()
        if self.reader is not None:
            self.reader.join()
            self.proc.stdout.close()
        self.timer.cancel()
        self.out.close()
        return self.proc.returncode, self.killed, self.log.read_text()


def plan_block(text: str) -> str:
    """The feed plan a run printed: its ``feed plan:`` line and the indented ones after it."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("feed plan:")), None)
    if start is None:
        return "feed plan: not printed"
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("  ")), len(lines))
    return "\n".join(lines[start:end])


def resume_groups(names: list[str], device: str) -> tuple[list[list[str]], bool]:
    """How the resume part starts the runs of the models ``names``: groups of models whose
    runs start at once, and ``together``: each model's uninterrupted run, its control (a
    second uninterrupted run) and the run to kill start at once, from the GPU memory free
    now (:data:`TOGETHER_FREE`); otherwise (a CPU, a smaller GPU) one run after the other,
    without a control."""
    free = torch.cuda.mem_get_info()[0] if device != "cpu" else 0
    if free >= TOGETHER_FREE["all"]:
        return [list(names)], True
    return [[n] for n in names], free >= TOGETHER_FREE["model"]


def resume_verdict(same: bool, control_same: bool | None) -> tuple[str, bool]:
    """The word on a resumed run's weights against the uninterrupted run's (``same``), told
    apart from kernels that differ from run to run by the control (``control_same``: two
    uninterrupted runs agree; ``None``: no control ran). ``ok``: the resume holds, or this
    card's kernels leave nothing to compare bit for bit."""
    if same:
        return "yes", True
    if control_same is False:
        return "not comparable: kernels non-deterministic on this card (two uninterrupted runs differ too)", True
    if control_same:
        return "NO: resume broken (two uninterrupted runs agree bit for bit, the resumed one differs)", False
    return "NO (no control run: non-deterministic kernels are not told apart from a broken resume)", False


def resume_configs(work: Path, sizes: dict, device: str, models) -> dict:
    """The resume part's TrainConfig of each model: one epoch of ``run_steps`` steps on the
    device path, a checkpoint every 2 steps, no validation (``fold=-1``: only the weights
    are compared, and ``best.safetensors`` is saved by epoch, for the predict part), the
    preset's sizes."""
    made = {"UNet": lambda: run_config(work, "unet", sizes, device, batch_size=sizes["run_batch"]),
            "SegResNet": lambda: run_config(work, "seg", sizes, device, arch="segresnet3d", img_size=sizes["size_3d"])}
    return {name: made[name]().replace(fold=-1, data_path="device", max_steps_per_epoch=sizes["run_steps"],
                                       save_every_steps=2, probe_size=False) for name in models}  # fmt: skip


def weights_of(run_dir: Path) -> dict[str, torch.Tensor] | None:
    """The model weights in ``run_dir``'s last.pt (``None``: none written)."""
    path = run_dir / "last.pt"
    return load_state(path)["model"] if path.is_file() else None


def largest_difference(a: dict | None, b: dict | None) -> float:
    """The largest absolute difference between two sets of weights (inf: not comparable)."""
    if a is None or b is None or a.keys() != b.keys():
        return float("inf")
    return max((float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel()), default=0.0)


def report_resume(part: Part, chk: Check, name: str, cfg, codes: dict, steps: int) -> Path | None:
    """The facts of one model's resume check from its runs' ``(exit code, killed as asked,
    output)`` by role; the uninterrupted run's folder where it ended well."""
    if "full" in codes:
        print(plan_block(codes["full"][2]), flush=True)
    for role, (code, killed, text) in codes.items():
        if code and not killed:
            print(f"{name}, {role} run, exit {code}:\n{text[-3000:]}", flush=True)
    missing = [r for r in ("full", "killed", "resumed") if r not in codes]
    late = [r for r, (code, killed, _) in codes.items() if code == -signal.SIGKILL and not killed]
    if missing or late:
        part.cut(f"{name}: {'the ' + ', '.join(missing) + ' run' if missing else 'a run out of time'}")
        return None
    dirs = {r: Path(cfg.out_dir + ROLES[r]) for r in ("full", "killed", "control") if r in codes}
    weights = {r: weights_of(d) for r, d in dirs.items()}
    same = largest_difference(weights["full"], weights["killed"]) == 0
    control_same = None
    if "control" in codes:
        differ = largest_difference(weights["full"], weights["control"])
        control_same = differ == 0
        chk.fact(f"uninterrupted runs identical, device path, {name}",
                 "yes (two runs at once: this card's kernels repeat their results)" if control_same else
                 f"NO: kernels non-deterministic on this card (largest weight difference {differ:.3g})")  # fmt: skip
    verdict, holds = resume_verdict(same, control_same)
    killed = codes["killed"][0] == -signal.SIGKILL and codes["killed"][1]
    resumed_at = bool(RESUMED_AT.search(codes["resumed"][2]))
    exits = {r: codes[r][0] for r in ("full", "control", "resumed") if r in codes}
    differ = "" if same else f"; largest weight difference {largest_difference(weights['full'], weights['killed']):.3g}"
    chk.fact(f"resume identical, device path, {name}",
             f"{verdict} (SIGKILL at the checkpoint after batch 2 of {steps}: {'yes' if killed else 'no'}; resumed "
             f"there: {'yes' if resumed_at else 'no'}; exits {', '.join(f'{r} {c}' for r, c in exits.items())}; "
             f"last.pt's weights compared{differ})", holds and killed and resumed_at and not any(exits.values()))  # fmt: skip
    return dirs["full"] if exits["full"] == 0 else None


def part_resume(part: Part, chk: Check, work: Path, sizes: dict, device: str, together: bool | None = None,
                models=("UNet", "SegResNet")) -> dict[str, Path]:  # fmt: skip
    """Each model's runs (:data:`ROLES`; the control where ``together``, by default from
    :func:`resume_groups`), then its facts; the uninterrupted runs' folders by model."""
    cfgs = resume_configs(work, sizes, device, models)
    for cfg in cfgs.values():  # an earlier check's runs (--out): finished, they would resume nothing
        for suffix in set(ROLES.values()):
            shutil.rmtree(cfg.out_dir + suffix, ignore_errors=True)
    groups, free_enough = resume_groups(list(cfgs), device)
    together = free_enough if together is None else together
    groups = groups if together else [[n] for n in cfgs]
    codes: dict[str, dict[str, tuple[int, bool, str]]] = {n: {} for n in cfgs}

    def at_once(runs: list[tuple[str, str]]) -> None:
        started = [(n, r, Training(cfgs[n].replace(out_dir=cfgs[n].out_dir + ROLES[r]), work / f"{n}_{r}.log",
                                   part.left(), KILL_AT if r == "killed" else None)) for n, r in runs]  # fmt: skip
        for n, r, training in started:
            codes[n][r] = training.wait()

    for group in groups:
        if part.left() < 15:
            part.cut(f"{' and '.join(group)}'s runs")
            continue
        if together:
            at_once([(n, r) for n in group for r in ("full", "control", "killed")])
        else:
            for n in group:
                at_once([(n, "full")])
                at_once([(n, "killed")])
        if part.left() > 5:
            at_once([(n, "resumed") for n in group])
    out = {}
    for n, cfg in cfgs.items():
        if codes[n] and (full := report_resume(part, chk, n, cfg, codes[n], sizes["run_steps"])) is not None:
            out[n] = full
    return out


def part_predict(part: Part, chk: Check, work: Path, runs: dict, sizes: dict, device: torch.device) -> None:
    if "UNet" not in (runs or {}):
        part.cut("no trained UNet (the resume part did not finish it)")
        return
    model = runs["UNet"] / "best.safetensors"
    data = work / "data"
    meta = build_metadata(data, "test", labels=False)
    n, post = len(meta), PostProcess(size_ref=sizes["size"])
    timings, subs = {}, {}
    exact = "full precision, batches of 1"  # the loop's kernels: its masks exactly
    for name, kw in (("no TTA", {"tta": False}), ("flip TTA", {"tta": True}), (exact, {"amp": "no", "batch_size": 1})):
        if part.left() < 5:
            part.cut(f"the prediction {name}")
            continue
        t0 = time.perf_counter()
        subs[name] = make_submission([model], data, "test", None, post=post, progress=False, device=device, **kw)
        sync(device)
        timings[name] = time.perf_counter() - t0
    if part.left() < 5:
        part.cut("the slice-by-slice loop")
        return
    (m, _), = load_models([model], device)
    t0 = time.perf_counter()
    loop = reference_loop(m, meta, sizes["size"], post, device)
    t_loop = time.perf_counter() - t0
    ours = [tuple(r) for r in subs[exact].itertuples(index=False)] if exact in subs else []
    agree = float(np.mean([a == b for a, b in zip(ours, loop)])) if len(ours) == len(loop) else float("nan")
    figures = ", ".join(f"{k} {n / v:.1f} slices/s ({t_loop / v:.2f}x the loop)" for k, v in timings.items())
    chk.fact("04 prediction", f"{figures}; slice-by-slice loop {n / t_loop:.1f} slices/s ({n} slices at "
                              f"{sizes['size']} px, UNet/ResNet-34; 04's batches of 16 and amp)")  # fmt: skip
    chk.fact("04 prediction against the loop", f"{agree:.2%} of the RLE rows identical in full precision, batches "
             "of 1 (larger batches may change the kernels' last bits)", agree == 1.0)  # fmt: skip
    if "no TTA" in subs:
        out = make_submission([model], data, "test", work / "submission.csv", post=post, progress=False, device=device)
        validate_submission(out, meta)
        chk.fact("submission", f"{len(out)} rows = {n} slices x 3 classes written to {work / 'submission.csv'} (valid)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="", help="working folder (default: a temporary one)")
    p.add_argument("--time-scale", type=float, default=None, help="multiply every part's budget (1 on a GPU)")
    args = parse_args(p, argv, {})
    sizes = dict(SMOKE if args.smoke else FULL)
    if args.time_scale is not None:
        sizes["time_scale"] = args.time_scale
    os.environ["GI_HEADLESS"] = "1"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.smoke:
        print("no GPU here: the check at its smallest size is `make gpu-check SMOKE=1`", file=sys.stderr)
        return 2
    if device.type == "cpu":  # the profiler's library reports the missing GPU as an error
        os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    amp = resolve_amp("auto", cuda=device.type == "cuda")
    # the data, caches and runs (about 1 GB at the smallest size): a temporary folder unless --out
    folder = tempfile.TemporaryDirectory(prefix="gi_gpu_check_", ignore_cleanup_errors=True)
    with contextlib.nullcontext(args.out) if args.out else folder as work:
        return check(Path(work), sizes, device, amp, args.smoke)


def check(work: Path, sizes: dict, device: torch.device, amp: str, smoke: bool) -> int:
    """Every part in ``work``; the exit status (see the module docstring)."""
    t0 = time.perf_counter()
    chk = Check(sizes["time_scale"])
    where = "auto" if device.type == "cuda" else "cpu"
    print(f"gpu check{' (--smoke: the smallest size)' if smoke else ''}: {device_name(device)}, "
          f"{sizes['size']} px, batch {sizes['batch']}, in {work}", flush=True)  # fmt: skip
    part_card(chk, device, amp)
    data = chk.run("data", part_data, chk, work, sizes, where)
    if data is not None:
        chk.run("feed", part_feed, chk, data, sizes, device, amp, smoke)
        chk.run("3d", part_3d, chk, data, sizes, device, amp)
    del data
    runs = chk.run("resume", part_resume, chk, work, sizes, where)
    chk.run("predict", part_predict, chk, work, runs, sizes, device)
    bad = chk.failed + (chk.cut if smoke else [])
    chk.fact("total", f"{time.perf_counter() - t0:.0f} s (budget {sum(BUDGETS.values()) * sizes['time_scale']:.0f} s); "
                      f"peak RSS {peak_rss_mb():.0f} MiB; failed: {', '.join(chk.failed) or 'none'}; "
                      f"cut: {', '.join(chk.cut) or 'none'}")  # fmt: skip
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
