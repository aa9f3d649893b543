"""Probe steps: the GPU memory one training step of a run's model takes, measured before
the run starts, and the run's :class:`~gi_utils.training.feed_plan.FeedPlan` made from it.

A probe step is the run's step on a copy of the model (forward under the run's autocast,
the loss, backward, an AdamW step) on a synthetic batch of the run's shape; its peak is
``torch.cuda.max_memory_allocated`` over the step less what was allocated before. The
random number generators are left as they were and the model is not changed. On a CPU
nothing is measured (the plan needs no figures there).
"""

from __future__ import annotations

import copy
import gc
from typing import Any

import torch

from gi_utils.constants import CLASSES
from gi_utils.data.gpu_augment import GpuAugment
from gi_utils.device import autocast_dtype
from gi_utils.models.registry import split_outputs
from gi_utils.training.config import TrainConfig
from gi_utils.training.feed_plan import (
    HEADROOM,
    SIZES_3D,
    FeedPlan,
    allowances,
    choose_size,
    decide_feed,
    gpu_memory,
)
from gi_utils.training.loaders import FoldData

__all__ = ["probe_step", "batch_shape", "plan_feed", "probe_size_3d"]


def batch_shape(cfg: TrainConfig, batch_size: int | None = None, patch_depth: int | None = None) -> tuple[int, ...]:
    """The shape of ``cfg``'s training images: ``(N, C, S, S)``, 3-D ``(N, 1, P, S, S)``."""
    n, s = batch_size or cfg.batch_size, cfg.img_size
    return (n, 1, patch_depth or cfg.patch_depth, s, s) if cfg.spec.is_3d else (n, cfg.in_channels, s, s)


def probe_step(
    net: torch.nn.Module,
    loss_fn: torch.nn.Module,
    shape: tuple[int, ...],
    device: torch.device,
    amp: str = "no",
    memory_format: torch.memory_format = torch.contiguous_format,
    measure: bool | None = None,
) -> int | None:
    """Peak bytes of one training step of a copy of ``net`` on ``device``.

    Args:
        net: the run's model (not changed; it may live on the CPU).
        loss_fn: the run's loss, on logits ``(N, 3, ...)`` and float masks.
        shape: the images, ``(N, C, S, S)`` or ``(N, 1, P, S, S)`` (:func:`batch_shape`).
        amp: the run's resolved mixed precision ("no" | "fp16" | "bf16").
        memory_format: the run's layout of the model and its images.
        measure: read ``torch.cuda``'s memory statistics (default: on CUDA).

    Returns:
        The peak in bytes; ``None`` when the step ran out of GPU memory (the memory it
        took is given back to the driver) or nothing was measured (off CUDA).
    """
    measure = device.type == "cuda" if measure is None else measure
    dtype = autocast_dtype(amp)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            if measure:
                torch.cuda.synchronize(device)
                base = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            _step(net, loss_fn, shape, device, dtype, memory_format)
            if measure:
                torch.cuda.synchronize(device)
                return int(torch.cuda.max_memory_allocated(device) - base)
        except torch.cuda.OutOfMemoryError:
            pass
        finally:  # the step's blocks (all of them after an OOM) go back before the next probe
            gc.collect()
            if measure or device.type == "cuda":
                torch.cuda.empty_cache()
    return None


def _step(net, loss_fn, shape, device, dtype, memory_format) -> None:
    model = copy.deepcopy(net).to(device, memory_format=memory_format).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    images = torch.zeros(shape, device=device).contiguous(memory_format=memory_format)
    masks = torch.zeros((shape[0], len(CLASSES), *shape[2:]), device=device)
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        seg, _ = split_outputs(model(images))
    loss_fn(seg.float(), masks).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _allowance(cfg: TrainConfig, fold: FoldData, net: torch.nn.Module, device_path: bool, shape) -> dict[str, int]:
    n, s = shape[0], cfg.img_size
    depth = shape[2] if cfg.spec.is_3d else 1
    batch_numel = n * (shape[1] + len(CLASSES)) * depth * s * s
    if cfg.spec.is_3d:  # a whole scan: image, masks, window sums and counts
        val_numel = fold.longest_val_scan * s * s * (2 + 2 * len(CLASSES))
    else:  # a batch of 2 x batch_size: images, masks, logits, probabilities
        val_numel = 2 * n * s * s * (cfg.in_channels + 3 * len(CLASSES)) if len(fold.val_meta) else 0
    param_bytes = sum(t.numel() * t.element_size() for t in (*net.parameters(), *net.buffers()))
    return allowances(param_bytes=param_bytes, ema=cfg.ema_decay > 0, batch_numel=batch_numel,
                      device_path=device_path, val_numel=val_numel)  # fmt: skip


