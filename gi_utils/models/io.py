"""Saving and loading trained models: ``NAME.safetensors`` (weights, with the model config
embedded in the safetensors metadata) plus ``NAME.json`` (the same config, for people).

The config (:class:`ModelConfig`, its fields and defaults in one place) holds everything
needed to rebuild the network (``arch, encoder, in_channels, classes``, ``model_kwargs``)
and to feed it (``img_size, slice_offsets``...), so :func:`load_model` needs no training
parameters and never fetches encoder weights. Both files are written atomically; nothing
is unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from gi_utils.atomic import atomic_path, atomic_write_json
from gi_utils.checkpoint import CheckpointError
from gi_utils.constants import NUM_CLASSES
from gi_utils.models.registry import ArchSpec, arch_spec, build_model, find_arch

__all__ = ["REQUIRED_CONFIG_KEYS", "ModelConfig", "model_config", "save_model", "read_model_config", "load_model", "load_weights_into"]

#: Keys every model config holds.
REQUIRED_CONFIG_KEYS: tuple[str, ...] = ("arch", "encoder", "in_channels", "classes")
_METADATA_KEY = "gi_utils_config"


@dataclass(frozen=True)
class ModelConfig:
    """The configuration saved with a model's weights (``best.json`` and the safetensors
    metadata): how to rebuild it, how to feed it and what its run chose. The defaults are
    those a config written before the field existed means.

    Attributes:
        arch, encoder, in_channels, classes, model_kwargs: the build arguments
            (:func:`gi_utils.models.build_model`).
        img_size, resize_mode, slice_offsets: the input (2.5D: neighbours as channels;
            ``slice_offsets`` is ``None`` for a 3-D model).
        patch_depth, sw_overlap: a 3-D model's sliding windows (``None`` / 0.5 otherwise).
        gate: the model has a classifier head.
        threshold, min_size: its run's post-processing (``min_size`` in pixels at ``img_size``).
        norm_version: the normalisation it was trained with (``None``: written before the
            version was recorded, taken as the current one).
        epoch, val_score, val_dice: the epoch saved and its validation scores.
        train_config: the whole ``TrainConfig`` of the run, as a dict.
    """

    arch: str
    encoder: str
    in_channels: int = 3
    classes: int = NUM_CLASSES
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    img_size: int | None = None
    resize_mode: str = "resize"
    slice_offsets: list[int] | None = None
    patch_depth: int | None = None
    sw_overlap: float = 0.5
    gate: bool = False
    threshold: float = 0.5
    min_size: int = 0
    norm_version: int | None = None
    epoch: int | None = None
    val_score: float | None = None
    val_dice: float | None = None
    train_config: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        # ``arch`` as the registry names it, normalised once, here (an unknown name is left
        # for build_model to name, with the valid ones)
        spec = find_arch(self.arch)
        if spec is not None:
            object.__setattr__(self, "arch", spec.name)

    @property
    def spec(self) -> ArchSpec:
        """The registry entry of :attr:`arch` (2.5D or 3-D, memory layout...)."""
        return arch_spec(self.arch)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelConfig:
        """From a saved config (old files too: a field they lack takes its default).

        Raises:
            ValueError: a key that is no field (names it and the valid ones), or one of
                :data:`REQUIRED_CONFIG_KEYS` missing.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in values if k not in names]
        if unknown:
            raise ValueError(f"model config has unknown key(s) {unknown}; valid keys: {', '.join(names)}")
        missing = [k for k in REQUIRED_CONFIG_KEYS if k not in values]
        if missing:
            raise ValueError(f"model config lacks {missing}; it needs {list(REQUIRED_CONFIG_KEYS)}")
        return cls(**values)

    @classmethod
    def from_run_config(cls, values: Mapping[str, Any]) -> ModelConfig:
        """What a run's ``TrainConfig`` dict (its ``config.json``) says of its model: the
        fields the two share (input and post-processing: what the report reads of a run
        whose model file it does not open). ``in_channels`` is no field of that dict: it is
        derived as the run's config derives it (the 2.5D neighbours, or 1 for a 3-D model)."""
        names = {f.name for f in dataclasses.fields(cls)}
        config = cls(**{k: v for k, v in values.items() if k in names})
        spec = find_arch(config.arch)
        if spec is None or (config.slice_offsets is None and not spec.is_3d):
            return config  # an unknown arch (named when built) or an old dict without offsets
        return dataclasses.replace(config, in_channels=spec.in_channels(config.slice_offsets or ()))

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict :func:`save_model` writes."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with ``changes`` (checked like :meth:`from_dict`), as
        :meth:`gi_utils.training.TrainConfig.replace`."""
        return ModelConfig.from_dict({**self.to_dict(), **changes})


def model_config(
    arch: str, encoder: str, in_channels: int = 3, classes: int = NUM_CLASSES, **extra: Any
) -> ModelConfig:
    """The config :func:`save_model` stores: the build arguments plus ``extra`` (other
    fields of :class:`ModelConfig`; an unknown name raises ``ValueError``)."""
    return ModelConfig.from_dict(
        {"arch": arch, "encoder": encoder, "in_channels": in_channels, "classes": classes, **extra}
    )


def save_model(path: str | os.PathLike, model: nn.Module, config: ModelConfig | Mapping[str, Any]) -> Path:
    """Save ``model``'s weights as safetensors plus its config, both atomically.

    Args:
        path: target ``.safetensors`` file; the config is also written next to it as
            ``path.with_suffix(".json")``.
        model: the (unwrapped) model; tensors are copied to CPU.
        config: a :class:`ModelConfig` (or its dict: at least ``arch, encoder,
            in_channels, classes``; an unknown key raises ``ValueError``).

    Returns:
        The ``.safetensors`` path.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"model path {path} must end in .safetensors")
    config = config if isinstance(config, ModelConfig) else ModelConfig.from_dict(config)
    arch_spec(config.arch)  # an unknown arch: KeyError naming the valid ones (without importing its class)
    record = config.to_dict()
    text = json.dumps(record, sort_keys=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={_METADATA_KEY: text})
    atomic_write_json(path.with_suffix(".json"), record)
    return path


