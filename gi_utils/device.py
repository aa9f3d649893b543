"""The device and the mixed precision a run uses, resolved when asked, never at import.

Importing :mod:`gi_utils` never touches CUDA (a notebook launcher must be able to fork the
kernel afterwards); these functions query it only when called.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

__all__ = ["AMP_MODES", "BF16_MIN_CAPABILITY", "DEVICES", "default_device", "cuda_wanted", "cuda_has_bf16",
           "device_name", "resolve_amp", "autocast_dtype", "inference_autocast"]  # fmt: skip

#: Mixed precision: "auto" = bf16 on a GPU of compute capability 8.0 or more (A100, L4,
#: H100), fp16 on older GPUs (T4, P100, V100), bf16 on a CPU with native bf16 instructions
#: (AVX512-BF16 or AMX), full precision elsewhere.
AMP_MODES: tuple[str, ...] = ("no", "fp16", "bf16", "auto")
#: The first CUDA compute capability with native bf16 (Ampere): cuDNN has no bf16
#: convolutions below it, where ``torch.cuda.is_bf16_supported()`` still says True (emulation).
BF16_MIN_CAPABILITY: tuple[int, int] = (8, 0)
#: ``"auto"``: CUDA when present, else the CPU; ``"cpu"``: always the CPU.
DEVICES: tuple[str, ...] = ("auto", "cpu")


def cuda_wanted(device: str = "auto") -> bool:
    """True when ``device`` ("auto" | "cpu") asks for CUDA and a GPU is visible."""
    return device != "cpu" and torch.cuda.is_available()


def default_device(device: str = "auto") -> torch.device:
    """CUDA when present (and ``device`` is not "cpu"), else the CPU."""
    return torch.device("cuda" if cuda_wanted(device) else "cpu")


def device_name(device: torch.device | str) -> str:
    """``device`` by name: the card's for CUDA (``"NVIDIA H100 80GB HBM3 (cuda:0)"``),
    ``"cpu"`` for the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"{torch.cuda.get_device_name(index)} (cuda:{index})"


def cuda_has_bf16(device: torch.device | int | None = None) -> bool:
    """True when the GPU ``device`` (``None``: the current one) computes in bf16 natively:
    compute capability >= :data:`BF16_MIN_CAPABILITY` (8.0).

    ``torch.cuda.is_bf16_supported()`` is not asked: by default it counts emulation and
    says True on a T4 (7.5), whose cuDNN has no bf16 convolutions.
    """
    return tuple(torch.cuda.get_device_capability(device)) >= BF16_MIN_CAPABILITY


def resolve_amp(amp: str, cuda: bool, device: torch.device | int | None = None) -> str:
    """The mixed precision a run uses: ``amp`` with "auto" resolved for the device.

    On a GPU (``cuda``; ``device`` names it, ``None``: the current one) "auto" gives bf16
    at compute capability 8.0 or more (A100, L4, H100) and fp16 below (P100 6.0, V100
    7.0, T4 7.5), where the training adds a gradient scaler. An explicit "bf16" on a GPU
    below 8.0 **falls back to fp16 with a warning** (naming the GPU and its capability)
    rather than failing: such a GPU would emulate bf16 (or find no cuDNN kernel), and a
    long Kaggle session should not end on a setting that has a working equivalent; the
    run records the precision it used (``metrics.json``: ``mixed_precision``).

    On the CPU "auto" gives bf16 with native bf16 instructions (about 2x faster there) and
    "no" on other CPUs, where bf16 is emulated and slower. "fp16" without CUDA is kept,
    with a warning: the run takes the GPU's mixed-precision path (fp16 autocast and a
    gradient scaler) on the CPU, slowly, which is how that path is tested on machines
    without a GPU.

    Raises:
        ValueError: ``amp`` is not one of :data:`AMP_MODES`.
    """
    if amp not in AMP_MODES:
        raise ValueError(f"amp={amp!r} is not valid; choose one of {', '.join(AMP_MODES)}")
    if cuda and amp in ("auto", "bf16"):
        if cuda_has_bf16(device):
            return "bf16"
        if amp == "bf16":
            major, minor = torch.cuda.get_device_capability(device)
            warnings.warn(f"amp='bf16' on {torch.cuda.get_device_name(device)} (compute capability "
                          f"{major}.{minor}): no native bf16 below {BF16_MIN_CAPABILITY[0]}."
                          f"{BF16_MIN_CAPABILITY[1]}, training in fp16 with a gradient scaler instead",
                          stacklevel=3)  # fmt: skip
        return "fp16"
    if amp == "auto":
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
    (:func:`resolve_amp`, for that GPU: "auto" and "bf16" are fp16 below compute
    capability 8.0); ``None``: fp16 on CUDA, full precision on the CPU. The returned
    context manager may be entered again and again (once per forward pass)."""
    if amp is None:
        amp = "fp16" if device.type == "cuda" else "no"
    cuda = device.type == "cuda"
    dtype = autocast_dtype(resolve_amp(amp, cuda=cuda, device=device if cuda else None))
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
