"""Shared memory for DataLoader workers: checked before the workers start.

A DataLoader with ``num_workers > 0`` hands each batch from a worker to the main process
through shared memory (``/dev/shm`` on Linux), with up to ``num_workers * prefetch_factor``
batches in flight. Docker gives a container 64 MiB of ``/dev/shm`` unless started with
``--shm-size``, and some hosted notebooks give little more, so a worker dies with "bus
error" or "No space left on device" deep inside the first epoch. :func:`check_shared_memory`
says so before any worker starts, with the sizes and the fixes.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Mapping
from typing import Any

from gi_utils.atomic import format_bytes

__all__ = [
    "SharedMemoryError",
    "SHM_PATH",
    "SHM_PREFETCH_FACTOR",
    "SHM_MARGIN",
    "shared_memory_needed",
    "check_shared_memory",
    "batch_nbytes",
]

#: Where Linux keeps the shared memory that torch's workers use.
SHM_PATH: str = "/dev/shm"
#: DataLoader's default ``prefetch_factor`` with workers: batches in flight per worker.
SHM_PREFETCH_FACTOR: int = 2
#: Headroom over ``num_workers * prefetch_factor`` batches (the batch in use, pinning).
SHM_MARGIN: float = 1.25


class SharedMemoryError(RuntimeError):
    """The shared memory (``/dev/shm``) is too small for the DataLoader's workers."""


def shared_memory_needed(
    num_workers: int, batch_bytes: int, prefetch_factor: int = SHM_PREFETCH_FACTOR
) -> int:
    """Bytes of shared memory the workers may hold at once.

    ``num_workers * prefetch_factor * batch_bytes * SHM_MARGIN``, rounded up; 0 without
    workers (``num_workers == 0`` loads in the main process).
    """
    if num_workers <= 0:
        return 0
    return math.ceil(num_workers * prefetch_factor * batch_bytes * SHM_MARGIN)


def check_shared_memory(
    num_workers: int,
    batch_bytes: int,
    path: str | os.PathLike = SHM_PATH,
    prefetch_factor: int | None = SHM_PREFETCH_FACTOR,
) -> None:
    """Raise before the DataLoader starts if its workers' batches will not fit in ``path``.

    Args:
        num_workers: the DataLoader's ``num_workers``.
        batch_bytes: bytes of one collated batch (see :func:`batch_nbytes`).
        path: the shared-memory folder (``/dev/shm``).
        prefetch_factor: the DataLoader's ``prefetch_factor`` (``None``: its default, 2).

    Returns silently with no workers, when the batches fit, or when ``path`` does not
    exist (macOS and Windows have no ``/dev/shm``) or cannot be asked.

    Raises:
        SharedMemoryError: the free shared memory is below the estimate; the message gives
            both sizes, ``num_workers`` and ``batch_bytes``, and the fixes.
    """
    if num_workers <= 0 or not os.path.isdir(path):
        return
    factor = SHM_PREFETCH_FACTOR if prefetch_factor is None else prefetch_factor
    needed = shared_memory_needed(num_workers, batch_bytes, factor)
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return
    if free >= needed:
        return
    fits = int(free // max(1.0, factor * batch_bytes * SHM_MARGIN))
    raise SharedMemoryError(
        f"shared memory {path} has {format_bytes(free)} free, but num_workers={num_workers} "
        f"with prefetch_factor={factor} and batches of {format_bytes(batch_bytes)} "
        f"(batch_bytes={batch_bytes}) need about {format_bytes(needed)}: lower num_workers "
        f"(at most {fits} fit{'; 0 loads in the main process' if fits == 0 else ''}) or the "
        "batch size, or give the machine more shared memory (Docker: docker run "
        f"--shm-size={_suggest(needed)}). torch.multiprocessing.set_sharing_strategy("
        '"file_system") avoids the open-files limit, not this one: both strategies '
        f"allocate in {path}"
    )


def batch_nbytes(batch: Any) -> int:
    """Bytes of the arrays in ``batch``: tensors or NumPy arrays (anything with ``nbytes``),
    nested in tuples, lists and dicts; other values count 0.

    Multiply one sample's size by the batch size to estimate a collated batch before the
    DataLoader exists.
    """
    if isinstance(batch, Mapping):
        return sum(batch_nbytes(v) for v in batch.values())
    if isinstance(batch, (tuple, list)):
        return sum(batch_nbytes(v) for v in batch)
    nbytes = getattr(batch, "nbytes", None)
    return int(nbytes) if isinstance(nbytes, (int, float)) and not isinstance(nbytes, bool) else 0


def _suggest(needed: int) -> str:
    """A ``--shm-size`` value: the need rounded up to whole GiB (at least 1g)."""
    return f"{max(1, math.ceil(needed / 1024**3))}g"
