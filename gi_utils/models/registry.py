"""Model registry: one entry per architecture, one name, one class.

Each architecture has one :class:`ArchSpec` (:data:`ARCH_SPECS`): its name, its kind
(2.5D: an smp model over stacked slices; 3-D: a MONAI model over patches of slices,
:mod:`gi_utils.models.monai3d`), its class and default arguments, its memory layout and
input channels. :func:`arch_spec` is the one lookup from a name (case-insensitive; a typo
raises an error that lists the valid names); the config looks it up once
(``TrainConfig.spec``) and the stages above ask the entry, not the name, which kind of
model they hold. :func:`build_model` builds one. Encoder weights come from ``None`` (random), a named smp
weight set such as ``"imagenet"`` (downloaded from the Hugging Face hub, so not offline),
or a local file (:mod:`gi_utils.models.weights`). Kaggle notebooks run offline, so they
use the local-file form. Saving and loading trained models: :mod:`gi_utils.models.io`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import segmentation_models_pytorch as smp
import timm
import torch
from torch import nn

from gi_utils.constants import NUM_CLASSES
from gi_utils.models.monai3d import (
    ARCHITECTURES_3D,
    MONAI3D_DEFAULTS,
    build_monai3d,
    monai_class,
    stride_3d,
)
from gi_utils.models.weights import load_encoder_file, local_weights_path

__all__ = ["ARCHITECTURES", "CUDA_NONDETERMINISTIC", "ENCODER_STRIDE", "KINDS", "ArchSpec", "ARCH_SPECS", "arch_spec", "find_arch", "arch_names",
           "encoder_names", "check_encoder", "check_img_size", "build_model", "split_outputs"]  # fmt: skip

#: Architecture name (as used in configs and on the command line) -> smp class. Every
#: entry builds and trains at 64x64 with a ResNet encoder (smp's PAN needs >= 128 px and
#: DPT only takes ViT encoders, so they are left out).
ARCHITECTURES: dict[str, type[nn.Module]] = {
    "unet": smp.Unet,
    "unetplusplus": smp.UnetPlusPlus,
    "deeplabv3plus": smp.DeepLabV3Plus,
    "deeplabv3": smp.DeepLabV3,
    "fpn": smp.FPN,
    "manet": smp.MAnet,
    "linknet": smp.Linknet,
    "pspnet": smp.PSPNet,
    "upernet": smp.UPerNet,
    "segformer": smp.Segformer,
}
#: Input height and width must be multiples of this (5 stride-2 stages).
ENCODER_STRIDE: int = 32
#: The kinds of model: 2.5D (neighbour slices as channels, one slice out) and 3-D.
KINDS: tuple[str, ...] = ("2.5d", "3d")
#: The ops of an architecture's training step (forward and backward, with a ResNet encoder)
#: that have no deterministic CUDA kernel (``torch.use_deterministic_algorithms``' list,
#: torch 2.14): its GPU runs, a resumed one too, may differ in the last bits. Read from the
#: aten ops one step records (``tests/test_determinism.py``); unlisted architectures: none.
CUDA_NONDETERMINISTIC: dict[str, tuple[str, ...]] = {
    "deeplabv3plus": ("upsample_bilinear2d_backward",),
    "deeplabv3": ("upsample_bilinear2d_backward",),
    "fpn": ("upsample_bilinear2d_backward",),
    "pspnet": ("_adaptive_avg_pool2d_backward", "upsample_bilinear2d_backward"),
    "upernet": ("_adaptive_avg_pool2d_backward", "upsample_bilinear2d_backward"),
    "segformer": ("upsample_bilinear2d_backward",),
    "segresnet3d": ("upsample_trilinear3d_backward",),
}


@dataclass(frozen=True)
class ArchSpec:
    """One architecture of the registry: what kind of model it is and how to build it.

    The kind decides the rest of the pipeline, each stage in its own place: 2.5D models
    train on stacked slices (:class:`gi_utils.data.SliceDataset`) and predict slice by
    slice; 3-D ones train on patches of slices (:class:`gi_utils.data.PatchDataset`) and
    predict by sliding windows (:mod:`gi_utils.inference.sliding_window`). The presets of
    an architecture are in :data:`gi_utils.training.presets.ARCH_PRESETS`, under its name.

    Attributes:
        name: the registry's name (lower case), what configs and model files hold.
        kind: ``"2.5d"`` or ``"3d"`` (:data:`KINDS`).
        source: the smp class, or for a 3-D model the name of its MONAI class (imported
            when :attr:`cls` is first asked for, :func:`gi_utils.models.monai3d.monai_class`).
        defaults: the class's arguments that ``model_kwargs`` override (3-D models;
            read, never changed: :meth:`settings` copies them).
        cuda_nondeterministic: the ops of its training step with no deterministic CUDA
            kernel (:data:`CUDA_NONDETERMINISTIC`); empty: with deterministic algorithms
            on (:func:`gi_utils.training.seed_everything`) its CUDA runs repeat to the bit.
    """

    name: str
    kind: Literal["2.5d", "3d"]
    source: type[nn.Module] | str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    cuda_nondeterministic: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS or self.name != self.name.lower():
            raise ValueError(f"architecture {self.name!r}: the name must be lower case and the kind one of "
                             f"{KINDS}, not {self.kind!r}")  # fmt: skip

    @property
    def cls(self) -> type[nn.Module]:
        """The smp or MONAI class."""
        return monai_class(self.name) if isinstance(self.source, str) else self.source

    @property
    def is_3d(self) -> bool:
        """True for a 3-D model (patches of slices, sliding-window prediction)."""
        return self.kind == "3d"

    @property
    def cuda_deterministic(self) -> bool:
        """True when its training step on CUDA repeats to the bit (deterministic algorithms on)."""
        return not self.cuda_nondeterministic

    @property
    def has_encoder(self) -> bool:
        """A 2.5D model has an smp encoder (named in its label); a 3-D one has none."""
        return not self.is_3d

    @property
    def memory_format(self) -> torch.memory_format:
        """The channels-last layout of its tensors: ``channels_last_3d`` for a 3-D model
        (5-D tensors), ``channels_last`` for a 2.5D one."""
        return torch.channels_last_3d if self.is_3d else torch.channels_last

    def in_channels(self, slice_offsets: tuple[int, ...] | list[int]) -> int:
        """Input channels: the 2.5D neighbours stacked, or 1 for a 3-D model."""
        return 1 if self.is_3d else len(slice_offsets)

    def settings(self, model_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The class's arguments: :attr:`defaults`, then ``model_kwargs``."""
        return {**self.defaults, **dict(model_kwargs or {})}

    def depth_stride(self, model_kwargs: Mapping[str, Any] | None = None) -> int:
        """A 3-D model's patch depth must be a multiple of this; 1 for a 2.5D model."""
        return stride_3d(self.name, self.settings(model_kwargs)) if self.is_3d else 1


