"""How fast the training feed keeps the model busy (issue 21): the same model, size and
batch, training steps fed three ways.

* workers: the worker path (``data_path="workers"``): SliceDataset on the disk cache,
  albumentations per sample in DataLoader workers (2, and every core when there are more),
  pinned batches copied to the device;
* device: the device path (``data_path="device"``): the cache's slices on the device,
  batches gathered and augmented there (kornia), no workers; on CUDA also
  ``device_host``, the same with the slices in host memory (a cache larger than the GPU):
  each batch gathered on the CPU one ahead and copied through pinned buffers;
* limit: the same steps on one batch already on the device, no data work at all.

Two models: UNet/ResNet-34 (2.5D slices) and the 3-D SegResNet (patches of the ``gpu``
preset's depth and batch: ``PatchDataset`` with MONAI per patch in the workers, or
``DevicePatches`` cut on the device with ``GpuAugment3d``).

Prints samples/s of each, device/limit and device/2 workers, the peak memory (GPU memory on
CUDA, this process's RSS on a CPU) and, on CUDA, NVML's utilisation sampled during the
device runs (``torch.cuda.utilization``: nvidia-ml-py, the ``gpu`` extra; a missing one is
said). ``benchmarks/gpu_check.py`` (``make gpu-check``) runs the acceptance subset of it. The mixed precision
``amp="auto"`` picks, channels_last, AdamW, bce_dice.

Sizes: on CUDA 320 px, batches 16 and 64 (2.5D) and the ``gpu`` preset's (3-D: 2 patches
of 32 slices); on a CPU, and with ``--smoke``, 64 px, a batch of 4 (2.5D) and the
``smoke`` preset's (3-D: 2 patches of 16 slices) on a tiny synthetic set. Each configuration runs at most ``--seconds`` (after a
warm-up) and the whole script stops starting new ones after ``--budget`` seconds, so a
GPU run ends in under 8 minutes.

Usage: ``python benchmarks/bench_feed.py [--smoke] [--size 320] [--batches 16 64] [--models unet segresnet3d]``
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import argparse  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import _common  # noqa: E402,F401 - sets the offline environment variables first
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import NvmlBusy, parse_args, peak_rss_mb, result  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from gi_utils.data import (  # noqa: E402
    DeviceBatches,
    DevicePatches,
    GpuAugment,
    GpuAugment3d,
    PatchDataset,
    SliceDataset,
    VolumeCache,
    build_metadata,
    build_transforms,
    build_transforms_3d,
)
from gi_utils.device import autocast_dtype, resolve_amp  # noqa: E402
from gi_utils.losses import build_loss  # noqa: E402
from gi_utils.models import arch_spec, build_model  # noqa: E402
from gi_utils.synthetic import generate_dataset  # noqa: E402
from gi_utils.training import ARCH_PRESETS, DeviceLoader, EpochSampler, SeededSamples  # noqa: E402

SEED = 0


def cycle(make_epoch) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of epoch 0, 1, 2, ... of ``make_epoch(epoch)`` without end."""
    epoch = 0
    while True:
        yield from make_epoch(epoch)
        epoch += 1


