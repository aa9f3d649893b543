"""3-D training patches cut on the device: the training scans' cached slices copied once
(:class:`~gi_utils.data.device_batches.DeviceBatches`, one channel a slice), and each
batch of patches gathered there by index, with no loader workers.

Where each patch lands is drawn on the host exactly as the worker path draws it
(:meth:`PatchDataset.position <gi_utils.data.patches_3d.PatchDataset.position>`, seeded by
``(seed, epoch, i)``: a few microseconds a patch), so the patches are those of
:class:`~gi_utils.data.patches_3d.PatchDataset` on the same cache, with the same values:
images float32 of the cache's float16 values, masks in class order, a scan shorter than
the patch padded at its end with zeros. (uint8 storage becomes ``x / 255`` in float32,
as :func:`~gi_utils.data.cache.cached_as` reads it for the patches, without the float16
step of the 2.5D slices.)
"""

from __future__ import annotations

import numpy as np
import torch

from gi_utils.data.cache import VolumeCache
from gi_utils.data.device_batches import DeviceBatches, host_copy
from gi_utils.data.patches_3d import PatchDataset

__all__ = ["DevicePatches"]


class DevicePatches:
    """The slices of ``patches``' scans on ``device``; :meth:`gather` cuts a batch of patches.

    Args:
        patches: the worker path's dataset (its scans, patch depth, patches per scan and
            sampling of positions are used; its transform is not).
        cache: the :class:`VolumeCache` it reads.
        device: where batches are made (``"cpu"`` works too: the tests use it).
        seed: the run's seed (positions are drawn with ``(seed, epoch, i)``).
        resident: keep the slices on ``device``, or in host memory with each batch's
            slices gathered there and copied without waiting, as :class:`DeviceBatches`
            does (:attr:`prefetch`: the host's part is worth running one batch ahead).
    """

    def __init__(
        self, patches: PatchDataset, cache: VolumeCache, device: torch.device | str, seed: int, resident: bool = True
    ) -> None:
        self.patches, self.seed = patches, int(seed)
        self.slices = DeviceBatches(patches.meta, cache, (0,), device, resident=resident)
        self.meta, self.device, self.depth = self.slices.meta, self.slices.device, patches.patch_depth
        self.prefetch = self.slices.prefetch
        scans = patches.scans
        self.first = np.asarray(scans.first_row, dtype=np.int64)  # row of .meta where each scan starts
        self.length = np.asarray([d for _, _, d in scans.scans], dtype=np.int64)
        self.nbytes = self.slices.nbytes

    def __len__(self) -> int:
        return len(self.patches)

    def rows(self, index: np.ndarray, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows of ``.meta`` of the patches ``index`` of ``epoch``: ``(rows int64 (N, P),
        inside bool (N, P))``; a slice past its scan's end is ``inside=False`` (its row
        is the scan's first, later zeroed)."""
        index = np.asarray(index, dtype=np.int64)
        v = index // self.patches.per_volume
        start = np.asarray([self.patches.position((self.seed, epoch, int(i)), int(i))[0] for i in index], np.int64)
        at = start[:, None] + np.arange(self.depth)[None]
        inside = at < self.length[v][:, None]
        return self.first[v][:, None] + np.where(inside, at, 0), inside

    def gather(self, index: torch.Tensor | np.ndarray, epoch: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The patches ``index`` of ``epoch`` without augmentation.

        Returns:
            ``(images float32 (N, 1, P, S, S), packed uint8 (N, P, S, S))`` on the device
            (S the patches' crop when they have one).
        """
        return self.finish(self.stage(index, epoch))

    def stage(self, index: torch.Tensor | np.ndarray, epoch: int = 0) -> tuple[torch.Tensor, ...]:
        """The host's part of :meth:`gather`: the positions drawn, the slices' host part
        (:meth:`DeviceBatches.stage`) and which slices lie inside their scan (N, P).
        Never waits for the device; may run on another thread."""
        rows, inside = self.rows(np.asarray(index), epoch)
        c = self.patches.crop  # the worker path's in-plane crops (PatchDataset.crop_of), drawn here
        corners = [self.patches.crop_of((self.seed, epoch, int(i)), int(i)) for i in np.asarray(index)] if c else []
        return (*self.slices.stage(rows.reshape(-1)), host_copy(inside, self.device), corners)

    def finish(self, staged: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """The device's part of :meth:`gather`: the batch :meth:`stage` made, loaded, cut
        into patches and padded."""
        *part, inside, corners = staged
        raw, packed = self.slices.load(tuple(part))
        images = raw.float() / 255 if self.slices.uint8 else raw.float()  # as PatchDataset (no float16 step)
        (n, p), s = inside.shape, self.slices.img_size
        keep = inside.to(self.device, non_blocking=True)
        images = torch.where(keep[:, :, None, None], images.reshape(n, p, s, s), 0.0)[:, None]
        packed = torch.where(keep[:, :, None, None], packed.reshape(n, p, s, s), 0)
        c = self.patches.crop
        if c:  # each patch's window, its corner drawn on the host (no device read)
            images = torch.stack([images[k, ..., y : y + c, x : x + c] for k, (y, x) in enumerate(corners)])
            packed = torch.stack([packed[k, ..., y : y + c, x : x + c] for k, (y, x) in enumerate(corners)])
        return images, packed

    unpack = staticmethod(DeviceBatches.unpack)  # (N, P, S, S) -> float32 (N, 3, P, S, S)