#: Every architecture, by name: the 2.5D smp ones, then the 3-D MONAI ones.
ARCH_SPECS: dict[str, ArchSpec] = {
    **{name: ArchSpec(name, "2.5d", cls, cuda_nondeterministic=CUDA_NONDETERMINISTIC.get(name, ()))
       for name, cls in ARCHITECTURES.items()},
    **{name: ArchSpec(name, "3d", cls, MONAI3D_DEFAULTS[name], CUDA_NONDETERMINISTIC.get(name, ()))
       for name, cls in ARCHITECTURES_3D.items()},
}


def find_arch(arch: Any) -> ArchSpec | None:
    """The entry of ``arch`` (a name in any case), or ``None`` when there is none."""
    return ARCH_SPECS.get(arch.lower()) if isinstance(arch, str) else None


def arch_spec(arch: str) -> ArchSpec:
    """The entry of ``arch`` (a name in any case): the one lookup of an architecture.

    Raises:
        KeyError: an unknown name; the message lists the valid ones.
    """
    spec = find_arch(arch)
    if spec is None:
        raise KeyError(f"unknown architecture {arch!r}; valid names: {', '.join(arch_names())}")
    return spec


def arch_names() -> list[str]:
    """Every valid architecture name: the 2.5D smp ones, then the 3-D MONAI ones
    (:data:`gi_utils.models.monai3d.ARCHITECTURES_3D`)."""
    return list(ARCH_SPECS)


# --------------------------------------------------------------------------- names
def encoder_names() -> list[str]:
    """smp's own encoder names; any timm model also works as ``"tu-<timm name>"``."""
    return list(smp.encoders.get_encoder_names())


