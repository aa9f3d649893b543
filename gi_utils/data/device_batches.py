"""Training data held on the device: the cached images and masks of a set of slices
copied once, and 2.5D batches gathered there by index, with no loader workers.

The values are those of :class:`~gi_utils.data.dataset.SliceDataset` on the same cache:
images as float32 of the cache's float16 values (uint8 storage ``x / 255`` rounded to
float16 first, as :func:`~gi_utils.data.cache.cached_as` does), masks unpacked to float32
(3, S, S) in class order; the channels are the neighbours of
:func:`~gi_utils.data.dataset.neighbour_rows`. Masks travel packed (one byte a pixel);
a cache without masks has them decoded from the RLE once, on the host, and kept packed.

A batch is made in two steps: :meth:`DeviceBatches.stage`, the host's part (the index, or
the gathered slices of a host store, in pinned memory on CUDA; it never waits for the
device and may run on another thread, one batch ahead: :func:`ahead`), and
:meth:`DeviceBatches.load`, the device's part (copies that do not wait, the conversion).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import pandas as pd
import torch

from gi_utils.data.cache import VolumeCache, scan_packed_masks
from gi_utils.data.dataset import neighbour_rows
from gi_utils.data.layout import sort_slices
from gi_utils.data.masks import unpack_masks

__all__ = ["DeviceBatches", "ahead", "device_nbytes", "host_copy", "pinned_empty", "to_device"]

#: Rows copied to the device at a time (bounds the host memory of the copy).
_CHUNK = 2048


T = TypeVar("T")
R = TypeVar("R")


def pinned_empty(shape: tuple[int, ...], dtype: torch.dtype, pin: bool) -> torch.Tensor:
    """An uninitialised host tensor, page-locked when ``pin`` (the source of a copy to a GPU
    that does not wait). PyTorch's pinned allocator rounds each block up to a power of two
    and keeps it cached: only batch-sized buffers are asked of it here, never a store."""
    return torch.empty(shape, dtype=dtype, pin_memory=pin)


def host_copy(array: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """``array`` as a host tensor ready for ``device``: copied into pinned memory for CUDA
    (so that :func:`to_device` does not wait), as it is otherwise."""
    host = array if isinstance(array, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(array))
    if device.type != "cuda":
        return host
    return pinned_empty(tuple(host.shape), host.dtype, True).copy_(host)


def to_device(array: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host array on ``device`` without waiting for it: on CUDA through pinned memory
    (:func:`host_copy`) and a non-blocking copy (a copy from pageable memory waits until
    the device has run everything queued before it); the array itself on the CPU."""
    return host_copy(array, device).to(device, non_blocking=True)


