"""The data side of training: metadata, folds, cache, datasets and loaders for a
:class:`~gi_utils.training.config.TrainConfig`, and the record of the run's split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from gi_utils.data.augment import build_transforms, build_transforms_3d
from gi_utils.data.cache import VolumeCache
from gi_utils.data.dataset import SliceDataset
from gi_utils.data.device_batches import DeviceBatches
from gi_utils.data.device_patches import DevicePatches
from gi_utils.data.folds import assign_folds, split_fold
from gi_utils.data.gpu_augment import GpuAugment
from gi_utils.data.gpu_augment_3d import GpuAugment3d
from gi_utils.data.layout import build_metadata
from gi_utils.data.patches_3d import PatchDataset, VolumeDataset
from gi_utils.data.shm import batch_nbytes, check_shared_memory
from gi_utils.data.tail import tail_slices
from gi_utils.device import cuda_wanted, default_device
from gi_utils.training.config import TrainConfig
from gi_utils.training.device_feed import (
    DeviceLoader,
    DeviceValLoader,
    fits_on_device,
    resolve_data_path,
)
from gi_utils.training.sampler import EpochSampler, SeededSamples

__all__ = ["TrainData", "load_train_data"]


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
    """Datasets and loaders of one fold.

    ``val_volumes``: case_day -> rows of ``val_ds``; ``split``: the record of which
    case-days train and which validate (written to the run folder as ``split.json``).
    With ``fold=-1`` (train on all cases) the validation members are ``None`` / empty.
    """

    train_ds: Any
    val_ds: Any
    sampler: EpochSampler
    train_loader: DataLoader | DeviceLoader
    val_loader: DataLoader | DeviceValLoader | None
    val_volumes: dict[str, np.ndarray]
    split: dict[str, Any]
    data_path: str = "workers"


def load_train_data(
    cfg: TrainConfig, num_processes: int = 1, device: torch.device | None = None, rank: int = 0
) -> TrainData:
    """Metadata, folds, cache, datasets and loaders for ``cfg`` (see :class:`TrainConfig`).

    ``cfg.data_dir`` must be resolved already (:func:`gi_utils.training.train` does it once
    where a run starts); folds are read from, or made once in, ``cfg.folds_dir``.
    ``cfg.data_path`` is resolved here (:func:`resolve_data_path`, on ``device``: by
    default CUDA when ``cfg.device`` wants it); on the device path ``train_loader`` is a
    :class:`DeviceLoader` and the 2.5D ``val_loader`` a :class:`DeviceValLoader` for process
    ``rank`` (the validation slices copied beside the training ones: resident when they
    still fit, else in pinned host memory; a 3-D model validates whole scans through its
    DataLoader).
    """
    if cfg.data_dir is None:
        raise ValueError("load_train_data: cfg.data_dir is not resolved; train() resolves it")
    data_dir = Path(cfg.data_dir)
    runs_root = Path(cfg.out_dir).parent
    meta = build_metadata(data_dir, "train")
    meta = assign_folds(meta, cfg.n_folds, cfg.folds_seed, Path(cfg.folds_dir or runs_root / "folds"),
                        drop_bad=cfg.drop_bad_cases)  # fmt: skip
    if cfg.fold == -1:
        train_meta, val_meta = meta, meta.iloc[:0]
    else:
        train_meta, val_meta = split_fold(meta, cfg.fold)
    cache = None
    if cfg.cache != "none":
        cache_dir = None if cfg.cache == "memory" else Path(cfg.cache_dir or runs_root / "cache")
        try:
            cache = VolumeCache(meta, cfg.img_size, cache_dir, mode=cfg.resize_mode, progress=cfg.progress,
                                dtype=cfg.cache_dtype, with_masks=cfg.cache_masks)  # fmt: skip
        except MemoryError as err:
            raise MemoryError(f"{err}; in TrainConfig: cache='disk' (or 'none')") from None
    kw = {"cache": cache, "mode": cfg.resize_mode}
    is_3d = cfg.spec.is_3d
    if is_3d:  # 3-D: patches of slices; every patch is a sample (no empty-slice draw)
        train_ds = PatchDataset(train_meta, cache, cfg.patch_depth, build_transforms_3d(cfg.augment),
                                cfg.patches_per_volume, crop=cfg.patch_size)  # fmt: skip
        empty, empty_fraction, unit = np.zeros(len(train_ds), bool), 1.0, "patches"
        n_val = 0  # whole scans through a DataLoader, not the training path
    else:
        transform = (build_transforms(cfg.img_size, train=True, overrides=cfg.augment_kwargs)
                     if cfg.augment else None)  # fmt: skip
        train_ds = SliceDataset(train_meta, cfg.img_size, cfg.slice_offsets, transform, **kw)
        empty, empty_fraction, unit = train_ds.meta["empty"].to_numpy(), cfg.sample_empty_fraction, "slices"
        n_val = len(val_meta)  # 2.5D validation reads the same path
    max_samples = cfg.max_steps_per_epoch * cfg.batch_size * num_processes
    exclude = tail_slices(train_ds.meta, cfg.drop_tail) if cfg.drop_tail else None  # the 1st place's tail filter
    sampler = EpochSampler(empty, cfg.seed, empty_fraction, max_samples, exclude=exclude)
    if len(sampler) < cfg.batch_size * num_processes:
        raise ValueError(
            f"fold {cfg.fold} draws {len(sampler)} training {unit} per epoch, fewer than one batch "
            f"(batch_size={cfg.batch_size} x {num_processes} processes); lower batch_size"
        )
    pin = cuda_wanted(cfg.device)
    device = device if device is not None else default_device(cfg.device)
    data_path = resolve_data_path(cfg.data_path, device, cache, len(train_ds.meta) + n_val)
    if data_path == "device" and cfg.data_path == "auto" and cfg.augment and cfg.augment_kwargs:
        try:  # auto: overrides the device augmentation cannot honour keep the worker path
            GpuAugment(cfg.img_size, cfg.augment_kwargs)
        except (KeyError, ValueError):
            data_path = "workers"
    loader_kw = {"num_workers": cfg.num_workers, "pin_memory": pin}
    if data_path == "device":
        resident = fits_on_device(cache, len(train_ds.meta), device)  # else: pinned host memory, asynchronous copies
        if is_3d:  # the worker path's patches, cut on the device
            augment = GpuAugment3d() if cfg.augment else None
            on_device = DevicePatches(train_ds, cache, device, cfg.seed, resident=resident)
        else:
            augment = GpuAugment(cfg.img_size, cfg.augment_kwargs) if cfg.augment else None
            on_device = DeviceBatches(train_meta, cache, cfg.slice_offsets, device, resident=resident)
        train_loader = DeviceLoader(on_device, sampler, cfg.batch_size, augment, cfg.seed, rank, num_processes)
    else:
        if cfg.num_workers:  # processes on one machine share /dev/shm: fail with a message, not a bus error
            check_shared_memory(cfg.num_workers * num_processes, batch_nbytes(train_ds[0]) * cfg.batch_size)
        train_loader = DataLoader(
            SeededSamples(train_ds, cfg.seed), batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
            generator=torch.Generator().manual_seed(cfg.seed), **loader_kw,
        )  # fmt: skip
    val_ds = val_loader = None
    volumes: dict[str, np.ndarray] = {}
    if len(val_meta) and is_3d:  # whole scans, one per batch (sliding windows)
        val_ds = VolumeDataset(val_meta, cache)
        val_loader = DataLoader(val_ds, batch_size=1, shuffle=False, **loader_kw)
    elif len(val_meta):
        # validation batches travel as float16 images / uint8 masks (the cache's own values,
        # 4x fewer bytes between loader workers and the device) and are widened on the device
        val_ds = SliceDataset(val_meta, cfg.img_size, cfg.slice_offsets, None, compact=True, **kw)
        if data_path == "device":  # the same slices and order, gathered from a copy on the device
            resident = fits_on_device(cache, len(val_meta), device)
            val_slices = DeviceBatches(val_meta, cache, cfg.slice_offsets, device, resident=resident)
            val_loader = DeviceValLoader(val_slices, 2 * cfg.batch_size, rank, num_processes)
        else:
            val_loader = DataLoader(_Indexed(val_ds), batch_size=2 * cfg.batch_size, shuffle=False, **loader_kw)
    if val_ds is not None:
        codes = val_ds.meta["case_day"].to_numpy()
        volumes = {str(cd): np.flatnonzero(codes == cd) for cd in pd.unique(codes)}
    split = {
        "data_dir": str(data_dir), "fold": cfg.fold, "n_folds": cfg.n_folds,
        "folds_seed": cfg.folds_seed, "drop_bad_cases": cfg.drop_bad_cases,
        "train_case_days": sorted(train_meta["case_day"].unique().tolist()),
        "val_case_days": list(volumes),
    }  # fmt: skip
    return TrainData(train_ds, val_ds, sampler, train_loader, val_loader, volumes, split, data_path)
