"""Mixed precision per device: bf16 only on GPUs that compute in it (compute capability >= 8.0).

No GPU is needed: torch.cuda's answers are monkeypatched. ``is_bf16_supported`` answers
True throughout, as torch does on a T4 by default (it counts emulation): the choice must
not follow it.
"""

from __future__ import annotations

import pytest
import torch

from gi_utils.device import (
    UnsupportedGPUError,
    arch_runs_on,
    check_gpu_supported,
    default_device,
    inference_autocast,
    resolve_amp,
)
from gi_utils.training import TrainConfig, make_accelerator

GPUS = {(6, 0): "Tesla P100-PCIE-16GB", (7, 5): "Tesla T4", (8, 0): "NVIDIA A100-SXM4-40GB",
        (9, 0): "NVIDIA H100 80GB HBM3"}  # fmt: skip


@pytest.fixture
def gpu(monkeypatch):
    """``gpu((major, minor))``: torch.cuda answers as on that GPU (the capability is asked of
    the device given, the current one by default)."""

    def make(capability: tuple[int, int]) -> list:
        asked: list = []

        def get_device_capability(device=None):
            asked.append(device)
            return capability

        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # with emulation
        monkeypatch.setattr(torch.cuda, "get_device_capability", get_device_capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: GPUS[capability])
        return asked

    return make


@pytest.mark.parametrize(("capability", "want"), [((6, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"),
                                                  ((9, 0), "bf16")])  # fmt: skip
def test_auto_is_bf16_from_compute_capability_8_only(gpu, capability, want):
    gpu(capability)
    assert resolve_amp("auto", cuda=True) == want
    assert resolve_amp("fp16", cuda=True) == "fp16" and resolve_amp("no", cuda=True) == "no"


@pytest.mark.parametrize("capability", [(6, 0), (7, 5)])
def test_explicit_bf16_below_8_falls_back_to_fp16_with_a_warning(gpu, capability):
    gpu(capability)
    major, minor = capability
    with pytest.warns(UserWarning, match=rf"amp='bf16' on {GPUS[capability]} \(compute capability "
                                         rf"{major}\.{minor}\).*training in fp16 with a gradient scaler"):  # fmt: skip
        assert resolve_amp("bf16", cuda=True) == "fp16"


@pytest.mark.parametrize("capability", [(8, 0), (9, 0)])
def test_explicit_bf16_from_8_is_kept(gpu, capability, recwarn):
    gpu(capability)
    assert resolve_amp("bf16", cuda=True) == "bf16"
    assert not [w for w in recwarn if "bf16" in str(w.message)]


@pytest.mark.filterwarnings("ignore:CUDA is not available")  # torch.autocast("cuda") on this machine
def test_inference_autocast_asks_the_gpu_it_predicts_on(gpu):
    asked = gpu((7, 5))
    device = torch.device("cuda", 1)
    assert inference_autocast(device, "auto").fast_dtype == torch.float16
    assert inference_autocast(device).fast_dtype == torch.float16  # None: fp16 on CUDA
    assert asked and all(d == device for d in asked)
    gpu((8, 0))
    assert inference_autocast(device, "auto").fast_dtype == torch.bfloat16


#: ``torch.cuda.get_arch_list()`` of a CUDA 12.8 build (Kaggle's 2026 image: torch 2.10 +
#: CUDA 12.8): no kernels below compute capability 7.5.
CU128_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]


@pytest.mark.parametrize(("arch", "capability", "runs"), [
    ("sm_75", (7, 5), True), ("sm_75", (7, 0), False), ("sm_70", (7, 5), True),  # same major, minor >= built
    ("sm_80", (8, 6), True), ("sm_80", (9, 0), False), ("sm_90a", (9, 0), True), ("sm_120", (12, 0), True),
    ("sm_120", (6, 0), False), ("compute_70", (9, 0), True), ("compute_90", (8, 6), False), ("gfx90a", (9, 0), False),
])  # fmt: skip
def test_which_kernels_run_on_which_capability(arch, capability, runs):
    assert arch_runs_on(arch, capability) is runs


@pytest.fixture
def cuda_card(monkeypatch, gpu):
    """``cuda_card(capability, archs)``: a visible GPU of that capability under a torch built
    for ``archs``."""

    def make(capability: tuple[int, int], archs: list[str]) -> None:
        gpu(capability)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(archs))

    return make


def test_a_p100_under_a_torch_without_sm_60_stops_at_setup_naming_what_to_choose(cuda_card):
    cuda_card((6, 0), CU128_ARCHS)
    message = r"Tesla P100-PCIE-16GB \(compute capability 6\.0\) is not supported.*sm_75.*GPU T4 x2"
    with pytest.raises(UnsupportedGPUError, match=message):
        check_gpu_supported()
    with pytest.raises(UnsupportedGPUError, match=message):
        default_device()  # inference resolves its device here
    with pytest.raises(UnsupportedGPUError, match=message):
        make_accelerator(TrainConfig(device="auto"))  # training: before any data or model is made
    assert default_device("cpu") == torch.device("cpu")  # the CPU asks nothing


def test_a_t4_passes_and_an_older_torch_runs_the_p100(cuda_card):
    cuda_card((7, 5), CU128_ARCHS)
    check_gpu_supported()
    assert default_device() == torch.device("cuda")
    cuda_card((6, 0), ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"])  # torch 2.5 + CUDA 12.1
    check_gpu_supported()
