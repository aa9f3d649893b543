"""The data side of training: metadata, folds and cache of one fold
(:func:`load_fold_data`), then datasets and loaders for a
:class:`~gi_utils.training.config.TrainConfig` made as the run's
:class:`~gi_utils.training.feed_plan.FeedPlan` says (:func:`load_train_data`), and the
record of the run's split."""

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
from gi_utils.data.device_batches import DeviceBatches, device_nbytes
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
from gi_utils.training.device_feed import DeviceLoader, DeviceValLoader
from gi_utils.training.feed_plan import FeedPlan, decide_feed
from gi_utils.training.sampler import EpochSampler, SeededSamples

__all__ = ["FoldData", "TrainData", "load_fold_data", "load_train_data", "unprobed_plan", "check_plan"]


class _Indexed(Dataset):
    """``(image, mask, i)``: validation samples carry their index through ``gather``."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        return (*self.base[i], i)


@dataclass
class FoldData:
    """The rows of one fold and the cache they are read from: what the feed is planned on
    (:attr:`train_bytes`, :attr:`val_bytes`) before the loaders are made."""

    data_dir: Path
    train_meta: pd.DataFrame
    val_meta: pd.DataFrame
    cache: VolumeCache | None
    is_3d: bool

    @property
    def train_bytes(self) -> int:
        """Bytes of the training slices on the device path (:func:`device_nbytes`)."""
        return device_nbytes(self.cache, len(self.train_meta)) if self.cache is not None else 0

    @property
    def val_bytes(self) -> int:
        """Bytes of the validation slices on the device path (2.5D; a 3-D model validates
        whole scans through its DataLoader)."""
        return device_nbytes(self.cache, len(self.val_meta)) if self.cache is not None and not self.is_3d else 0

    @property
    def longest_val_scan(self) -> int:
        """Slices of the longest validation scan (0 without validation)."""
        return int(self.val_meta.groupby("case_day").size().max()) if len(self.val_meta) else 0


@dataclass
class TrainData:
    """Datasets and loaders of one fold, made as ``plan`` says.

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
    plan: FeedPlan

    @property
    def data_path(self) -> str:
        """``"device"`` or ``"workers"``: :attr:`FeedPlan.path`."""
        return self.plan.path


def load_fold_data(cfg: TrainConfig) -> FoldData:
    """Metadata, folds and cache of ``cfg``'s fold (see :class:`TrainConfig`).

    ``cfg.data_dir`` must be resolved already (:func:`gi_utils.training.train` does it once
    where a run starts); folds are read from, or made once in, ``cfg.folds_dir``, and a
    disk cache is built once in ``cfg.cache_dir`` (one process at a time: the caller's
    ``main_process_first``).
    """
    if cfg.data_dir is None:
        raise ValueError("load_fold_data: cfg.data_dir is not resolved; train() resolves it")
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
    return FoldData(data_dir, train_meta, val_meta, cache, cfg.spec.is_3d)


def unprobed_plan(cfg: TrainConfig, fold: FoldData) -> FeedPlan:
    """The plan of ``cfg`` without a GPU's figures: ``workers`` as asked, ``device`` with
    its slices resident, ``auto`` the workers (a run on a GPU plans with a probe step:
    :func:`gi_utils.training.probe.plan_feed`)."""
    return decide_feed(cfg.data_path, has_cache=fold.cache is not None, train_bytes=fold.train_bytes,
                       val_bytes=fold.val_bytes)  # fmt: skip


def check_plan(cfg: TrainConfig, plan: FeedPlan, fold: FoldData) -> None:
    """Refuse a plan the run cannot follow, before any loader is made.

    Raises:
        ValueError: the probe step ran out of GPU memory (the run would at its first
            step), naming the sizes to lower; or a device plan (recorded by the run being
            resumed) without a cache to copy (``cache="none"``).
    """
    if plan.gpu is not None and plan.step_bytes is None:
        sizes = f"batch_size={cfg.batch_size}, img_size={cfg.img_size}"
        sizes += f", patch_depth={cfg.patch_depth}" if cfg.spec.is_3d else ""
        raise ValueError(f"one training step ({sizes}) ran out of GPU memory on {plan.gpu} in the probe before the "
                         "run (feed plan above): the run would at its first step; lower batch_size (or img_size"
                         f"{', patch_depth' if cfg.spec.is_3d else ''})")  # fmt: skip
    if plan.path == "device" and fold.cache is None:
        raise ValueError(f"the feed plan{' recorded in last.pt' if plan.recorded else ''} takes the device path, "
                         f"which copies the cache, and cache='none' has none: resume with cache='disk' (or "
                         "'memory'), or start over with resume=False")  # fmt: skip