def ahead(fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    """``fn(item)`` of each item in order, the next one computed on a side thread while
    the caller uses this one (host work, e.g. :meth:`DeviceBatches.stage`, overlapped with
    the device's step). Stopping early waits for the one computed ahead."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stage") as pool:
        pending = None
        for item in items:
            nxt = pool.submit(fn, item)
            if pending is not None:
                yield pending.result()
            pending = nxt
        if pending is not None:
            yield pending.result()


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
            memory) keeps them in ordinary host memory (exactly :attr:`nbytes`: the
            CPU's gather reads them, nothing copies them whole, so they need no pinning),
            gathers each batch there into a buffer in the stored dtype (uint8 or
            float16), pinned on CUDA (a few batch-sized blocks in all), and copies it
            without waiting on a side stream; conversion and augmentation stay on the
            device. :attr:`prefetch` says the gather is worth running one batch ahead.

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
        self.pinned = self.device.type == "cuda"  # host buffers of a batch: pinned, copied without waiting
        self.prefetch = not self.resident  # the host gathers each batch: overlap it with the step
        home = self.device if self.resident else torch.device("cpu")
        self.img_size, self.slice_offsets = cache.img_size, tuple(int(o) for o in slice_offsets)
        rows = cache.rows(self.meta["id"])
        self.uint8 = cache.dtype == "uint8"
        n, s = len(rows), cache.img_size
        dtype = torch.uint8 if self.uint8 else torch.float16
        self.images = torch.empty((n, s, s), dtype=dtype, device=home)
        self.packed = torch.empty((n, s, s), dtype=torch.uint8, device=home)
        for lo in range(0, n, _CHUNK):
            part = rows[lo : lo + _CHUNK]
            self.images[lo : lo + len(part)] = torch.from_numpy(np.ascontiguousarray(cache.images[part]))
            if cache.with_masks:
                masks = np.ascontiguousarray(cache.packed_masks[part])
            else:
                masks = scan_packed_masks(self.meta.iloc[lo : lo + len(part)], s, cache.mode)
            self.packed[lo : lo + len(part)] = torch.from_numpy(masks)
        self.nbr_host = np.asarray(neighbour_rows(self.meta["case_day"], self.slice_offsets), np.int64)  # (n, C)
        self.nbr = torch.from_numpy(self.nbr_host).to(home)
        self.nbytes = device_nbytes(cache, n)
        self._stream = None  # the side stream of the host store's copies (CUDA), made when first used

    def __len__(self) -> int:
        return len(self.meta)

    def stage(self, index: torch.Tensor | np.ndarray, epoch: int = 0) -> tuple[torch.Tensor, ...]:
        """The host's part of the batch ``index`` (rows of ``.meta``; ``epoch`` is not
        used): the index (resident slices), or the slices gathered from the host store in
        the stored dtype, ``(images (N, C, S, S), packed (N, S, S))``, pinned on CUDA.
        Never waits for the device; may run on another thread."""
        index = np.asarray(index, dtype=np.int64)
        if self.resident:
            return (host_copy(index, self.device),)
        rows = torch.from_numpy(self.nbr_host[index].reshape(-1))
        return self._host_gather(self.images, rows).unflatten(0, (len(index), -1)), self._host_gather(
            self.packed, torch.from_numpy(index)
        )

    def load(self, staged: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """The device's part of a batch :meth:`stage` made: ``(images uint8 or float16
        (N, C, S, S), packed uint8 (N, S, S))`` on the device, as stored."""
        if self.resident:
            index = staged[0].to(self.device, non_blocking=True)
            return self.images[self.nbr[index]], self.packed[index]
        if self.device.type != "cuda":
            return staged[0].to(self.device, non_blocking=True), staged[1].to(self.device, non_blocking=True)
        # copied on a side stream, so the copy runs beside the step still on the device
        main = torch.cuda.current_stream(self.device)
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        with torch.cuda.stream(self._stream):
            out = tuple(t.to(self.device, non_blocking=True) for t in staged)
        main.wait_stream(self._stream)
        for t in out:
            t.record_stream(main)  # made on the side stream, freed on the main one
        return out[0], out[1]

    def raw(self, index: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The samples ``index`` (rows of ``.meta``) as stored: ``(images uint8 or float16
        (N, C, S, S), packed uint8 (N, S, S))`` on the device."""
        return self.load(self.stage(index))

    def gather(self, index: torch.Tensor | np.ndarray, epoch: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The samples ``index`` (rows of ``.meta``) without augmentation (``epoch`` is not
        used: a slice does not depend on it; a 3-D patch's position does,
        :class:`~gi_utils.data.device_patches.DevicePatches`).

        Returns:
            ``(images float32 (N, C, S, S), packed uint8 (N, S, S))`` on the device.
        """
        return self.finish(self.stage(index, epoch))

    def finish(self, staged: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`gather`'s device part: the batch :meth:`stage` made, loaded and converted."""
        raw, packed = self.load(staged)
        images = (raw.float() / 255).half().float() if self.uint8 else raw.float()
        return images, packed

    def _host_gather(self, src: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``src[index]`` into a new host buffer, pinned on CUDA."""
        buf = pinned_empty((len(index), *src.shape[1:]), src.dtype, self.pinned)
        return torch.index_select(src, 0, index, out=buf)

    @staticmethod
    def unpack(packed: torch.Tensor) -> torch.Tensor:
        """uint8 (N, S, S) packed masks -> float32 (N, 3, S, S) in class order."""
        return unpack_masks(packed, axis=1).float()
