"""Mixed precision per device: bf16 only on GPUs that compute in it (compute capability >= 8.0).

No GPU is needed: torch.cuda's answers are monkeypatched. ``is_bf16_supported`` answers
True throughout, as torch does on a T4 by default (it counts emulation): the choice must
not follow it.
"""

from __future__ import annotations

import pytest
import torch

from gi_utils.device import inference_autocast, resolve_amp

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