class Stepper:
    """Training steps of one model: forward, loss, backward, AdamW (autocast as amp says;
    ``arch`` 2.5D with a ResNet-34 encoder and 3 channels, or 3-D with 1)."""

    def __init__(self, arch: str, device: torch.device, amp: str, model_kwargs: dict) -> None:
        self.device, self.dtype, self.layout = device, autocast_dtype(amp), arch_spec(arch).memory_format
        channels = arch_spec(arch).in_channels((-2, 0, 2))
        self.model = build_model(arch, "resnet34", channels, 3, weights=None, **model_kwargs)
        self.model = self.model.to(device, memory_format=self.layout)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.loss = build_loss("bce_dice")
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    @property
    def state_bytes(self) -> int:
        """Bytes of the training state: the model's parameters and buffers, their gradients
        and AdamW's moments (what a probe step holds beside its activations)."""
        tensors = [*self.model.parameters(), *self.model.buffers()]
        tensors += [p.grad for p in self.model.parameters() if p.grad is not None]
        tensors += [t for s in self.opt.state.values() for t in s.values() if torch.is_tensor(t)]
        return sum(t.numel() * t.element_size() for t in tensors)

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> None:
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.layout)
        masks = masks.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            logits = self.model(images)
        loss = self.loss(logits.float(), masks)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(step: Stepper, batches: Iterator, batch: int, seconds: float, max_steps: int,
            warmup: int = 3, watch: bool = False) -> dict[str, float]:  # fmt: skip
    """samples/s of ``step`` over ``batches`` (after ``warmup`` steps), peak memory, and
    NVML's utilisation of the GPU during the timed steps when ``watch`` (``util``: % or
    NaN, ``util_text``: the figure or why there is none).

    ``peak_mb``: on CUDA the peak of ``torch.cuda.max_memory_allocated`` during the timed
    steps, ``base_mb`` what was allocated when they began (the model, its optimizer state,
    data kept on the device: ``peak_mb - base_mb`` is what the steps add); on a CPU this
    process's peak RSS, ``base_mb`` 0."""
    dev = step.device
    for _ in range(warmup):
        step(*next(batches))
    sync(dev)
    base = 0.0
    if dev.type == "cuda":
        base = torch.cuda.memory_allocated(dev) / 2**20
        torch.cuda.reset_peak_memory_stats(dev)
    busy = NvmlBusy(dev if watch else torch.device("cpu"))
    with busy:
        t0, n = time.perf_counter(), 0
        while n < max_steps and time.perf_counter() - t0 < seconds:
            step(*next(batches))
            n += 1
            if n % 8 == 0:
                sync(dev)
        sync(dev)
        took = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else peak_rss_mb()
    return {"samples_s": n * batch / took, "steps": n, "seconds": took, "peak_mb": peak, "base_mb": base,
            "util": busy.mean if busy.mean is not None else float("nan"), "util_text": busy.text()}  # fmt: skip


def worker_loader(samples, empty, batch: int, workers: int, pin: bool):
    """The worker path's DataLoader over ``samples`` (a :class:`SeededSamples`) as the
    training loop makes it (an :class:`EpochSampler`, the last short batch dropped), and
    ``epoch(e)``: an iterator of its batches of epoch ``e``. Its workers persist from one
    epoch to the next: a measurement that crosses an epoch times the batches, not 16
    workers starting again."""
    sampler = EpochSampler(empty, SEED)
    dl = DataLoader(samples, batch_size=batch, sampler=sampler, drop_last=True, num_workers=workers,
                    pin_memory=pin, persistent_workers=workers > 0)  # fmt: skip

    def epoch(e: int):
        sampler.set_epoch(e)
        return iter(dl)

    return dl, epoch


def feeds(arch: str, meta, cache: VolumeCache, size: int, device: torch.device, depth: int):
    """(worker dataset, its sampler's empty flags, data on the device, data in host memory
    or ``None`` off CUDA, device augmentation) of one model."""
    if arch_spec(arch).is_3d:
        ds = PatchDataset(meta, cache, depth, build_transforms_3d())

        def place(resident: bool):
            return DevicePatches(ds, cache, device, SEED, resident=resident)

        empty, augment = np.zeros(len(ds), bool), GpuAugment3d()
    else:
        ds = SliceDataset(meta, size, (-2, 0, 2), build_transforms(size, True), cache=cache)

        def place(resident: bool):
            return DeviceBatches(meta, cache, (-2, 0, 2), device, resident=resident)

        empty, augment = ds.meta["empty"].to_numpy(), GpuAugment(size)
    return ds, empty, place(True), place(False) if device.type == "cuda" else None, augment


def run_batch(step: Stepper, fed, batch: int, workers: list[int], seconds: float, max_steps: int):
    """samples/s etc. of each feed at ``batch``: workers (each count), device, device_host
    (CUDA), limit."""
    ds, empty, on_device, in_host, augment = fed
    pin = step.device.type == "cuda"
    got: dict[str, dict[str, float]] = {}
    samples = SeededSamples(ds, SEED)  # one view of the dataset for every worker count
    for w in workers:  # one DataLoader, iterated once per epoch, as the training loop does
        _dl, worker_epoch = worker_loader(samples, empty, batch, w, pin)
        got[f"workers{w}"] = measure(step, cycle(worker_epoch), batch, seconds, max_steps)
        del _dl, worker_epoch  # its workers end here
    for name, data in (("device", on_device), ("device_host", in_host)):
        if data is None:  # off CUDA: no host variant
            continue
        loader = DeviceLoader(data, EpochSampler(empty, SEED), batch, augment, SEED)

        def device_epoch(epoch: int, loader=loader):
            loader.set_epoch(epoch)
            return iter(loader)

        got[name] = measure(step, cycle(device_epoch), batch, seconds, max_steps, watch=True)
    one = next(iter(DeviceLoader(on_device, EpochSampler(empty, SEED), batch, augment, SEED)))
    got["limit"] = measure(step, cycle(lambda _e, one=one: [one] * 64), batch, seconds, max_steps)
    return got