def _device_augment(cfg: TrainConfig) -> bool:
    """The device augmentation honours ``cfg.augment_kwargs`` (3-D: none are taken)."""
    if cfg.spec.is_3d or not (cfg.augment and cfg.augment_kwargs):
        return True
    try:
        GpuAugment(cfg.img_size, cfg.augment_kwargs)
    except (KeyError, ValueError):
        return False
    return True


def plan_feed(
    cfg: TrainConfig,
    fold: FoldData,
    net: torch.nn.Module,
    loss_fn: torch.nn.Module,
    device: torch.device,
    amp: str,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> FeedPlan:
    """The :class:`FeedPlan` of a new run. On CUDA: a 3-D model's sizes
    (:func:`probe_size_3d`, with ``cfg.probe_size``), one probe step at the run's batch
    (unless the sizes' probe measured it), then the GPU memory seen; off CUDA nothing is
    probed. The run applies the plan's :attr:`~FeedPlan.config_sizes` to its config."""
    sizes, step_bytes = probe_size_3d(cfg, fold, net, loss_fn, device, amp, memory_format)
    cfg = cfg.replace(**{k: sizes[k] for k in ("batch_size", "patch_depth")}) if sizes else cfg
    shape = batch_shape(cfg)
    memory = None
    if device.type == "cuda":  # on the workers path too: the figures are the run plan's
        if step_bytes is None:
            step_bytes = probe_step(net, loss_fn, shape, device, amp, memory_format)
        memory = gpu_memory(device)  # after the probe: the libraries' handles exist, its blocks are cached
    asked = cfg.data_path
    return decide_feed(asked, has_cache=fold.cache is not None, train_bytes=fold.train_bytes,
                       val_bytes=fold.val_bytes, memory=memory, step_bytes=step_bytes,
                       allowance=_allowance(cfg, fold, net, asked != "workers", shape) if memory else {},
                       headroom=HEADROOM, device_augment=_device_augment(cfg), sizes=sizes)  # fmt: skip


def probe_size_3d(
    cfg: TrainConfig,
    fold: FoldData,
    net: torch.nn.Module,
    loss_fn: torch.nn.Module,
    device: torch.device,
    amp: str,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> tuple[dict[str, Any] | None, int | None]:
    """A 3-D run's ``batch_size`` and ``patch_depth`` from probe steps (``cfg.probe_size``
    on CUDA): the first of :data:`SIZES_3D` (depths the model takes) whose step and
    allowances fit in :data:`HEADROOM` of the free memory beside the training slices (on
    the device path: ``data_path`` auto or device); where none fits beside them, the first
    that fits alone, for the workers path (``"without_cache"``, said in the plan's reason).

    Returns:
        ``(sizes, step bytes)``: ``sizes`` is ``{"batch_size", "patch_depth", "tried",
        "fits", "without_cache"}`` (``None`` off CUDA or without ``probe_size``; where no
        candidate fits, ``fits`` is False and the config's values are kept), the step's
        peak at the chosen size (``None``: not probed at it).
    """
    if not (cfg.probe_size and cfg.spec.is_3d and device.type == "cuda"):
        return None, None
    stride = cfg.spec.depth_stride(cfg.model_kwargs)
    candidates = [(b, d) for b, d in SIZES_3D if d % stride == 0]
    peaks: dict[tuple[int, int], int | None] = {}

    def peak_of(b: int, d: int) -> int | None:  # each size probed once
        if (b, d) not in peaks:
            peaks[b, d] = probe_step(net, loss_fn, batch_shape(cfg, b, d), device, amp, memory_format)
        return peaks[b, d]

    def budget(b: int, d: int, cache: int = 0) -> float:
        allow = _allowance(cfg, fold, net, cfg.data_path != "workers", batch_shape(cfg, b, d))
        return HEADROOM * gpu_memory(device).free - sum(allow.values()) - cache

    cache = fold.train_bytes if cfg.data_path != "workers" and fold.cache is not None else 0
    chosen, tried = choose_size(candidates, peak_of, lambda b, d: budget(b, d, cache))
    without_cache = chosen is None and cache > 0
    if without_cache:  # none fits beside the slices: the first that fits alone (the workers path)
        chosen, _ = choose_size(candidates, peak_of, budget)
    size = chosen or (cfg.batch_size, cfg.patch_depth)
    return ({"batch_size": size[0], "patch_depth": size[1], "tried": tried, "fits": chosen is not None,
             "without_cache": without_cache and chosen is not None}, peaks.get(size))  # fmt: skip