def read_model_config(path: str | os.PathLike) -> ModelConfig:
    """Read the config embedded in a ``.safetensors`` model (sidecar ``.json`` as fallback).

    Raises:
        CheckpointError: the file is missing, not a safetensors file (truncated/corrupt),
            or carries no config, or a config with an unknown key or without a required
            one. The message names the path.
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
    where = path if _METADATA_KEY in meta else sidecar
    try:
        if _METADATA_KEY in meta:
            values = json.loads(meta[_METADATA_KEY])
        elif sidecar.is_file():
            values = json.loads(sidecar.read_text(encoding="utf-8"))
        else:
            raise CheckpointError(f"model file {path} has no embedded config and no {sidecar.name}")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"model config in {where} is not valid JSON: {err}") from err
    try:
        return ModelConfig.from_dict(values)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"model file {path}: {err}") from err


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu", arch: str | None = None
) -> tuple[nn.Module, ModelConfig]:
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
    expected = arch_spec(arch).name if arch is not None else None
    if expected is not None and config.arch != expected:
        raise CheckpointError(
            f"model file {path} holds a {config.arch!r} model (encoder {config.encoder!r}); "
            f"expected {expected!r}"
        )
    model = build_model(config.arch, config.encoder, int(config.in_channels), int(config.classes),
                        **config.model_kwargs)  # fmt: skip
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
    config: ModelConfig | None = None,
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
        saved = f" (saved as {config.arch!r} / {config.encoder!r})" if config else ""
        raise CheckpointError(
            f"weights in {source}{saved} do not fit this {type(model).__name__} model: "
            f"{len(missing)} missing, {len(extra)} unexpected, {len(shapes)} of another shape "
            f"(first: {(missing or extra or shapes)[:3]})"
        )
    model.load_state_dict(state)
