"""Presets: the platform ones, "auto" following the machine, 3-D entries that apply."""

from __future__ import annotations

import pytest

from gi_utils.training import presets
from gi_utils.training.presets import (
    PRESETS,
    machine_preset,
    preset_config,
    preset_values,
    resolve_preset,
    with_preset,
)


@pytest.mark.parametrize("preset", ["gpu", "kaggle", "colab"])
@pytest.mark.parametrize("arch", ["segresnet3d", "unet3d"])
def test_gpu_presets_apply_to_3d_models(preset, arch):
    """`preset_config("gpu", arch="segresnet3d")` raised (weights='imagenet' does not apply)
    and would otherwise have trained batches of 16 patches of 32x320x320."""
    cfg = preset_config(preset, arch=arch)
    assert cfg.weights is None and cfg.img_size == 320
    assert cfg.batch_size * cfg.patch_depth <= 4 * 64  # the sizes benchmarks/memory_3d.py fits in 16 GB


@pytest.mark.parametrize("preset", ["kaggle", "colab"])
def test_platform_presets_use_the_compact_cache_and_every_cpu(preset, monkeypatch):
    monkeypatch.setattr(presets, "available_cpus", lambda: 4)
    values = preset_values(preset, "unet")
    assert (values["cache_dtype"], values["cache_masks"], values["img_size"]) == ("uint8", False, 320)
    assert values["num_workers"] == 4
    assert PRESETS[preset]["num_workers"] == presets.CORES  # the table says "cores"


@pytest.mark.parametrize(("cuda", "platform", "expected"), [
    (False, "local", "smoke"), (False, "kaggle", "smoke"), (False, "colab", "smoke"),
    (True, "kaggle", "kaggle"), (True, "colab", "colab"), (True, "local", "gpu"),
])  # fmt: skip
def test_auto_follows_the_machine(monkeypatch, cuda, platform, expected):
    """The design card's `papermill 02_train.ipynb out.ipynb -p arch unet` trained the smoke
    preset (64 px, 10 steps) even on a Kaggle GPU."""
    monkeypatch.delenv("GI_PRESET", raising=False)  # the tests' pin (conftest.py)
    monkeypatch.setattr(presets, "cuda_wanted", lambda device="auto": cuda)
    monkeypatch.setattr(presets, "platform_name", lambda: platform)
    assert machine_preset() == expected == resolve_preset("auto")
    assert preset_values("auto") == preset_values(expected)


def test_one_merge_the_preset_then_the_values_given():
    """The command line, 02's parameters and preset_config all merge through with_preset."""
    assert with_preset("demo", {"arch": "unet", "epochs": 2}) == {**PRESETS["demo"], **presets.ARCH_PRESETS["demo"]["unet"],
                                                                   "arch": "unet", "epochs": 2}  # fmt: skip
    assert with_preset("demo", {})["model_kwargs"] == presets.ARCH_PRESETS["demo"]["unet"]["model_kwargs"]
    assert with_preset("demo", {"arch": "SegResNet3D"})["patch_depth"] == 32  # the name in any case
    assert with_preset("", {"epochs": 2}) == {"epochs": 2}
    assert preset_config("demo", arch="segresnet3d", epochs=2).epochs == 2


def test_per_architecture_presets_name_registry_entries():
    from gi_utils.models import ARCH_SPECS

    assert all(arch in ARCH_SPECS for entries in presets.ARCH_PRESETS.values() for arch in entries)


def test_unknown_preset_lists_auto_and_the_names():
    with pytest.raises(ValueError, match="preset='fast' is not valid; choose one of auto, smoke, demo, gpu, kaggle"):
        resolve_preset("fast")


def test_the_tests_pin_the_cheap_preset(monkeypatch):
    monkeypatch.setattr(presets, "cuda_wanted", lambda device="auto": True)
    monkeypatch.setenv("GI_PRESET", "smoke")
    assert resolve_preset("auto") == "smoke"