def report(tag: str, batch: int, got: dict[str, dict[str, float]], cuda: bool) -> None:
    """The lines of one model and batch, and its result lines (``tag`` "" for 2.5D, "3d_")."""
    unit = "GPU MiB" if cuda else "MiB RSS"
    for name, r in got.items():
        util = f", NVML busy {r['util_text']}" if cuda and name.startswith("device") else ""
        print(f"  batch {batch} {name}: {r['samples_s']:.1f} samples/s ({r['steps']:.0f} steps; "
              f"peak {r['peak_mb']:.0f} {unit}{util})", flush=True)  # fmt: skip
    two = got.get("workers2") or next(v for k, v in got.items() if k.startswith("workers"))  # 2, or the 1 core there is
    result(f"feed_{tag}device_b{batch}", got["device"]["samples_s"], "samples/s", "report")
    result(f"feed_{tag}device_over_limit_b{batch}", got["device"]["samples_s"] / got["limit"]["samples_s"], "x",
           ">= 0.8 on a GPU")  # fmt: skip
    result(f"feed_{tag}device_over_2_workers_b{batch}", got["device"]["samples_s"] / two["samples_s"], "x",
           "> 1 on a GPU")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=None, help="img_size (320 on CUDA, 64 on a CPU)")
    ap.add_argument("--batches", type=int, nargs="+", default=None,
                    help="2.5D batch sizes (16 64 on CUDA, 4 on a CPU; 3-D: the preset's)")  # fmt: skip
    ap.add_argument("--models", nargs="+", default=["unet", "segresnet3d"], choices=["unet", "segresnet3d"])
    ap.add_argument("--seconds", type=float, default=None, help="timed seconds per configuration")
    ap.add_argument("--budget", type=float, default=360.0, help="start no further configuration after this many seconds")
    args = parse_args(ap, argv, {"size": 64, "batches": [4], "seconds": 3.0})  # and 6 steps, the 3-D smoke preset
    t_start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    small = args.smoke or device.type != "cuda"
    size = args.size or (64 if small else 320)
    preset_3d = ARCH_PRESETS["smoke" if small else "gpu"]["segresnet3d"]
    plans = {"unet": (args.batches or ([4] if small else [16, 64]), {}),
             "segresnet3d": ([preset_3d["batch_size"]], preset_3d.get("model_kwargs", {}))}  # fmt: skip
    depth = preset_3d["patch_depth"]
    seconds = args.seconds or (3.0 if small else 20.0)
    max_steps = 6 if args.smoke else 10_000
    amp = resolve_amp("auto", cuda=device.type == "cuda")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = sorted({min(2, cores), cores})
    print(f"device {device}, amp {amp!r}, {size} px, models {args.models} (3-D patches of {depth} slices), "
          f"worker counts {workers}, {seconds:.0f} s per configuration", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        n_cases, n_slices = (2, 12) if small else (8, 48)
        data = generate_dataset(Path(tmp) / "data", n_cases, 0, SEED, slices_per_scan=n_slices,
                                size=(size + 16, size))  # fmt: skip
        meta = build_metadata(data)
        cache = VolumeCache(meta, size, Path(tmp) / "cache", progress=False, dtype="uint8", with_masks=False)
        for arch in args.models:
            batches, model_kwargs = plans[arch]
            fed = feeds(arch, meta, cache, size, device, depth)
            print(f"{arch}: {len(meta)} slices, {len(fed[0])} samples an epoch; on the device "
                  f"{fed[2].nbytes / 2**20:.0f} MiB", flush=True)  # fmt: skip
            step = Stepper(arch, device, amp, model_kwargs)
            for batch in batches:
                if time.perf_counter() - t_start > args.budget:
                    print(f"budget of {args.budget:.0f} s spent: {arch} batch {batch} left out", flush=True)
                    break
                got = run_batch(step, fed, batch, workers, seconds, max_steps)
                report("3d_" if arch_spec(arch).is_3d else "", batch, got, device.type == "cuda")
            del step, fed
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(f"total {time.perf_counter() - t_start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
