"""The device and the mixed precision a run uses, resolved when asked, never at import.

Importing :mod:`gi_utils` never touches CUDA (a notebook launcher must be able to fork the
kernel afterwards); these functions query it only when called.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

__all__ = ["AMP_MODES", "DEVICES", "default_device", "cuda_wanted", "resolve_amp", "autocast_dtype",
           "inference_autocast"]  # fmt: skip

#: Mixed precision: "auto" = fp16 or bf16 on a GPU (bf16 where it is supported), bf16 on a
#: CPU with native bf16 instructions (AVX512-BF16 or AMX), full precision elsewhere.
AMP_MODES: tuple[str, ...] = ("no", "fp16", "bf16", "auto")
#: ``"auto"``: CUDA when present, else the CPU; ``"cpu"``: always the CPU.
DEVICES: tuple[str, ...] = ("auto", "cpu")


def cuda_wanted(device: str = "auto") -> bool:
    """True when ``device`` ("auto" | "cpu") asks for CUDA and a GPU is visible."""
    return device != "cpu" and torch.cuda.is_available()


def default_device(device: str = "auto") -> torch.device:
    """CUDA when present (and ``device`` is not "cpu"), else the CPU."""
    return torch.device("cuda" if cuda_wanted(device) else "cpu")


def resolve_amp(amp: str, cuda: bool) -> str:
    """The mixed precision a run uses: ``amp`` with "auto" (and fp16 without a GPU) resolved.

    "auto" gives bf16 on a GPU that supports it, fp16 on other GPUs (T4, P100), bf16 on a
    CPU with native bf16 instructions (about 2x faster there) and "no" on other CPUs,
    where bf16 is emulated and slower. "fp16" without CUDA is kept, with a warning: the run
    takes the GPU's mixed-precision path (fp16 autocast and a gradient scaler) on the CPU,
    slowly, which is how that path is tested on machines without a GPU.
    """
    if amp not in AMP_MODES:
        raise ValueError(f"amp={amp!r} is not valid; choose one of {', '.join(AMP_MODES)}")
    if amp == "auto":
        if cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        native = (getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
                  or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())  # fmt: skip
        return "bf16" if native else "no"
    if amp == "fp16" and not cuda:
        warnings.warn("amp='fp16' on the CPU: fp16 autocast and a gradient scaler, as on a T4, but slow; "
                      "use 'auto' or 'bf16' for speed", stacklevel=3)  # fmt: skip
    return amp


def autocast_dtype(amp: str) -> torch.dtype | None:
    """The autocast dtype of a resolved ``amp`` ("fp16" | "bf16" | "no" -> None)."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "no": None}[amp]


def inference_autocast(device: torch.device, amp: str | None = None) -> contextlib.AbstractContextManager:
    """The autocast of a prediction on ``device``: ``amp`` resolved as in training
    (:func:`resolve_amp`); ``None``: fp16 on CUDA, full precision on the CPU. The returned
    context manager may be entered again and again (once per forward pass)."""
    if amp is None:
        amp = "fp16" if device.type == "cuda" else "no"
    dtype = autocast_dtype(resolve_amp(amp, cuda=device.type == "cuda"))
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
