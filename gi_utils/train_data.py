"""The data side of training: metadata, folds, cache, datasets, the epoch sampler and the
loaders for a :class:`~gi_utils.train_config.TrainConfig`, plus the packed-mask helpers
validation uses."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from gi_utils.constants import CLASSES
from gi_utils.data import build_metadata
from gi_utils.paths import resolve_data_dir
from gi_utils.train_config import TrainConfig

__all__ = ["PACK_BITS", "EpochSampler", "SeededSamples", "TrainData", "load_train_data", "unpack_volume"]

#: Bit of each class in packed masks (same as :func:`gi_utils.transforms.pack_mask`).
PACK_BITS: tuple[int, ...] = tuple(1 << c for c in range(len(CLASSES)))


class EpochSampler(Sampler[int]):
    """Sample order of one epoch, a function of ``(seed, epoch)`` only.

    Every slice with an organ, plus ``round(empty_fraction * n_empty)`` slices without
    one drawn afresh each epoch, shuffled and cut to ``max_samples``. The yielded
    numbers encode the epoch (``epoch * n + index``) so that :class:`SeededSamples`
    can seed each sample's augmentation, whatever worker or process loads it.
    ``skip`` leaves out the first samples of the epoch (resuming in its middle).
    """

    def __init__(
        self, empty: np.ndarray, seed: int, empty_fraction: float = 1.0, max_samples: int = 0
    ) -> None:
        empty = np.asarray(empty, dtype=bool)
        self.n, self.seed, self.epoch, self.skip = len(empty), int(seed), 0, 0
        self.organ, self.empty = np.flatnonzero(~empty), np.flatnonzero(empty)
        self.n_empty = int(round(empty_fraction * len(self.empty)))
        total = len(self.organ) + self.n_empty
        self.length = min(total, max_samples) if max_samples else total

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self, epoch: int) -> np.ndarray:
        """Dataset indices of ``epoch``, in order."""
        rng = np.random.default_rng([self.seed, epoch])
        empty = (
            rng.choice(self.empty, self.n_empty, replace=False) if self.n_empty else self.empty[:0]
        )
        idx = np.concatenate([self.organ, empty])
        rng.shuffle(idx)
        return idx[: self.length]

    def __iter__(self):
        return iter((self.epoch * self.n + self.indices(self.epoch)[self.skip :]).tolist())

    def __len__(self) -> int:
        return max(self.length - self.skip, 0)


class _SampleSeededTransform:
    """Wraps an albumentations Compose; each call draws from a generator seeded by ``key``."""

    def __init__(self, compose) -> None:
        self.compose, self.key = compose, (0, 0, 0)

    def set_random_seed(self, seed: int | None) -> None:
        """Ignored: the per-sample seed replaces SliceDataset's per-worker seed."""

    def __call__(self, **data):
        seq = np.random.SeedSequence(self.key)
        py_seed = int(seq.generate_state(1)[0])
        self.compose.set_random_state(np.random.default_rng(seq), random.Random(py_seed))
        return self.compose(**data)


class SeededSamples(Dataset):
    """Training view of a SliceDataset: index ``epoch * n + i`` -> sample ``i`` augmented
    with the seed ``(seed, epoch, i)``."""

    def __init__(self, base: Dataset, seed: int) -> None:
        self.base, self.seed, self.n = base, int(seed), len(base)
        if getattr(base, "transform", None) is not None:
            base.transform = _SampleSeededTransform(base.transform)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, j: int):
        epoch, i = divmod(int(j), self.n)
        if isinstance(self.base.transform, _SampleSeededTransform):
            self.base.transform.key = (self.seed, epoch, i)
        return self.base[i]


class _Indexed(Dataset):
    """``(image, mask, i)``: validation samples carry their index through ``gather``."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        return (*self.base[i], i)


@dataclass
class TrainData:
    """Datasets and loaders of one fold; ``val_volumes``: case_day -> rows of ``val_ds``."""

    train_ds: Any
    val_ds: Any
    sampler: EpochSampler
    train_loader: DataLoader
    val_loader: DataLoader
    val_volumes: dict[str, np.ndarray]


def load_train_data(cfg: TrainConfig, num_processes: int = 1) -> TrainData:
    """Metadata, folds, cache, datasets and loaders for ``cfg`` (see :class:`TrainConfig`)."""
    from gi_utils.dataset import (
        SliceDataset,
        VolumeCache,
        assign_folds,
        build_transforms,
        split_fold,
    )

    data_dir = resolve_data_dir(cfg.data_dir)
    meta = build_metadata(data_dir, "train")
    meta = assign_folds(meta, cfg.n_folds, cfg.folds_seed, data_dir=data_dir, run_dir=Path(cfg.out_dir),
                        drop_bad=cfg.drop_bad_cases)  # fmt: skip
    train_meta, val_meta = split_fold(meta, cfg.fold)
    cache = None
    if cfg.cache != "none":
        cache_dir = (
            None
            if cfg.cache == "memory"
            else Path(cfg.cache_dir or Path(cfg.out_dir).parent / "cache")
        )
        try:
            cache = VolumeCache(
                meta, cfg.img_size, cache_dir, mode=cfg.resize_mode, progress=cfg.progress
            )
        except MemoryError as err:
            raise MemoryError(f"{err}; in TrainConfig: cache='disk' (or 'none')") from None
    transform = (build_transforms(cfg.img_size, train=True, overrides=cfg.augment_kwargs)
                 if cfg.augment else None)  # fmt: skip
    kw = {"cache": cache, "mode": cfg.resize_mode}
    train_ds = SliceDataset(train_meta, cfg.img_size, cfg.slice_offsets, transform, **kw)
    # validation batches travel as float16 images / uint8 masks (the cache's own values,
    # 4x fewer bytes between loader workers and the device) and are widened on the device
    val_ds = SliceDataset(val_meta, cfg.img_size, cfg.slice_offsets, None, compact=True, **kw)
    max_samples = cfg.max_steps_per_epoch * cfg.batch_size * num_processes
    sampler = EpochSampler(
        train_ds.meta["empty"].to_numpy(), cfg.seed, cfg.sample_empty_fraction, max_samples
    )
    if len(sampler) < cfg.batch_size * num_processes:
        raise ValueError(
            f"fold {cfg.fold} draws {len(sampler)} training slices per epoch, fewer than one batch "
            f"(batch_size={cfg.batch_size} x {num_processes} processes); lower batch_size"
        )
    pin = cfg.device != "cpu" and torch.cuda.is_available()
    loader_kw = {"num_workers": cfg.num_workers, "pin_memory": pin}
    train_loader = DataLoader(
        SeededSamples(train_ds, cfg.seed), batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
        generator=torch.Generator().manual_seed(cfg.seed), **loader_kw,
    )  # fmt: skip
    val_loader = DataLoader(
        _Indexed(val_ds), batch_size=2 * cfg.batch_size, shuffle=False, **loader_kw
    )
    codes = val_ds.meta["case_day"].to_numpy()
    volumes = {str(cd): np.flatnonzero(codes == cd) for cd in pd.unique(codes)}
    return TrainData(train_ds, val_ds, sampler, train_loader, val_loader, volumes)


def unpack_volume(packed: np.ndarray) -> np.ndarray:
    """Packed uint8 (D, S, S) -> bool (D, S, S, 3), the layout of the metric."""
    bits = np.asarray(PACK_BITS, dtype=np.uint8)
    return (packed[..., None] & bits) > 0

