"""Run-length encoding of masks, in the convention the competition data really uses.

A mask string is space-separated ``start length`` pairs. Starts are **1-indexed** and
count pixels in **row-major (C) order over the (H, W) array**: pixel ``(r, c)`` is number
``r * W + c + 1``. (The competition text says column-major, but the organisers' loader and
every strong public solution use row-major, and that is what lines the masks up with the
images; see ``shared/COMPETITION.md``.)

Both directions are vectorised with NumPy: no Python loop over runs or pixels.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["RLEError", "parse_rle", "decode_rle", "encode_rle", "is_empty_rle"]


#: Larger than the pixel count of any image; bigger tokens are rejected before arithmetic.
MAX_VALUE = 2**40


class RLEError(ValueError):
    """A malformed run-length string. Subclass of :class:`ValueError`."""


def is_empty_rle(rle: object) -> bool:
    """True for ``None``, NaN, and blank strings: the "no mask" encodings of train.csv."""
    if rle is None:
        return True
    if isinstance(rle, float):
        return math.isnan(rle)
    return isinstance(rle, str) and rle.strip() == ""


def parse_rle(rle: str | float | None, n_pixels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate an RLE string into 1-indexed ``starts`` and ``lengths``.

    Args:
        rle: ``"start length start length ..."``; ``None``, NaN or blank mean empty.
        n_pixels: number of pixels of the image (H * W); when given, runs past the end are
            rejected.

    Returns:
        ``(starts, lengths)``, two int64 arrays of equal length (empty for an empty mask).

    Raises:
        RLEError: odd token count, a token that is not an integer, a start or length < 1,
            starts not increasing, overlapping runs, or a run past ``n_pixels``. The message
            names the problem and the offending run.
    """
    if is_empty_rle(rle):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if not isinstance(rle, str):
        raise RLEError(f"RLE must be a string, got {type(rle).__name__}: {rle!r}")
    tokens = rle.split()
    if len(tokens) % 2:
        raise RLEError(f"RLE has an odd number of tokens ({len(tokens)}); expected start/length pairs")
    try:
        values = np.array(tokens, dtype=np.int64)
    except (ValueError, OverflowError):
        bad = next((t for t in tokens if not _is_int_token(t)), None)
        if bad is not None:
            raise RLEError(f"RLE token {bad!r} is not an integer") from None
        values = np.array([min(abs(int(t)), MAX_VALUE) for t in tokens], dtype=np.int64)
    if len(values) and np.abs(values).max() >= MAX_VALUE:
        big = next(t for t in tokens if abs(int(t)) >= MAX_VALUE)
        raise RLEError(f"RLE token {big[:24]!r} is too large for any image")
    starts, lengths = values[0::2], values[1::2]
    if len(values) and values.min() < 1:  # one pass for the common (valid) case
        if (starts < 1).any():
            i = int(np.flatnonzero(starts < 1)[0])
            raise RLEError(f"RLE run {i} has start {starts[i]}; starts are 1-indexed and must be >= 1")
        i = int(np.flatnonzero(lengths < 1)[0])
        raise RLEError(f"RLE run {i} (start {starts[i]}) has length {lengths[i]}; lengths must be >= 1")
    ends = starts + lengths  # exclusive, 1-indexed
    # With lengths >= 1, "each run starts at or after the previous run's end" implies
    # sorted starts and no overlap; tell the two apart only when it fails.
    if len(starts) > 1 and (starts[1:] < ends[:-1]).any():
        i = int(np.flatnonzero(starts[1:] < ends[:-1])[0])
        if starts[i + 1] <= starts[i]:
            raise RLEError(
                f"RLE starts are not increasing: run {i + 1} starts at {starts[i + 1]} "
                f"after {starts[i]}"
            )
        raise RLEError(
            f"RLE runs overlap: run {i} covers {starts[i]}..{ends[i] - 1} "
            f"and run {i + 1} starts at {starts[i + 1]}"
        )
    if n_pixels is not None and len(ends) and ends[-1] - 1 > n_pixels:
        raise RLEError(
            f"RLE run {len(starts) - 1} ends at pixel {int(ends[-1]) - 1}, past the end of "
            f"the image ({n_pixels} pixels)"
        )
    return starts, lengths


def _is_int_token(token: str) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True


def decode_rle(rle: str | float | None, shape: tuple[int, int]) -> np.ndarray:
    """Decode an RLE string into a boolean mask of ``shape`` = (H, W).

    Empty, NaN or ``None`` give an all-False mask. Raises :class:`RLEError` (a
    ``ValueError``) for malformed input; see :func:`parse_rle`.
    """
    height, width = int(shape[0]), int(shape[1])
    n_pixels = height * width
    starts, lengths = parse_rle(rle, n_pixels)
    flat = np.zeros(n_pixels, dtype=bool)
    if len(starts):
        total = int(lengths.sum())
        # Index of each foreground pixel: run offset + position inside the run.
        run_offset = np.repeat(starts - 1 - (np.cumsum(lengths) - lengths), lengths)
        flat[run_offset + np.arange(total)] = True
    return flat.reshape(height, width)


def encode_rle(mask: np.ndarray) -> str:
    """Encode a 2-D mask (H, W) into an RLE string (row-major, 1-indexed).

    Any non-zero value counts as foreground. An empty mask gives ``""``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"encode_rle expects a 2-D (H, W) mask, got shape {mask.shape}")
    pixels = np.concatenate([[False], mask.ravel() != 0, [False]])
    changes = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
    if changes.size == 0:
        return ""
    changes[1::2] -= changes[0::2]
    return " ".join(map(str, changes.tolist()))
