"""Training data held on the device: the cached images and masks of a set of slices
copied once, and 2.5D batches gathered there by index, with no loader workers.

The values are those of :class:`~gi_utils.data.dataset.SliceDataset` on the same cache:
images as float32 of the cache's float16 values (uint8 storage ``x / 255`` rounded to
float16 first, as :func:`~gi_utils.data.cache.cached_as` does), masks unpacked to float32
(3, S, S) in class order; the channels are the neighbours of
:func:`~gi_utils.data.dataset.neighbour_rows`. Masks travel packed (one byte a pixel);
a cache without masks has them decoded from the RLE once, on the host, and kept packed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from gi_utils.data.cache import VolumeCache, scan_packed_masks
from gi_utils.data.dataset import neighbour_rows
from gi_utils.data.layout import sort_slices
from gi_utils.data.masks import unpack_masks

__all__ = ["DeviceBatches", "device_nbytes"]

#: Rows copied to the device at a time (bounds the host memory of the copy).
_CHUNK = 2048


def device_nbytes(cache: VolumeCache, n_slices: int) -> int:
    """Device bytes of ``n_slices`` of ``cache``: its images (1 or 2 bytes a pixel) plus
    one byte a pixel of packed masks (decoded from the RLE when the cache has none)."""
    per = (1 if cache.dtype == "uint8" else 2) + 1
    return n_slices * cache.img_size * cache.img_size * per


class DeviceBatches:
    """The slices of ``meta`` on ``device``; :meth:`gather` builds a batch from row numbers.

    Args:
        meta: the training rows (sorted by case/day/slice here, like SliceDataset's ``.meta``).
        cache: a :class:`VolumeCache` holding these ids (same img_size and mode).
        slice_offsets: 2.5D channel offsets, e.g. ``(-2, 0, 2)``.
        device: where the tensors live (``"cpu"`` works too: the tests use it).

    Raises:
        KeyError: an id of ``meta`` not in ``cache`` (named).
        ValueError: ``meta`` without the class columns while the cache has no masks.
    """

    def __init__(
        self, meta: pd.DataFrame, cache: VolumeCache, slice_offsets: tuple[int, ...], device: torch.device | str
    ) -> None:
        self.meta = sort_slices(meta)
        self.device = torch.device(device)
        self.img_size, self.slice_offsets = cache.img_size, tuple(int(o) for o in slice_offsets)
        rows = cache.rows(self.meta["id"])
        self.uint8 = cache.dtype == "uint8"
        n, s = len(rows), cache.img_size
        self.images = torch.empty((n, s, s), dtype=torch.uint8 if self.uint8 else torch.float16, device=self.device)
        self.packed = torch.empty((n, s, s), dtype=torch.uint8, device=self.device)
        for lo in range(0, n, _CHUNK):
            part = rows[lo : lo + _CHUNK]
            self.images[lo : lo + len(part)] = torch.from_numpy(np.ascontiguousarray(cache.images[part]))
            if cache.with_masks:
                masks = np.ascontiguousarray(cache.packed_masks[part])
            else:
                masks = scan_packed_masks(self.meta.iloc[lo : lo + len(part)], s, cache.mode)
            self.packed[lo : lo + len(part)] = torch.from_numpy(masks)
        self.nbr = torch.from_numpy(neighbour_rows(self.meta["case_day"], self.slice_offsets)).to(self.device)
        self.nbytes = device_nbytes(cache, n)

    def __len__(self) -> int:
        return len(self.meta)

    def gather(self, index: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The samples ``index`` (rows of ``.meta``) without augmentation.

        Returns:
            ``(images float32 (N, C, S, S), packed uint8 (N, S, S))`` on the device.
        """
        index = torch.as_tensor(np.asarray(index), dtype=torch.long).to(self.device)
        raw = self.images[self.nbr[index]]  # (N, C, S, S)
        images = (raw.float() / 255).half().float() if self.uint8 else raw.float()
        return images, self.packed[index]

    @staticmethod
    def unpack(packed: torch.Tensor) -> torch.Tensor:
        """uint8 (N, S, S) packed masks -> float32 (N, 3, S, S) in class order."""
        return unpack_masks(packed, axis=1).float()