def load_train_data(
    cfg: TrainConfig,
    num_processes: int = 1,
    device: torch.device | None = None,
    rank: int = 0,
    *,
    plan: FeedPlan | None = None,
    fold: FoldData | None = None,
) -> TrainData:
    """Datasets and loaders for ``cfg`` (see :class:`TrainConfig`), made as ``plan`` says.

    ``fold``: :func:`load_fold_data` (read here when ``None``); ``plan``: the run's
    :class:`FeedPlan` (``None``: :func:`unprobed_plan`). On the device path, on ``device``
    (by default CUDA when ``cfg.device`` wants it), ``train_loader`` is a
    :class:`DeviceLoader` and the 2.5D ``val_loader`` a :class:`DeviceValLoader` for process
    ``rank`` (the slices resident or in host memory as the plan says; a 3-D model
    validates whole scans through its DataLoader).
    """
    fold = fold if fold is not None else load_fold_data(cfg)
    plan = plan if plan is not None else unprobed_plan(cfg, fold)
    check_plan(cfg, plan, fold)
    train_meta, val_meta, cache = fold.train_meta, fold.val_meta, fold.cache
    kw = {"cache": cache, "mode": cfg.resize_mode}
    is_3d = fold.is_3d
    if is_3d:  # 3-D: patches of slices; every patch is a sample (no empty-slice draw)
        train_ds = PatchDataset(train_meta, cache, cfg.patch_depth, build_transforms_3d(cfg.augment),
                                cfg.patches_per_volume, crop=cfg.patch_size)  # fmt: skip
        empty, empty_fraction, unit = np.zeros(len(train_ds), bool), 1.0, "patches"
    else:
        transform = (build_transforms(cfg.img_size, train=True, overrides=cfg.augment_kwargs)
                     if cfg.augment else None)  # fmt: skip
        train_ds = SliceDataset(train_meta, cfg.img_size, cfg.slice_offsets, transform, **kw)
        empty, empty_fraction, unit = train_ds.meta["empty"].to_numpy(), cfg.sample_empty_fraction, "slices"
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
    loader_kw = {"num_workers": cfg.num_workers, "pin_memory": pin}
    if plan.path == "device":
        if is_3d:  # the worker path's patches, cut on the device
            augment = GpuAugment3d() if cfg.augment else None
            on_device = DevicePatches(train_ds, cache, device, cfg.seed, resident=plan.train_resident)
        else:
            augment = GpuAugment(cfg.img_size, cfg.augment_kwargs) if cfg.augment else None
            on_device = DeviceBatches(train_meta, cache, cfg.slice_offsets, device, resident=plan.train_resident)
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
        if plan.path == "device":  # the same slices and order, gathered from a copy on the device
            val_slices = DeviceBatches(val_meta, cache, cfg.slice_offsets, device, resident=plan.val_resident)
            val_loader = DeviceValLoader(val_slices, 2 * cfg.batch_size, rank, num_processes)
        else:
            val_loader = DataLoader(_Indexed(val_ds), batch_size=2 * cfg.batch_size, shuffle=False, **loader_kw)
    if val_ds is not None:
        codes = val_ds.meta["case_day"].to_numpy()
        volumes = {str(cd): np.flatnonzero(codes == cd) for cd in pd.unique(codes)}
    split = {
        "data_dir": str(fold.data_dir), "fold": cfg.fold, "n_folds": cfg.n_folds,
        "folds_seed": cfg.folds_seed, "drop_bad_cases": cfg.drop_bad_cases,
        "train_case_days": sorted(train_meta["case_day"].unique().tolist()),
        "val_case_days": list(volumes),
    }  # fmt: skip
    return TrainData(train_ds, val_ds, sampler, train_loader, val_loader, volumes, split, plan)
