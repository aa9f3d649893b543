"""The Accelerator of a training run (Hugging Face ``accelerate``): the device, the mixed
precision resolved for it (:func:`gi_utils.device.resolve_amp`), gradient accumulation and
the trackers; the GPU checked for kernels in this torch first."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from gi_utils.device import check_gpu_supported, cuda_wanted, resolve_amp
from gi_utils.training.config import TrainConfig

__all__ = ["make_accelerator"]


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """The Accelerator of a run: resolved mixed precision, accumulation, CPU if asked."""
    cuda = cuda_wanted(cfg.device)
    gpu = int(os.environ.get("LOCAL_RANK", "0")) if cuda else None
    if cuda:
        check_gpu_supported(gpu)  # a P100 under a torch without sm_60 kernels stops here, named
    amp = resolve_amp(cfg.amp, cuda=cuda, device=gpu)
    if cfg.spec.is_3d and amp == "bf16" and not cuda:
        # measured here (torch 2.14.1): oneDNN's bf16 3-D convolutions gave non-finite
        # gradients within a few steps, the same steps in float32 or without oneDNN did not
        warnings.warn(f"{cfg.arch} on the CPU trains in float32: bf16 3-D convolutions (oneDNN) "
                      "gave non-finite gradients here", stacklevel=2)  # fmt: skip
        amp = "no"
    if AcceleratorState._shared_state and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # accelerate keeps one global state per process; a notebook that trains several
        # models with other amp/device settings needs a fresh one (single process only)
        AcceleratorState._reset_state(reset_partial_state=True)
    logs = {} if cfg.log_with == "none" else {"log_with": cfg.log_with, "project_dir": str(Path(cfg.out_dir))}
    acc = Accelerator(
        mixed_precision=amp, gradient_accumulation_steps=cfg.grad_accum, cpu=cfg.device == "cpu", **logs
    )
    if amp == "fp16" and acc.device.type == "cpu":
        # accelerate runs fp16 on GPUs only (autocast off, no scaler on the CPU); torch has
        # both on the CPU too: switch them on before prepare(), so the T4's code path
        # (autocast, loss scaling, the scaler's state in last.pt) runs and is tested here
        acc.native_amp = True
        acc.scaler = torch.amp.GradScaler("cpu")
    return acc