def check_encoder(encoder: str) -> str:
    """Return ``encoder`` if smp can build it, else raise ``KeyError`` listing valid names."""
    if encoder.startswith("tu-"):
        if timm.is_model(encoder[3:].split(".")[0]):
            return encoder
        raise KeyError(
            f"unknown timm encoder {encoder!r}: {encoder[3:]!r} is not a timm model "
            "(see timm.list_models())"
        )
    if encoder not in smp.encoders.encoders:
        raise KeyError(
            f"unknown encoder {encoder!r}; valid smp encoders: {', '.join(encoder_names())} "
            "(or 'tu-<timm model name>')"
        )
    return encoder


def check_img_size(img_size: int, name: str = "img_size") -> int:
    """Raise ``ValueError`` unless ``img_size`` is a positive multiple of 32."""
    if not isinstance(img_size, int) or isinstance(img_size, bool) or img_size <= 0:
        raise ValueError(f"{name} must be a positive int, got {img_size!r}")
    if img_size % ENCODER_STRIDE:
        lo = max(ENCODER_STRIDE, img_size // ENCODER_STRIDE * ENCODER_STRIDE)
        raise ValueError(
            f"{name}={img_size} is not divisible by the encoder's stride {ENCODER_STRIDE}; "
            f"use e.g. {lo} or {lo + ENCODER_STRIDE}"
        )
    return img_size


# --------------------------------------------------------------------------- building
def build_model(
    arch: str,
    encoder: str = "resnet18",
    in_channels: int = 3,
    classes: int = NUM_CLASSES,
    weights: str | os.PathLike | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a segmentation model that outputs logits: an smp 2.5D model, or a MONAI 3-D
    one (:mod:`gi_utils.models.monai3d`: ``encoder`` and ``weights`` do not apply, it
    trains from scratch; ``in_channels`` is 1).

    Args:
        arch: a name of :func:`arch_names` (case-insensitive).
        encoder: an smp encoder name (``"resnet18"``, ``"efficientnet-b0"`` ...) or
            ``"tu-<timm name>"``.
        in_channels: input channels C of the (N, C, H, W) input (2.5D: slices stacked).
        classes: output channels of the (N, classes, H, W) logits.
        weights: ``None`` (random init), an smp weight name such as ``"imagenet"``
            (needs internet), or a path to a local encoder state dict (``.safetensors``,
            or ``.pt/.pth/.bin`` read with ``weights_only=True``). A first convolution
            stored for 3 channels is adapted to ``in_channels``.
        **kwargs: passed to the smp class (e.g. ``decoder_channels``).

    Raises:
        KeyError: unknown architecture or encoder (the message lists valid names).
        ValueError: ``in_channels``/``classes`` not positive, or a local weight file that
            does not fit the encoder.
        FileNotFoundError: ``weights`` looks like a path and does not exist.
    """
    spec = arch_spec(arch)
    if spec.is_3d:
        if weights is not None:
            raise ValueError(f"{arch} is a 3-D MONAI model: it has no encoder weights (weights=None)")
        return build_monai3d(spec.name, in_channels, classes, **spec.settings(kwargs))
    check_encoder(encoder)
    for name, value in (("in_channels", in_channels), ("classes", classes)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    local = local_weights_path(weights)
    smp_weights: Any = None if local is not None else weights
    if encoder.startswith("tu-") and smp_weights is not None:
        smp_weights = True  # timm picks the pretrained tag from the name
    try:
        model = spec.cls(
            encoder_name=encoder,
            encoder_weights=smp_weights,
            in_channels=in_channels,
            classes=classes,
            **kwargs,
        )
    except OSError as err:  # hub download failed (offline)
        raise OSError(
            f"could not fetch {weights!r} weights for encoder {encoder!r} ({err}); offline "
            "runs (Kaggle) must pass weights=<path to a local encoder state dict>"
        ) from err
    if local is not None:
        load_encoder_file(model.encoder, local)
    return model


def split_outputs(out: torch.Tensor | tuple) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(segmentation logits, gate logits or None)`` of a model's output.

    A model built with a classifier gate (smp ``aux_params``) returns
    ``(masks (N, 3, ...), labels (N, 3))``; one without returns the masks alone.
    """
    if isinstance(out, (tuple, list)):
        return out[0], out[1]
    return out, None
