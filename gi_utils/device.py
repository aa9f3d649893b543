"""The device and the mixed precision a run uses, resolved when asked, never at import.

Importing :mod:`gi_utils` never touches CUDA (a notebook launcher must be able to fork the
kernel afterwards); these functions query it only when called.
"""

from __future__ import annotations

import contextlib
import re
import warnings

import torch

__all__ = ["AMP_MODES", "BF16_MIN_CAPABILITY", "DEVICES", "SUPPORTED_GPU_ADVICE", "UnsupportedGPUError", "default_device",
           "cuda_wanted", "cuda_has_bf16", "arch_runs_on", "check_gpu_supported", "device_name", "resolve_amp",
           "autocast_dtype", "inference_autocast"]  # fmt: skip

#: Mixed precision: "auto" = bf16 on a GPU of compute capability 8.0 or more (A100, L4,
#: H100), fp16 on older GPUs (T4, P100, V100), bf16 on a CPU with native bf16 instructions
#: (AVX512-BF16 or AMX), full precision elsewhere.
AMP_MODES: tuple[str, ...] = ("no", "fp16", "bf16", "auto")
#: The first CUDA compute capability with native bf16 (Ampere): cuDNN has no bf16
#: convolutions below it, where ``torch.cuda.is_bf16_supported()`` still says True (emulation).
BF16_MIN_CAPABILITY: tuple[int, int] = (8, 0)
#: ``"auto"``: CUDA when present, else the CPU; ``"cpu"``: always the CPU.
DEVICES: tuple[str, ...] = ("auto", "cpu")


#: What to choose instead of a GPU this torch has no kernels for (the message of
#: :class:`UnsupportedGPUError`). Kaggle's 2026 image (torch 2.10, CUDA 12.8) has none for
#: the P100 (compute capability 6.0); Kaggle offers T4s in pairs only.
SUPPORTED_GPU_ADVICE = ("on Kaggle: Settings -> Accelerator -> GPU T4 x2; on Colab: Runtime -> Change runtime "
                        "type -> T4 GPU; elsewhere a GPU of a capability listed, or device='cpu'")
_ARCH = re.compile(r"^(sm|compute)_(\d+)(\d)[a-z]?$")


class UnsupportedGPUError(RuntimeError):
    """The installed torch has no kernels for the GPU's compute capability."""


def arch_runs_on(arch: str, capability: tuple[int, int]) -> bool:
    """True when code compiled for ``arch`` (an entry of ``torch.cuda.get_arch_list()``,
    e.g. ``"sm_75"``, ``"compute_90"``, ``"sm_90a"``) runs on a GPU of ``capability``.

    CUDA's rules: a binary (``sm_XY``) runs on the same major version at a minor version
    >= Y (``sm_80`` runs on 8.6, not on 9.0 or 7.5); PTX (``compute_XY``) is compiled by
    the driver for any capability >= X.Y. An entry of another form counts as not running.
    """
    m = _ARCH.match(arch)
    if m is None:
        return False
    built = (int(m.group(2)), int(m.group(3)))
    if m.group(1) == "compute":
        return tuple(capability) >= built
    return capability[0] == built[0] and capability[1] >= built[1]


def check_gpu_supported(device: torch.device | int | None = None) -> None:
    """Stop at setup when the installed torch cannot run on the GPU ``device`` (``None``:
    the current one): none of ``torch.cuda.get_arch_list()`` runs on its compute capability
    (:func:`arch_runs_on`). Without this check such a run fails much later, deep inside the
    first convolution, with ``cudaErrorNoKernelImageForDevice``. Initialises CUDA: call it
    where the device is put to use, not before a notebook launcher forks.

    Raises:
        UnsupportedGPUError: naming the card, its capability, the torch and CUDA versions,
            the architectures this torch has kernels for, and what to choose instead
            (:data:`SUPPORTED_GPU_ADVICE`).
    """
    archs = list(torch.cuda.get_arch_list())
    if not archs:  # a torch that does not say (or has no CUDA): nothing to check against
        return
    capability = tuple(torch.cuda.get_device_capability(device))
    if any(arch_runs_on(a, capability) for a in archs):
        return
    name = torch.cuda.get_device_name(device)
    raise UnsupportedGPUError(
        f"{name} (compute capability {capability[0]}.{capability[1]}) is not supported by this torch "
        f"{torch.__version__} (CUDA {torch.version.cuda}), which has kernels for {', '.join(archs)} only: "
        f"the first convolution would fail with 'no kernel image is available for execution on the device'. "
        f"Choose another GPU: {SUPPORTED_GPU_ADVICE}"
    )


def cuda_wanted(device: str = "auto") -> bool:
    """True when ``device`` ("auto" | "cpu") asks for CUDA and a GPU is visible."""
    return device != "cpu" and torch.cuda.is_available()


def default_device(device: str = "auto") -> torch.device:
    """CUDA when present (and ``device`` is not "cpu"), else the CPU.

    Raises:
        UnsupportedGPUError: the GPU has no kernels in this torch (:func:`check_gpu_supported`).
    """
    if not cuda_wanted(device):
        return torch.device("cpu")
    check_gpu_supported()
    return torch.device("cuda")


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
