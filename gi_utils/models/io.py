"""Saving and loading trained models: ``NAME.safetensors`` (weights, with the model config
embedded in the safetensors metadata) plus ``NAME.json`` (the same config, for people).

The config holds everything needed to rebuild the network (``arch, encoder, in_channels,
classes``, ``model_kwargs``) and to feed it (``img_size, slice_offsets``), so
:func:`load_model` needs no training parameters and never fetches encoder weights.
Both files are written atomically; nothing is unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from gi_utils.atomic import atomic_path, atomic_write_json
from gi_utils.checkpoint import CheckpointError
from gi_utils.constants import NUM_CLASSES
from gi_utils.models.registry import build_model, check_arch

__all__ = ["REQUIRED_CONFIG_KEYS", "model_config", "save_model", "read_model_config", "load_model", "load_weights_into"]

#: Keys every model config holds.
REQUIRED_CONFIG_KEYS: tuple[str, ...] = ("arch", "encoder", "in_channels", "classes")
_METADATA_KEY = "gi_utils_config"


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
    check_arch(config["arch"])
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
