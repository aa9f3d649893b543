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
        device: where batches are made (``"cpu"`` works too: the tests use it).
        resident: keep the slices on ``device``; ``False`` (a cache larger than the GPU's
            memory) keeps them in host memory, pinned when ``device`` is CUDA, gathers
            each batch there into a pinned buffer in the stored dtype (uint8 or float16)
            and copies it asynchronously; conversion and augmentation stay on the device.

    Raises:
        KeyError: an id of ``meta`` not in ``cache`` (named).
        ValueError: ``meta`` without the class columns while the cache has no masks.
    """

    def __init__(
        self,
        meta: pd.DataFrame,
        cache: VolumeCache,
        slice_offsets: tuple[int, ...],
        device: torch.device | str,
        resident: bool = True,
    ) -> None:
        self.meta = sort_slices(meta)
        self.device, self.resident = torch.device(device), bool(resident)
        self.pinned = not self.resident and self.device.type == "cuda"
        home = self.device if self.resident else torch.device("cpu")
        self.img_size, self.slice_offsets = cache.img_size, tuple(int(o) for o in slice_offsets)
        rows = cache.rows(self.meta["id"])
        self.uint8 = cache.dtype == "uint8"
        n, s = len(rows), cache.img_size
        dtype = torch.uint8 if self.uint8 else torch.float16
        self.images = torch.empty((n, s, s), dtype=dtype, device=home, pin_memory=self.pinned)
        self.packed = torch.empty((n, s, s), dtype=torch.uint8, device=home, pin_memory=self.pinned)
        for lo in range(0, n, _CHUNK):
            part = rows[lo : lo + _CHUNK]
            self.images[lo : lo + len(part)] = torch.from_numpy(np.ascontiguousarray(cache.images[part]))
            if cache.with_masks:
                masks = np.ascontiguousarray(cache.packed_masks[part])
            else:
                masks = scan_packed_masks(self.meta.iloc[lo : lo + len(part)], s, cache.mode)
            self.packed[lo : lo + len(part)] = torch.from_numpy(masks)
        self.nbr = torch.from_numpy(neighbour_rows(self.meta["case_day"], self.slice_offsets)).to(home)
        self.nbytes = device_nbytes(cache, n)

    def __len__(self) -> int:
        return len(self.meta)

    def raw(self, index: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The samples ``index`` (rows of ``.meta``) as stored: ``(images uint8 or float16
        (N, C, S, S), packed uint8 (N, S, S))`` on the device."""
        index = torch.as_tensor(np.asarray(index), dtype=torch.long).to(self.images.device)
        rows = self.nbr[index]  # (N, C)
        if self.resident:
            return self.images[rows], self.packed[index]
        # gathered on the host in the stored dtype, then one asynchronous copy each
        raw = self._host_gather(self.images, rows.flatten()).unflatten(0, rows.shape)
        return raw, self._host_gather(self.packed, index)

    def gather(self, index: torch.Tensor | np.ndarray, epoch: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The samples ``index`` (rows of ``.meta``) without augmentation (``epoch`` is not
        used: a slice does not depend on it; a 3-D patch's position does,
        :class:`~gi_utils.data.device_patches.DevicePatches`).

        Returns:
            ``(images float32 (N, C, S, S), packed uint8 (N, S, S))`` on the device.
        """
        raw, packed = self.raw(index)
        images = (raw.float() / 255).half().float() if self.uint8 else raw.float()
        return images, packed

    def _host_gather(self, src: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``src[index]`` into a (pinned, on CUDA) buffer, copied to the device without waiting."""
        buf = torch.empty((len(index), *src.shape[1:]), dtype=src.dtype, pin_memory=self.pinned)
        torch.index_select(src, 0, index, out=buf)
        return buf.to(self.device, non_blocking=self.pinned)

    @staticmethod
    def unpack(packed: torch.Tensor) -> torch.Tensor:
        """uint8 (N, S, S) packed masks -> float32 (N, 3, S, S) in class order."""
        return unpack_masks(packed, axis=1).float()
