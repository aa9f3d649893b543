"""Local encoder weights: a safetensors or ``torch.save`` state dict of an encoder, read
without unpickling code (``weights_only=True``), so offline runs (Kaggle) get pretrained
encoders from an attached file. Prefixes (``module.``, ``encoder.``), timm's ``model.``
and classifier heads are tolerated; a first convolution for 3 channels is adapted.
"""

from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from torch import nn

from gi_utils.checkpoint import CheckpointError

__all__ = ["LOCAL_SUFFIXES", "HEAD_PREFIXES", "local_weights_path", "read_state_dict", "load_encoder_file",
           "load_encoder_state"]

#: File endings that mark ``weights`` as a path rather than a named weight set.
LOCAL_SUFFIXES: tuple[str, ...] = (".safetensors", ".pt", ".pth", ".bin")
#: Classifier heads of ImageNet checkpoints, ignored when loading an encoder.
HEAD_PREFIXES: tuple[str, ...] = ("fc.", "classifier.", "head.", "last_linear.", "_fc.", "head_")


def local_weights_path(weights: str | os.PathLike | None) -> Path | None:
    """The file ``weights`` names, or ``None`` for random init or a named weight set.

    Raises:
        FileNotFoundError: ``weights`` looks like a path (a separator or a weights
            suffix) and no such file exists.
    """
    if weights is None or (isinstance(weights, str) and weights == ""):
        return None
    text = os.fspath(weights)
    looks_like_path = (
        isinstance(weights, os.PathLike) or os.sep in text or text.endswith(LOCAL_SUFFIXES)
    )
    if not looks_like_path and not Path(text).is_file():
        return None  # a named weight set such as "imagenet"
    path = Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"encoder weights file not found: {path}")
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors or ``torch.save`` file (``weights_only=True``).

    Raises:
        CheckpointError: the file does not decode or holds no state dict (names it).
    """
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


def load_encoder_file(encoder: nn.Module, path: Path) -> None:
    """Load a local state dict into ``encoder``; prefixes and classifier heads tolerated."""
    load_encoder_state(encoder, read_state_dict(path), f"weights file {path}")


def load_encoder_state(encoder: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``encoder`` as :func:`load_encoder_file` does (``source`` names
    it in errors): ``module.``/``encoder.`` prefixes and classifier heads tolerated, a
    first convolution for another number of channels adapted (timm's ``adapt_input_conv``).

    Raises:
        ValueError: a tensor of another shape, or tensors missing or unknown (counted and
            the first named): weights of another encoder.
    """
    own = encoder.state_dict()
    fixed: dict[str, torch.Tensor] = {}
    extra: list[str] = []
    for key, value in state.items():
        for prefix in ("module.", "encoder."):
            key = key.removeprefix(prefix)
        if key not in own and f"model.{key}" in own:  # timm weights into a tu- encoder
            key = f"model.{key}"
        if key not in own:
            if not key.removeprefix("model.").startswith(HEAD_PREFIXES):
                extra.append(key)
            continue  # a classifier head is not part of the encoder
        target = own[key]
        if value.ndim == 4 and target.ndim == 4 and value.shape[1] != target.shape[1]:
            value = timm.models.adapt_input_conv(target.shape[1], value)
        if value.shape != target.shape:
            raise ValueError(
                f"{source}: {key} has shape {tuple(value.shape)}, the encoder "
                f"expects {tuple(target.shape)}; is it for another encoder?"
            )
        fixed[key] = value
    missing = [k for k in own if k not in fixed and not k.endswith("num_batches_tracked")]
    if missing or extra:
        raise ValueError(
            f"{source} does not fit this encoder: {len(missing)} tensors missing "
            f"(first: {missing[:3]}), {len(extra)} unknown (first: {extra[:3]}); "
            "is it for another encoder?"
        )
    encoder.load_state_dict(fixed, strict=False)
