"""The training feed on the device (``TrainConfig.data_path``): the slices copied to the
device once, batches gathered there in the order of the :class:`EpochSampler` and
augmented there in batches (:class:`~gi_utils.data.gpu_augment.GpuAugment`), with no
DataLoader workers: the CPU loader is no longer the limit of a GPU run. For a 3-D model
the patches are cut there from the resident scans
(:class:`~gi_utils.data.device_patches.DevicePatches`, the positions of the worker path)
and augmented there (:class:`~gi_utils.data.gpu_augment_3d.GpuAugment3d`).
Validation of a 2.5D model on this path reads its slices the same way
(:class:`DeviceValLoader`: the batches of the worker path's validation DataLoader, in the
same order, no augmentation).

Randomness: the augmentation of global batch ``b`` of ``epoch`` draws from a
``torch.Generator`` on the device seeded from ``(seed, epoch, b)`` only, so a run resumed
at ``(epoch, b)`` sees the batches of an uninterrupted one on the same device. Several
processes take the global batches in turn (process ``r`` of ``n``: ``r, r + n, ...``),
as accelerate shards a DataLoader's batches.

Which path a run takes, and whether its slices stay on the device or in host memory, is
decided once where it starts: :mod:`gi_utils.training.feed_plan`.

Waiting: a batch is made without reading anything back from the device (the augmentation
keeps its steps with ``torch.where``, indices travel through pinned memory), so the host
queues batch ``b + 1`` while the device still runs step ``b``; with the slices in host
memory, the host's gather of batch ``b + 1`` runs on a side thread during step ``b``
(:func:`~gi_utils.data.device_batches.ahead`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from gi_utils.data.device_batches import DeviceBatches, ahead, to_device
from gi_utils.data.device_patches import DevicePatches
from gi_utils.data.gpu_augment import GpuAugment
from gi_utils.data.gpu_augment_3d import GpuAugment3d
from gi_utils.training.sampler import EpochSampler

__all__ = ["DeviceLoader", "DeviceValLoader", "batch_generator"]


def batch_generator(seed: int, epoch: int, batch: int, device: torch.device) -> torch.Generator:
    """The generator of global batch ``batch`` of ``epoch``: seeded from the three only."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(batch)]).generate_state(2, np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) & (2**63 - 1))


class DeviceLoader:
    """Batches ``(images float32 (N, C, S, S), masks float32 (N, 3, S, S))`` on the device
    (3-D: ``(N, 1, P, S, S)`` and ``(N, 3, P, S, S)``), a drop-in for the training
    DataLoader (``set_epoch``, ``len``, iteration).

    Args:
        data: the training slices (or 3-D patches) on the device.
        sampler: the run's sampler (its ``epoch`` and ``skip`` are honoured as the
            DataLoader honours them; its numbers are rows of ``data.meta``).
        batch_size: samples per batch and process.
        augment: the device augmentation, or ``None``.
        seed: the run's seed.
        rank, world: this process and the number of processes.
    """

    def __init__(
        self,
        data: DeviceBatches | DevicePatches,
        sampler: EpochSampler,
        batch_size: int,
        augment: GpuAugment | GpuAugment3d | None,
        seed: int,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.data, self.sampler, self.batch_size = data, sampler, int(batch_size)
        self.augment, self.seed, self.rank, self.world = augment, int(seed), int(rank), int(world)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return (len(self.sampler) // self.batch_size) // self.world

    def batch(self, epoch: int, b: int, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Global batch ``b`` of ``epoch`` made of the rows ``index``."""
        return self._finish(epoch, b, self.data.stage(index, epoch))

    def _finish(self, epoch: int, b: int, staged: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """The device's part of global batch ``b``: loaded, augmented, masks unpacked."""
        images, packed = self.data.finish(staged)
        if self.augment is not None:
            gen = batch_generator(self.seed, epoch, b, self.data.device)
            images, packed, _ = self.augment(images, packed, gen)
        return images, self.data.unpack(packed)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, skip, bs = self.sampler.epoch, self.sampler.skip, self.batch_size
        if skip % bs:
            raise ValueError(f"DeviceLoader: sampler.skip={skip} is not a whole number of batches of {bs}")
        order = self.sampler.indices(epoch)[skip:]
        first = skip // bs
        mine = range(self.rank, len(self) * self.world, self.world)

        def stage(k: int) -> tuple[torch.Tensor, ...]:
            return self.data.stage(order[k * bs : (k + 1) * bs], epoch)

        staged = ahead(stage, mine) if self.data.prefetch else map(stage, mine)
        for k, part in zip(mine, staged, strict=True):
            yield self._finish(epoch, first + k, part)


class DeviceValLoader:
    """Validation batches ``(images float32 (N, C, S, S), masks float32 (N, 3, S, S), rows
    int64 (N,))`` gathered on the device: rows ``0, 1, ...`` of ``data.meta`` in batches of
    ``batch_size``, the values and order of the worker path's validation DataLoader.

    Process ``rank`` of ``world`` takes the batches ``rank, rank + world, ...``; every
    process yields ``len(self)`` batches (collectives stay matched), a process past the end
    repeating the first batch with its rows marked ``-1`` (dropped after the gather).
    """

    def __init__(self, data: DeviceBatches, batch_size: int, rank: int = 0, world: int = 1) -> None:
        self.data, self.batch_size, self.rank, self.world = data, int(batch_size), int(rank), int(world)
        self.n_batches = -(-len(data) // self.batch_size)

    def __len__(self) -> int:
        return -(-self.n_batches // self.world)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        n, bs = len(self.data), self.batch_size
        for k in range(len(self)):
            b = self.rank + k * self.world
            index = torch.arange(b * bs, min(n, (b + 1) * bs)) if b < self.n_batches else torch.arange(min(n, bs))
            images, packed = self.data.gather(index)
            rows = index if b < self.n_batches else torch.full_like(index, -1)
            yield images, self.data.unpack(packed), to_device(rows, self.data.device)
