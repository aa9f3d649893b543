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

from torch import nn

__all__ = ["ARCHITECTURES_3D", "MONAI3D_DEFAULTS", "monai_class", "stride_3d", "build_monai3d"]

#: Architecture name -> the name of its MONAI class in ``monai.networks.nets`` (3-D,
#: ``spatial_dims=3``), imported by :func:`monai_class` when first needed: MONAI's package
#: import costs about 5 s of CPU, which no 2.5D process (a notebook kernel, a test) should pay.
ARCHITECTURES_3D: dict[str, str] = {
    "segresnet3d": "SegResNet",
    "unet3d": "UNet",
}
#: Defaults of each class's arguments (overridden by ``model_kwargs``).
MONAI3D_DEFAULTS: dict[str, dict[str, Any]] = {
    "segresnet3d": {"init_filters": 8, "blocks_down": (1, 2, 2, 4), "blocks_up": (1, 1, 1)},
    "unet3d": {"channels": (16, 32, 64, 128), "strides": (2, 2, 2), "num_res_units": 1},
}


def monai_class(arch: str) -> type[nn.Module]:
    """The MONAI class of ``arch`` (a name of :data:`ARCHITECTURES_3D`), imported here."""
    from monai.networks import nets

    return getattr(nets, ARCHITECTURES_3D[arch])


def stride_3d(arch: str, settings: dict[str, Any]) -> int:
    """Every side of a 3-D model's input must be a multiple of this (2 per downsampling).

    Args:
        arch: a name of :data:`ARCHITECTURES_3D` (as the registry holds it).
        settings: the class's arguments, defaults included
            (:meth:`gi_utils.models.registry.ArchSpec.settings`).
    """
    if ARCHITECTURES_3D[arch] == "SegResNet":
        return 2 ** (len(settings["blocks_down"]) - 1)
    stride = 1
    for st in settings["strides"]:
        stride *= int(st) if isinstance(st, int) else int(max(st))
    return stride


def build_monai3d(arch: str, in_channels: int = 1, classes: int = 3, **settings: Any) -> nn.Module:
    """A MONAI 3-D network that outputs logits (N, classes, D, H, W).

    Args:
        arch: a name of :data:`ARCHITECTURES_3D`.
        settings: the class's arguments, defaults included.

    Raises:
        KeyError: ``arch`` is not a 3-D architecture.
        TypeError: an argument the MONAI class does not take (named in the message).
    """
    cls = monai_class(arch)
    try:
        return cls(spatial_dims=3, in_channels=in_channels, out_channels=classes, **settings)
    except TypeError as err:
        raise TypeError(f"{arch}: {err} (model_kwargs go to monai.networks.nets.{cls.__name__})") from None
