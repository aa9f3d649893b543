"""Atomic, pickle-free file I/O for models and training state.

Every file here is written to a temporary file in the same folder, flushed to disk and
moved over the target with :func:`os.replace`, so a run killed at any moment leaves
either the old file or the new one, never half of one.

Nothing is ever unpickled with arbitrary globals: training state is read with
``torch.load(..., weights_only=True)``, which only rebuilds tensors and plain Python
containers, and model weights are stored as safetensors. A truncated, corrupt or
malicious file raises :class:`CheckpointError` naming the path.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch

__all__ = [
    "CheckpointError",
    "atomic_path",
    "atomic_write_text",
    "atomic_write_json",
    "remove_stale_temps",
    "save_state",
    "load_state",
    "rng_state",
    "set_rng_state",
]


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt, unsafe, or of another model."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it over ``path`` on success.

    The caller writes the temporary file (any way it likes); on normal exit the file is
    fsync'ed and renamed over ``path`` atomically. On an exception it is removed and
    ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files (``.NAME.*.tmp``) a writer killed mid-write left in ``folder``.

    Call it only where no other process is writing into ``folder`` at the same time.

    Returns:
        The paths removed.
    """
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        if tmp.is_file():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: str | os.PathLike, write: Callable[[IO[str]], None]) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        write(f)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    return _atomic_write(path, lambda f: f.write(text))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Save a training state with ``torch.save``, atomically.

    ``state`` must hold only tensors and plain containers/scalars (dict, list, tuple,
    str, int, float, bool, None) so that :func:`load_state` can read it back with
    ``weights_only=True`` (numpy arrays and custom classes would be refused there).
    """
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


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
    import random

    import numpy as np

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
    import random

    import numpy as np

    random.setstate(_as_tuple(state["python"]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    """Lists back to the nested tuples ``random.setstate`` wants."""
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
