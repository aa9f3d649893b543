"""Pickle-free training state: ``last.pt`` and the RNG states it carries.

Every file here is written through :mod:`gi_utils.atomic` (a temporary file in the same
folder, flushed and moved over the target), so a run killed at any moment leaves either
the old file or the new one, never half of one.

Nothing is ever unpickled with arbitrary globals: training state is read with
``torch.load(..., weights_only=True)``, which only rebuilds tensors and plain Python
containers, and model weights are stored as safetensors. A truncated, corrupt or
malicious file raises :class:`CheckpointError` naming the path.
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gi_utils.atomic import SPACE_MARGIN, atomic_path, check_free_space

__all__ = [
    "CheckpointError",
    "save_state",
    "load_state",
    "rng_state",
    "set_rng_state",
    "state_nbytes",
    "check_room_for",
    "STATE_OVERHEAD_BYTES",
]

#: Bytes a checkpoint holds beyond its tensors (pickled structure, names, RNG states; the
#: tests' states are small): a generous bound, part of what must be free.
STATE_OVERHEAD_BYTES = 1 << 20


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt, unsafe, or of another model."""


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Save a training state with ``torch.save``, atomically.

    ``state`` must hold only tensors and plain containers/scalars (dict, list, tuple,
    str, int, float, bool, None) so that :func:`load_state` can read it back with
    ``weights_only=True`` (numpy arrays and custom classes would be refused there).

    Raises:
        DiskFullError: the disk filled while writing (see :func:`gi_utils.atomic.atomic_path`);
            the previous file is kept. torch writes through a Python file object here, so a
            full disk surfaces as ``ENOSPC`` rather than as torch's errno-less RuntimeError.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)
    return Path(path)


def state_nbytes(state: Any) -> int:
    """Bytes of the tensors in a nested state (dicts, lists, tuples): about what
    ``torch.save`` or safetensors write for it, less a small overhead."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_nbytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_nbytes(v) for v in state)
    return 0


def check_room_for(path: str | os.PathLike, state: Any, what: str = "the checkpoint") -> None:
    """Refuse, before writing, a checkpoint that would not fit next to ``path``.

    The new file is written beside the old one and moved over it, so the free space must
    hold all of it (:func:`state_nbytes` plus :data:`STATE_OVERHEAD_BYTES`, and a 5% margin).

    Raises:
        NotEnoughSpaceError: naming ``what``, the file, the bytes needed and free, and the
            folder; the previous file (if any) is untouched.
    """
    path = Path(path)
    kept = f"the previous {path.name} is kept" if path.exists() else f"no {path.name} was written"
    check_free_space(path.parent, state_nbytes(state) + STATE_OVERHEAD_BYTES, f"{what} {path.name}",
                     margin=SPACE_MARGIN, fits=f"the run in a folder with room (out_dir), not {path.parent} "
                     f"({kept})")  # fmt: skip


def load_state(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a state written by :func:`save_state` without executing any pickled code.

    Raises:
        CheckpointError: the file is missing, truncated/corrupt, or holds objects other
            than tensors and plain containers (a pickle that would run code is refused,
            not executed). The message names the path.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"checkpoint {path} was refused: it is not a plain tensor/container file "
            f"(weights_only=True load failed; nothing was executed): {err}"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError) as err:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(state).__name__}; expected a dict of training state"
        )
    return state


# --------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """The python, numpy (legacy global) and torch RNG states, as safe types only."""
    name, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [
            name,
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(gauss),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (CUDA states only where CUDA is up)."""
    random.setstate(_as_tuple(state["python"]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    """Lists back to the nested tuples ``random.setstate`` wants."""
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
