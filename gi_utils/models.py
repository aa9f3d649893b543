"""Model registry over segmentation_models_pytorch, and saving/loading trained models.

:func:`build_model` maps one architecture name to one smp class; a typo raises an error
that lists the valid names. Encoder weights come from ``None`` (random), a named smp
weight set such as ``"imagenet"`` (downloaded from the Hugging Face hub, so not offline),
or a local file: a safetensors or ``torch.save`` state dict of the encoder, read without
unpickling code. Kaggle notebooks run offline, so they use the local-file form.

A trained model is saved as ``NAME.safetensors`` (weights, with the model config embedded
in the safetensors metadata) plus ``NAME.json`` (the same config, for people). The config
holds everything needed to rebuild the network (``arch, encoder, in_channels, classes``)
and to feed it (``img_size, slice_offsets``), so :func:`load_model` needs no training
parameters. Both files are written atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import timm
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from gi_utils.checkpoint import CheckpointError, atomic_path, atomic_write_json
from gi_utils.constants import NUM_CLASSES

__all__ = [
    "ARCHITECTURES",
    "ENCODER_STRIDE",
    "CheckpointError",
    "encoder_names",
    "check_encoder",
    "check_img_size",
    "build_model",
    "model_config",
    "save_model",
    "load_model",
    "read_model_config",
]

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
#: Keys every model config holds.
REQUIRED_CONFIG_KEYS: tuple[str, ...] = ("arch", "encoder", "in_channels", "classes")
_METADATA_KEY = "gi_utils_config"
_LOCAL_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
#: Classifier heads of ImageNet checkpoints, ignored when loading an encoder.
_HEAD_PREFIXES = ("fc.", "classifier.", "head.", "last_linear.", "_fc.", "head_")


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


def _check_arch(arch: str) -> type[nn.Module]:
    try:
        return ARCHITECTURES[arch.lower()]
    except (KeyError, AttributeError):
        raise KeyError(
            f"unknown architecture {arch!r}; valid names: {', '.join(ARCHITECTURES)}"
        ) from None


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
    """Build an smp segmentation model that outputs logits.

    Args:
        arch: a key of :data:`ARCHITECTURES` (case-insensitive).
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
    cls = _check_arch(arch)
    check_encoder(encoder)
    for name, value in (("in_channels", in_channels), ("classes", classes)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    local = _local_weights_path(weights)
    smp_weights: Any = None if local is not None else weights
    if encoder.startswith("tu-") and smp_weights is not None:
        smp_weights = True  # timm picks the pretrained tag from the name
    try:
        model = cls(
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
        _load_encoder_file(model.encoder, local)
    return model


def _local_weights_path(weights: str | os.PathLike | None) -> Path | None:
    if weights is None or (isinstance(weights, str) and weights == ""):
        return None
    text = os.fspath(weights)
    looks_like_path = (
        isinstance(weights, os.PathLike) or os.sep in text or text.endswith(_LOCAL_SUFFIXES)
    )
    if not looks_like_path and not Path(text).is_file():
        return None  # a named weight set such as "imagenet"
    path = Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"encoder weights file not found: {path}")
    return path


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            return load_file(path, device="cpu")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any decode failure is reported with the path
        raise CheckpointError(
            f"cannot read weights file {path}: {type(err).__name__}: {err}"
        ) from err
    for key in ("state_dict", "model", "encoder"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointError(
            f"weights file {path} holds a {type(state).__name__}, not a state dict"
        )
    return state


def _load_encoder_file(encoder: nn.Module, path: Path) -> None:
    """Load a local state dict into ``encoder``; prefixes and classifier heads tolerated."""
    state = _read_state_dict(path)
    own = encoder.state_dict()
    fixed: dict[str, torch.Tensor] = {}
    extra: list[str] = []
    for key, value in state.items():
        for prefix in ("module.", "encoder."):
            key = key.removeprefix(prefix)
        if key not in own and f"model.{key}" in own:  # timm weights into a tu- encoder
            key = f"model.{key}"
        if key not in own:
            if not key.removeprefix("model.").startswith(_HEAD_PREFIXES):
                extra.append(key)
            continue  # a classifier head is not part of the encoder
        target = own[key]
        if value.ndim == 4 and target.ndim == 4 and value.shape[1] != target.shape[1]:
            value = timm.models.adapt_input_conv(target.shape[1], value)
        if value.shape != target.shape:
            raise ValueError(
                f"weights file {path}: {key} has shape {tuple(value.shape)}, the encoder "
                f"expects {tuple(target.shape)}; is it for another encoder?"
            )
        fixed[key] = value
    missing = [k for k in own if k not in fixed and not k.endswith("num_batches_tracked")]
    if missing or extra:
        raise ValueError(
            f"weights file {path} does not fit this encoder: {len(missing)} tensors missing "
            f"(first: {missing[:3]}), {len(extra)} unknown (first: {extra[:3]}); "
            "is it for another encoder?"
        )
    encoder.load_state_dict(fixed, strict=False)


# --------------------------------------------------------------------------- save / load
def model_config(
    arch: str, encoder: str, in_channels: int = 3, classes: int = NUM_CLASSES, **extra: Any
) -> dict[str, Any]:
    """The config dict :func:`save_model` stores: the build arguments plus ``extra``."""
    return {
        "arch": arch.lower(),
        "encoder": encoder,
        "in_channels": in_channels,
        "classes": classes,
        **extra,
    }


def save_model(path: str | os.PathLike, model: nn.Module, config: dict[str, Any]) -> Path:
    """Save ``model``'s weights as safetensors plus its config, both atomically.

    Args:
        path: target ``.safetensors`` file; the config is also written next to it as
            ``path.with_suffix(".json")``.
        model: the (unwrapped) model; tensors are copied to CPU.
        config: JSON-serialisable dict with at least ``arch, encoder, in_channels,
            classes`` (other keys, e.g. ``img_size``, ``slice_offsets``, are kept).

    Returns:
        The ``.safetensors`` path.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"model path {path} must end in .safetensors")
    missing = [k for k in REQUIRED_CONFIG_KEYS if k not in config]
    if missing:
        raise ValueError(f"model config lacks {missing}; it needs {list(REQUIRED_CONFIG_KEYS)}")
    _check_arch(config["arch"])
    text = json.dumps(config, sort_keys=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={_METADATA_KEY: text})
    atomic_write_json(path.with_suffix(".json"), config)
    return path


def read_model_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read the config embedded in a ``.safetensors`` model (sidecar ``.json`` as fallback).

    Raises:
        CheckpointError: the file is missing, not a safetensors file (truncated/corrupt),
            or carries no config. The message names the path.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"model file {path} is truncated or not a safetensors file: {err}"
        ) from err
    sidecar = path.with_suffix(".json")
    try:
        if _METADATA_KEY in meta:
            return json.loads(meta[_METADATA_KEY])
        if sidecar.is_file():
            return json.loads(sidecar.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = path if _METADATA_KEY in meta else sidecar
        raise CheckpointError(f"model config in {where} is not valid JSON: {err}") from err
    raise CheckpointError(f"model file {path} has no embedded config and no {sidecar.name}")


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu", arch: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by :func:`save_model` (offline: encoder weights not fetched).

    Args:
        path: the ``.safetensors`` file.
        device: where to put the model; it is returned in ``eval()`` mode.
        arch: if given, the architecture the caller expects; another one is an error.

    Returns:
        ``(model, config)``.

    Raises:
        CheckpointError: missing/corrupt file, a checkpoint of another architecture than
            ``arch``, or weights that do not fit the architecture in the config.
    """
    path = Path(path)
    config = read_model_config(path)
    missing = [k for k in REQUIRED_CONFIG_KEYS if k not in config]
    if missing:
        raise CheckpointError(f"model file {path}: config lacks {missing}")
    if arch is not None and config["arch"] != arch.lower():
        raise CheckpointError(
            f"model file {path} holds a {config['arch']!r} model (encoder {config['encoder']!r}); "
            f"expected {arch.lower()!r}"
        )
    model = build_model(
        config["arch"], config["encoder"], int(config["in_channels"]), int(config["classes"]),
        **config.get("model_kwargs", {}),
    )  # fmt: skip
    try:
        state = load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"model file {path} is truncated or corrupt: {err}") from err
    load_weights_into(model, state, str(path), config)
    return model.to(device).eval(), config


def load_weights_into(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    source: str,
    config: dict[str, Any] | None = None,
) -> None:
    """``model.load_state_dict(state)`` with an error that says which model the weights fit.

    Raises:
        CheckpointError: keys or shapes differ (e.g. weights of another architecture).
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or extra or shapes:
        saved = f" (saved as {config.get('arch')!r} / {config.get('encoder')!r})" if config else ""
        raise CheckpointError(
            f"weights in {source}{saved} do not fit this {type(model).__name__} model: "
            f"{len(missing)} missing, {len(extra)} unexpected, {len(shapes)} of another shape "
            f"(first: {(missing or extra or shapes)[:3]})"
        )
    model.load_state_dict(state)
