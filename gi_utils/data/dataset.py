"""The 2.5D slice dataset: one sample per slice, the slice and its neighbours at
``slice_offsets`` (clamped at the ends of the scan) stacked as channels.

Samples come from a :class:`~gi_utils.data.cache.VolumeCache` (every scan decoded once)
or, without one, from the PNGs (:func:`~gi_utils.data.preprocess.preprocess_slice`, the
same values). DataLoader workers: with fork, the memory-mapped files (or in-memory
arrays) are shared by the page cache / copy-on-write, never copied per worker; pickling
a disk cache (spawn) sends only its folder name.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from gi_utils.constants import CLASSES
from gi_utils.data.cache import VolumeCache, cached_as
from gi_utils.data.images import read_image, read_volume, slice_mask
from gi_utils.data.layout import has_masks, sort_slices
from gi_utils.data.masks import fit_packed_mask, pack_masks, unpack_masks
from gi_utils.data.preprocess import check_mode, intensity_clip, preprocess_slice

__all__ = ["SliceDataset", "neighbour_rows"]


def neighbour_rows(case_days: pd.Series | np.ndarray, slice_offsets: tuple[int, ...]) -> np.ndarray:
    """The 2.5D neighbour table of slices sorted by case, day and slice.

    Args:
        case_days: (N,) the scan of each row; the rows of a scan are consecutive, in
            slice order (as ``sort_slices`` leaves them).
        slice_offsets: the channel offsets, e.g. ``(-2, 0, 2)``.

    Returns:
        int64 (N, C): row ``i + slice_offsets[k]``, clamped to the first/last row of
        row ``i``'s scan (a scan of one slice repeats it).
    """
    scan_codes, _ = pd.factorize(np.asarray(case_days), sort=False)
    start = np.r_[0, np.flatnonzero(np.diff(scan_codes)) + 1]
    depth = np.diff(np.r_[start, len(scan_codes)])
    first, d = start[scan_codes], depth[scan_codes]
    pos = np.arange(len(scan_codes)) - first
    offs = np.asarray(slice_offsets, dtype=np.int64)
    return (first[:, None] + np.clip(pos[:, None] + offs[None, :], 0, (d - 1)[:, None])).astype(np.int64)


class SliceDataset(Dataset):
    """One 2.5D sample per slice of ``meta``.

    ``dataset[i]`` -> ``(image, mask)``: image float32 (C, S, S) with
    C = ``len(slice_offsets)``, channel k = slice ``i + slice_offsets[k]`` of the same scan
    (positions clamped to the first/last slice present); mask float32 (3, S, S) in
    :data:`~gi_utils.constants.CLASSES` order (zeros when ``with_masks`` is false).

    Args:
        meta: rows to serve (e.g. one fold); sorted by case/day/slice as ``.meta``.
        img_size: S.
        slice_offsets: neighbour offsets, e.g. ``(-2, 0, 2)``; ``(0,)`` for 2D.
        transform: albumentations pipeline of :func:`build_transforms` (or ``None``).
        cache: a :class:`VolumeCache` holding these ids (same img_size and mode); ``None``
            reads the PNGs of every sample (each scan is decoded once per process to get
            its normalisation clip value).
        with_masks: return the masks (needs the class columns).
        mode: ``"resize"`` or ``"pad"``.
        compact: return image float16 and mask uint8 instead of float32: 4x fewer
            bytes through the DataLoader's shared memory (its main cost with a cache)
            and to the GPU; convert there with ``.float()``. Same values.
    """

    def __init__(
        self,
        meta: pd.DataFrame,
        img_size: int = 256,
        slice_offsets: tuple[int, ...] = (-2, 0, 2),
        transform=None,
        cache: VolumeCache | None = None,
        with_masks: bool = True,
        *,
        mode: str = "resize",
        compact: bool = False,
    ) -> None:
        check_mode(mode)
        if mode == "crop" and cache is None:
            raise ValueError("mode='crop' reads the cache (each scan's body box is found when it is built); pass cache=")
        if len(slice_offsets) == 0 or not all(
            isinstance(o, (int, np.integer)) for o in slice_offsets
        ):
            raise ValueError(
                f"slice_offsets must be a non-empty tuple of ints, got {slice_offsets!r}"
            )
        self.meta = sort_slices(meta)
        self.img_size, self.mode = int(img_size), mode
        self.slice_offsets = tuple(int(o) for o in slice_offsets)
        self.transform, self.cache, self.with_masks = transform, cache, with_masks
        self.compact = compact
        if with_masks and not has_masks(self.meta):
            raise ValueError(f"with_masks=True but meta lacks the class columns {list(CLASSES)}")
        if cache is not None:
            if (cache.img_size, cache.mode) != (self.img_size, mode):
                raise ValueError(
                    f"cache is for img_size={cache.img_size}, mode={cache.mode!r}; dataset "
                    f"asks img_size={self.img_size}, mode={mode!r}"
                )
            self._cache_rows = cache.rows(self.meta["id"])
        # neighbour table (N, C) of row numbers into self.meta
        scan_codes, scan_names = pd.factorize(self.meta["case_day"], sort=False)
        self._scan = scan_codes
        self._scan_names = list(scan_names)
        self._nbr = neighbour_rows(self.meta["case_day"], self.slice_offsets)
        self._paths = self.meta["path"].tolist()
        self._hw = self.meta[["height", "width"]].to_numpy()
        self._clips: dict[int, float] = {}
        self._seeded_for: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.meta)

    @property
    def ids(self) -> list[str]:
        """Slice ids in sample order."""
        return self.meta["id"].tolist()

    def neighbours(self, i: int) -> np.ndarray:
        """Rows of ``.meta`` stacked as the channels of sample ``i``."""
        return self._nbr[i]

    # ---------------------------------------------------------------- reading
    def _clip(self, scan: int) -> float:
        if scan not in self._clips:
            rows = self.meta[self._scan == scan]
            self._clips[scan] = intensity_clip(read_volume(rows))
        return self._clips[scan]

    def _read_image(self, i: int) -> np.ndarray:
        rows = self._nbr[i]
        if self.cache is not None:
            return cached_as(self.cache.images[self._cache_rows[rows]], np.float16)
        hi = self._clip(int(self._scan[i]))
        done: dict[int, np.ndarray] = {}
        for r in rows:
            if r not in done:
                img = read_image(self._paths[r], tuple(self._hw[r]))
                done[r] = preprocess_slice(img, self.img_size, hi, self.mode)
        return np.stack([done[r] for r in rows])

    def _read_packed_mask(self, i: int) -> np.ndarray:
        if self.cache is not None and self.cache.with_masks:
            return np.asarray(self.cache.packed_masks[self._cache_rows[i]])
        return fit_packed_mask(pack_masks(slice_mask(self.meta.iloc[i])), self.img_size, self.mode)

    def _reseed(self) -> None:
        """Give each DataLoader worker its own augmentation stream (torch's worker seed)."""
        info = torch.utils.data.get_worker_info()
        if info is None or self._seeded_for == (os.getpid(), info.seed):
            return
        self.transform.set_random_seed(int(info.seed % 2**32))
        self._seeded_for = (os.getpid(), info.seed)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} slices")
        i = int(i) % len(self)
        image = self._read_image(i)  # float16 (C, S, S)
        s = self.img_size
        packed = self._read_packed_mask(i) if self.with_masks else np.zeros((s, s), np.uint8)
        if self.transform is not None:
            self._reseed()
            hwc = np.ascontiguousarray(image.transpose(1, 2, 0), dtype=np.float32)
            out = self.transform(image=hwc, mask=packed)
            image, packed = out["image"].transpose(2, 0, 1), out["mask"]
        dtypes = (np.float16, np.uint8) if self.compact else (np.float32, np.float32)
        image = np.ascontiguousarray(image, dtype=dtypes[0])
        mask = unpack_masks(packed, axis=0).astype(dtypes[1])
        return torch.from_numpy(image), torch.from_numpy(mask)
