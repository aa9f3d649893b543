"""A new model initialised from an earlier run's weights (``TrainConfig.init_from``): the
3rd place's classification model first, its encoder then the start of the segmentation
model; the 1st place's 3-D round 2, the round-1 weights fine-tuned on larger crops.

The source is a run folder (its :data:`~gi_utils.models.run_folder.MODEL_FILE`) or a
``.safetensors`` model file (:func:`gi_utils.models.save_model`). When its tensors are
exactly the new model's (same names and shapes) all of them are taken; otherwise the
encoder's alone (``encoder.*``, a first convolution for another number of input channels
adapted, :func:`~gi_utils.models.weights.load_encoder_state`), as when a classifier run
(gate head, no trained decoder) starts a segmentation model of another architecture.
"""

from __future__ import annotations

import os
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from gi_utils.checkpoint import CheckpointError
from gi_utils.models.run_folder import MODEL_FILE
from gi_utils.models.weights import load_encoder_state

__all__ = ["INIT_ALL", "INIT_ENCODER", "init_source", "init_from_weights"]

#: What :func:`init_from_weights` took.
INIT_ALL, INIT_ENCODER = "all weights", "the encoder"


def init_source(source: str | os.PathLike) -> Path:
    """The model file ``source`` names: a run folder's :data:`MODEL_FILE`, or the file.

    Raises:
        FileNotFoundError: no such folder or file, or a run folder without its model
            (its training did not finish); the path named.
        ValueError: a file that is no ``.safetensors`` model.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / MODEL_FILE).is_file():
            raise FileNotFoundError(f"init_from: run folder {path} has no {MODEL_FILE} (did its training finish?)")
        return path / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"init_from: {path} is neither a run folder nor a model file")
    if path.suffix != ".safetensors":
        raise ValueError(f"init_from: {path} is not a .safetensors model file (or a run folder)")
    return path


def init_from_weights(model: nn.Module, source: str | os.PathLike) -> str:
    """Load ``source``'s weights into ``model``: all of them when they fit exactly, else
    the encoder's (see the module docstring).

    Returns:
        :data:`INIT_ALL` or :data:`INIT_ENCODER`.

    Raises:
        CheckpointError: an unreadable file, or weights that fit neither the model nor
            its encoder (a 3-D model has none): what differs is named.
    """
    path = init_source(source)
    try:
        state = load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"init_from: {path} is truncated or not a safetensors file: {err}") from err
    own = model.state_dict()
    if state.keys() == own.keys() and all(state[k].shape == own[k].shape for k in own):
        model.load_state_dict(state)
        return INIT_ALL
    encoder = getattr(model, "encoder", None)
    if encoder is None:
        differ = sorted(set(own) ^ set(state)) or [k for k in own if state[k].shape != own[k].shape]
        raise CheckpointError(f"init_from: the weights in {path} do not fit this {type(model).__name__} (first "
                              f"differences: {differ[:3]}), and it has no encoder to take alone")  # fmt: skip
    taken = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    if not taken:
        raise CheckpointError(f"init_from: {path} holds no encoder weights (encoder.*) for this {type(model).__name__}")
    try:
        load_encoder_state(encoder, taken, f"init_from: the encoder in {path}")
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    return INIT_ENCODER
