"""3-D networks from MONAI: whole-scan models beside the 2.5D smp ones.

A 3-D model sees a patch of ``patch_depth`` consecutive slices at the model's in-plane
size, one input channel, and outputs logits (N, 3, D, S, S). The 1st place of the
competition blended three MONAI SegResNets (160x160x80 patches, sliding windows, flip
TTA) with 2.5D models; MONAI's residual ``UNet`` is the common public baseline. Neither is
written here: the networks are MONAI's, with settings small enough for a CPU by default
(``model_kwargs`` change them, e.g. ``{"init_filters": 32}`` on a GPU).
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.nets import SegResNet, UNet
from torch import nn

__all__ = ["ARCHITECTURES_3D", "MONAI3D_DEFAULTS", "is_volumetric", "channels_last_format", "stride_3d",
           "build_monai3d"]  # fmt: skip

#: Architecture name -> MONAI class (3-D, ``spatial_dims=3``).
ARCHITECTURES_3D: dict[str, type[nn.Module]] = {
    "segresnet3d": SegResNet,
    "unet3d": UNet,
}
#: Defaults of each class's arguments (overridden by ``model_kwargs``).
MONAI3D_DEFAULTS: dict[str, dict[str, Any]] = {
    "segresnet3d": {"init_filters": 8, "blocks_down": (1, 2, 2, 4), "blocks_up": (1, 1, 1)},
    "unet3d": {"channels": (16, 32, 64, 128), "strides": (2, 2, 2), "num_res_units": 1},
}


def is_volumetric(arch: str) -> bool:
    """True for the names of :data:`ARCHITECTURES_3D` (case-insensitive)."""
    return isinstance(arch, str) and arch.lower() in ARCHITECTURES_3D


def channels_last_format(arch: str) -> torch.memory_format:
    """The channels-last layout of ``arch``'s tensors: ``channels_last_3d`` for a 3-D model
    (5-D tensors), ``channels_last`` for a 2.5D one."""
    return torch.channels_last_3d if is_volumetric(arch) else torch.channels_last


def _settings(arch: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    return {**MONAI3D_DEFAULTS[arch.lower()], **kwargs}


def stride_3d(arch: str, model_kwargs: dict[str, Any] | None = None) -> int:
    """Every side of a 3-D model's input must be a multiple of this (2 per downsampling)."""
    s = _settings(arch, dict(model_kwargs or {}))
    if arch.lower() == "segresnet3d":
        return 2 ** (len(s["blocks_down"]) - 1)
    stride = 1
    for st in s["strides"]:
        stride *= int(st) if isinstance(st, int) else int(max(st))
    return stride


def build_monai3d(arch: str, in_channels: int = 1, classes: int = 3, **kwargs: Any) -> nn.Module:
    """A MONAI 3-D network that outputs logits (N, classes, D, H, W).

    Raises:
        KeyError: ``arch`` is not a 3-D architecture.
        TypeError: an argument the MONAI class does not take (named in the message).
    """
    cls = ARCHITECTURES_3D[arch.lower()]
    s = _settings(arch, kwargs)
    try:
        return cls(spatial_dims=3, in_channels=in_channels, out_channels=classes, **s)
    except TypeError as err:
        raise TypeError(f"{arch}: {err} (model_kwargs go to monai.networks.nets.{cls.__name__})") from None
