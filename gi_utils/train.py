"""Train one segmentation model on one fold: ``train(TrainConfig(...)) -> history``.

A plain PyTorch loop; Hugging Face ``accelerate`` supplies the device, mixed precision,
gradient accumulation and multi-process data parallelism, so the same code runs on a
laptop CPU, one Kaggle GPU, or ``accelerate launch -m gi_utils.train ...`` / torchrun.

Per epoch: AdamW steps under a warm-up + cosine schedule, then validation on whole
volumes: per-slice predictions are gathered from all processes, put back into
per-case-day volumes at model resolution and scored once with
:func:`gi_utils.metrics.competition_score`.

Files in ``out_dir`` (only the main process writes; every write is atomic):

* ``config.json`` -- the :class:`TrainConfig`;
* ``last.pt`` -- everything needed to resume (model, optimizer, scheduler, scaler,
  epoch, step, best score, history, RNG states), safe types only (loads with
  ``weights_only=True``); written after every epoch and every ``save_every_steps``;
* ``best.safetensors`` + ``best.json`` -- the model of the best validation score, with
  the config :func:`gi_utils.models.load_model` and inference need;
* ``history.csv`` -- one row per epoch; ``metrics.json`` -- the best and final figures.

Resuming: calling :func:`train` again with the same config continues from ``last.pt``
and ends with the same numbers as an uninterrupted run (bit-identical on CPU). The data
order of an epoch depends only on ``(seed, epoch)`` and each sample's augmentation only
on ``(seed, epoch, sample)``, not on workers, processes or where the run stopped.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import random
import sys
import time
import warnings
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from gi_utils.checkpoint import (
    atomic_write_json,
    atomic_write_text,
    load_state,
    remove_stale_temps,
    rng_state,
    save_state,
    set_rng_state,
)
from gi_utils.constants import CLASSES
from gi_utils.data import build_metadata
from gi_utils.distributed import LR_SCALING, effective_batch_size, effective_lr
from gi_utils.models import (
    ARCHITECTURES,
    build_model,
    check_encoder,
    check_img_size,
    model_config,
    save_model,
)
from gi_utils.paths import resolve_data_dir
from gi_utils.transforms import RESIZE_MODES

__all__ = ["TrainConfig", "NonFiniteLossError", "train", "train_one_epoch", "WarmupCosine", "main"]

#: Config fields that may differ between a run and its resumption (they do not change
#: the numbers, only where files live and how fast they are read).
RESUME_FREE_FIELDS = frozenset(
    {"out_dir", "data_dir", "num_workers", "cache", "cache_dir", "progress", "resume",
     "save_every_steps", "patience"}
)  # fmt: skip


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the last checkpoint on disk is kept."""


class WarmupCosine:
    """LR factor: linear warm-up from 0 over ``warmup`` steps, then cosine to ``floor``.

    A callable object (not a lambda) so ``LambdaLR.state_dict()`` stores it as plain ints.
    """

    def __init__(self, warmup: int, total: int, floor: float = 0.01) -> None:
        self.warmup, self.total, self.floor = int(warmup), max(int(total), 1), float(floor)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * t))


# --------------------------------------------------------------------------- config
AMP_MODES: tuple[str, ...] = ("no", "fp16", "bf16")
CACHE_MODES: tuple[str, ...] = ("none", "memory", "disk")
DEVICES: tuple[str, ...] = ("auto", "cpu")


@dataclass
class TrainConfig:
    """Every setting of a training run; validated on creation (``ValueError`` names the field).

    Model: ``arch``, ``encoder``, ``weights`` (None, "imagenet" or a local encoder state
    dict), ``model_kwargs`` (extra smp arguments, e.g. ``{"decoder_channels": [...]}``).
    Data: ``data_dir`` (None: :func:`gi_utils.paths.resolve_data_dir`), ``fold`` of
    ``n_folds`` (folds made with ``folds_seed`` and persisted), ``drop_bad_cases``,
    ``img_size`` (multiple of 32), ``resize_mode`` ("resize"|"pad"), ``slice_offsets``
    (2.5D channels), ``augment``, ``cache`` ("none"|"memory"|"disk", disk under
    ``cache_dir``, default ``<out_dir>/../cache`` so runs share it), ``num_workers``.
    Optimisation: ``epochs``, ``batch_size`` (per process), ``lr``, ``weight_decay``,
    ``warmup_epochs``, ``grad_accum``, ``scale_lr`` ("none"|"linear"|"sqrt": scale ``lr``, set
    for one process, to the effective batch ``batch_size x processes x grad_accum``; see
    :func:`gi_utils.distributed.effective_lr`), ``loss`` (a name of
    :data:`gi_utils.losses.LOSSES`) with ``loss_kwargs``,
    ``amp`` ("no"|"fp16"|"bf16"), ``compile`` (torch.compile, opt-in), ``device``
    ("auto": CUDA when present | "cpu"). Validation: ``threshold`` on probabilities,
    ``patience`` (early stopping on the validation score; 0 = off), ``min_size``
    (predicted components smaller than this many pixels at model resolution are removed
    before scoring, as inference does; 0 = keep all).
    Cheap runs: ``sample_empty_fraction`` (share of slices without any organ drawn per
    epoch, the rest always) and ``max_steps_per_epoch`` (0 = no limit).
    Bookkeeping: ``out_dir``, ``seed``, ``deterministic``, ``save_every_steps`` (also
    checkpoint inside an epoch; 0 = per epoch only), ``resume`` (continue from
    ``out_dir/last.pt`` if present), ``progress`` (tqdm bars).
    """

    arch: str = "unet"
    encoder: str = "resnet18"
    weights: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    fold: int = 0
    n_folds: int = 5
    folds_seed: int = 42
    drop_bad_cases: bool = True
    img_size: int = 128
    resize_mode: str = "resize"
    slice_offsets: tuple[int, ...] = (-2, 0, 2)
    augment: bool = True
    cache: str = "memory"
    cache_dir: str | None = None
    num_workers: int = 0
    epochs: int = 10
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    grad_accum: int = 1
    scale_lr: str = "none"
    loss: str = "bce_dice"
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    amp: str = "no"
    compile: bool = False
    device: str = "auto"
    threshold: float = 0.5
    min_size: int = 0
    patience: int = 0
    sample_empty_fraction: float = 1.0
    max_steps_per_epoch: int = 0
    out_dir: str = "runs/unet"
    seed: int = 42
    deterministic: bool = True
    save_every_steps: int = 0
    resume: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            setattr(self, f.name, _coerce(f.name, f.type, getattr(self, f.name)))
        _check_choice("arch", self.arch.lower(), tuple(ARCHITECTURES))
        self.arch = self.arch.lower()
        try:
            check_encoder(self.encoder)
        except KeyError as err:
            raise ValueError(f"encoder: {err.args[0]}") from None
        from gi_utils.losses import LOSSES

        _check_choice("loss", self.loss, tuple(LOSSES))
        _check_choice("amp", self.amp, AMP_MODES)
        _check_choice("cache", self.cache, CACHE_MODES)
        _check_choice("device", self.device, DEVICES)
        _check_choice("resize_mode", self.resize_mode, RESIZE_MODES)
        _check_choice("scale_lr", self.scale_lr, LR_SCALING)
        check_img_size(self.img_size)
        if self.n_folds < 2:
            raise ValueError(f"n_folds must be >= 2, got {self.n_folds}")
        if not 0 <= self.fold < self.n_folds:
            raise ValueError(
                f"fold must be in 0..{self.n_folds - 1} (n_folds={self.n_folds}), got {self.fold}"
            )
        positive = ("epochs", "batch_size", "grad_accum")
        non_negative = (
            "min_size",
            "num_workers",
            "patience",
            "max_steps_per_epoch",
            "save_every_steps",
            "warmup_epochs",
            "weight_decay",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if not 0 <= self.sample_empty_fraction <= 1:
            raise ValueError(
                f"sample_empty_fraction must be in [0, 1], got {self.sample_empty_fraction}"
            )
        if not self.slice_offsets:
            raise ValueError("slice_offsets must hold at least one offset, e.g. (0,) or (-2, 0, 2)")
        for name in ("model_kwargs", "loss_kwargs"):
            try:
                json.dumps(getattr(self, name))
            except TypeError as err:
                raise ValueError(f"{name} must be JSON-serialisable: {err}") from None

    @classmethod
    def from_dict(cls, values: dict[str, Any] | TrainConfig) -> TrainConfig:
        """Build from a dict (e.g. notebook parameters); unknown names raise ``ValueError``."""
        if isinstance(values, TrainConfig):
            return cls(**values.to_dict())
        names = [f.name for f in fields(cls)]
        unknown = [k for k in values if k not in names]
        if unknown:
            hints = {k: difflib.get_close_matches(k, names, n=1) for k in unknown}
            hint = "; ".join(f"{k!r}: did you mean {v[0]!r}?" for k, v in hints.items() if v)
            raise ValueError(
                f"unknown TrainConfig parameter(s) {unknown}{' (' + hint + ')' if hint else ''}; "
                f"valid names: {', '.join(names)}"
            )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists); ``from_dict(to_dict())`` gives an equal config."""
        d = asdict(self)
        d["slice_offsets"] = list(self.slice_offsets)
        return d


def _check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {', '.join(valid)}")


def _coerce(name: str, kind: str, value: Any) -> Any:
    """Check/convert one field to its annotated type; ``ValueError`` names the field."""
    if kind.endswith("| None") and value is None:
        return None
    base = kind.removesuffix(" | None")
    ok = True
    if base == "bool":
        ok = isinstance(value, bool)
    elif base == "int":
        ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        value = int(value) if ok else value
    elif base == "float":
        ok = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif base == "str":
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        ok = isinstance(value, str)
    elif base.startswith("tuple"):
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
        )
        value = tuple(int(v) for v in value) if ok else value
    elif base.startswith("dict"):
        ok = isinstance(value, dict)
    if not ok:
        raise ValueError(f"{name} must be {kind}, got {value!r} ({type(value).__name__})")
    return value


def config_parser() -> argparse.ArgumentParser:
    """argparse over the TrainConfig fields (``--img-size 128``, ``--no-augment``...)."""
    parser = argparse.ArgumentParser(
        prog="python -m gi_utils.train", description="Train one model on one fold (gi_utils.train)."
    )
    parser.add_argument("--config", help="JSON file of TrainConfig fields; flags override it")
    for f in fields(TrainConfig):
        flags = [f"--{f.name.replace('_', '-')}"]
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        kw: dict[str, Any] = {
            "dest": f.name,
            "default": argparse.SUPPRESS,
            "help": f"default: {default!r}",
        }
        base = f.type.removesuffix(" | None")
        if base == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif base.startswith("tuple"):
            kw.update(nargs="+", type=int)
        elif base.startswith("dict"):
            kw["type"] = json.loads
        elif f.type.endswith("| None"):
            kw["type"] = lambda s: None if s.lower() in ("", "none", "null") else s
        else:
            kw["type"] = {"int": int, "float": float, "str": str}[base]
        parser.add_argument(*flags, **kw)
    return parser


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Parse command-line flags (and ``--config FILE``) into a validated TrainConfig."""
    parser = config_parser()
    args = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    config_file = args.pop("config", None)
    if config_file:
        values.update(json.loads(Path(config_file).read_text(encoding="utf-8")))
    values.update(args)
    try:
        return TrainConfig.from_dict(values)
    except ValueError as err:
        parser.error(str(err))  # exits with status 2 and the usage line


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; with ``deterministic``, cuDNN picks fixed kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


# --------------------------------------------------------------------------- data
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
    transform = build_transforms(cfg.img_size, train=True) if cfg.augment else None
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


def _drop_small(masks: np.ndarray, min_size: int) -> np.ndarray:
    """Remove components < ``min_size`` px from every (slice, class) of bool (D, S, S, C)."""
    from gi_utils.infer import remove_small_components

    out = masks.copy()
    for d in range(out.shape[0]):
        for c in range(out.shape[-1]):
            out[d, ..., c] = remove_small_components(out[d, ..., c], min_size)
    return out


# --------------------------------------------------------------------------- the loop
def train_one_epoch(
    acc: Accelerator,
    model: torch.nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    loss_fn: torch.nn.Module,
    *,
    desc: str = "train",
    progress: bool = True,
    loss_sum: float = 0.0,
    n_batches: int = 0,
    on_step=None,
) -> tuple[float, int]:
    """One pass over ``loader``: forward, loss, backward, optimizer and scheduler step.

    Args:
        acc: the Accelerator the model, optimizer and loader were prepared with.
        loader: yields ``(image (N, C, S, S), mask (N, 3, S, S))`` batches.
        loss_sum, n_batches: running totals when resuming in the middle of an epoch.
        on_step: called as ``on_step(loss_sum, n_batches)`` after every optimizer step.

    Returns:
        ``(loss_sum, n_batches)``; the epoch's mean loss is their ratio.

    Raises:
        NonFiniteLossError: a batch gave a NaN or infinite loss.
    """
    model.train()
    bar = _bar(loader, desc, progress)
    for images, masks in bar:
        with acc.accumulate(model):
            logits = model(images)
            loss = loss_fn(logits.float(), masks)
            acc.backward(loss)
            optimizer.step()
            if acc.sync_gradients:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        value = loss.detach()
        if acc.num_processes > 1:  # all ranks see the same value, so all stop together
            value = acc.reduce(value, "mean")
        value = float(value)
        if not math.isfinite(value):
            raise NonFiniteLossError(f"{desc}: loss is {value} at batch {n_batches + 1}")
        loss_sum, n_batches = loss_sum + value, n_batches + 1
        if progress:
            bar.set_postfix(loss=f"{loss_sum / n_batches:.4f}", refresh=False)
        if on_step is not None and acc.sync_gradients:
            on_step(loss_sum, n_batches)
    return loss_sum, n_batches


@torch.no_grad()
def validate(
    acc: Accelerator, model, loader, loss_fn, data: TrainData, threshold: float, progress: bool,
    min_size: int = 0,
) -> dict[str, float]:
    """Loss and competition metrics on the whole validation volumes (model resolution).

    ``min_size`` > 0 removes predicted components smaller than that many pixels (at model
    resolution) before scoring, the post-processing :func:`gi_utils.infer.postprocess`
    applies at inference.
    """
    from gi_utils.metrics import competition_score

    model.eval()
    bits = torch.tensor(PACK_BITS, dtype=torch.uint8, device=acc.device).view(1, -1, 1, 1)
    loss_stats = torch.zeros(2, dtype=torch.float64, device=acc.device)  # sum, count
    preds, trues, order = [], [], []
    for images, masks, index in _bar(loader, "valid", progress):
        images, masks = images.float(), masks.float()
        logits = model(images).float()
        loss_stats[0] += loss_fn(logits, masks).double() * len(images)
        loss_stats[1] += len(images)
        pred = (logits.sigmoid() > threshold).to(torch.uint8)
        packed_pred = (pred * bits).sum(1, dtype=torch.uint8)  # (N, S, S), bit c = class c
        packed_true = (masks.to(torch.uint8) * bits).sum(1, dtype=torch.uint8)
        p, t, i = acc.gather_for_metrics((packed_pred, packed_true, index))
        preds.append(p.cpu().numpy())
        trues.append(t.cpu().numpy())
        order.append(i.cpu().numpy())
    total, count = acc.reduce(loss_stats, "sum").tolist()
    out = {"val_loss": total / max(count, 1.0)}
    if not acc.is_main_process:
        return out
    order_np = np.concatenate(order)
    pred_all = np.empty((len(data.val_ds), *preds[0].shape[1:]), np.uint8)
    true_all = np.empty_like(pred_all)
    pred_all[order_np], true_all[order_np] = np.concatenate(preds), np.concatenate(trues)
    pred_vol, true_vol = {}, {}
    for case_day, rows in data.val_volumes.items():
        pred_vol[case_day] = unpack_volume(pred_all[rows])
        if min_size > 1:
            pred_vol[case_day] = _drop_small(pred_vol[case_day], min_size)
        true_vol[case_day] = unpack_volume(true_all[rows])
    res = competition_score(pred_vol, true_vol)
    out.update(
        val_dice=float(res.dice), val_hausdorff=float(res.hausdorff), val_score=float(res.score)
    )
    for name in CLASSES:
        out[f"dice_{name}"] = float(res.per_class.loc[name, "dice"])
    return out


def _bar(iterable, desc: str, enabled: bool):
    """tqdm.auto bar: widget in a notebook; sparse updates when stderr is a log file."""
    interactive = sys.stderr.isatty() or "ipykernel" in sys.modules
    return tqdm(iterable, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True,
                mininterval=0.2 if interactive else 30.0)  # fmt: skip


# --------------------------------------------------------------------------- train()
def train(config: TrainConfig | dict[str, Any]) -> pd.DataFrame:
    """Train ``config.arch`` on fold ``config.fold``; resume from ``last.pt`` if present.

    Returns:
        The history, one row per epoch: ``epoch, step, lr, train_loss, val_loss,
        val_dice, val_hausdorff, val_score, dice_<class>..., epoch_time_s``.

    Raises:
        ValueError: an invalid config value (named), or a ``last.pt`` of another config.
        NonFiniteLossError: the loss became NaN/inf (the last good checkpoint is kept).
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    out_dir = Path(cfg.out_dir)
    acc = _accelerator(cfg)
    seed_everything(cfg.seed, cfg.deterministic)
    last_path = out_dir / "last.pt"
    state = None
    if cfg.resume and last_path.is_file():
        state = load_state(last_path)
        _check_resumable(cfg, state["config"], last_path)
        if state.get("finished"):
            acc.print(f"{last_path}: run already finished; returning its history", flush=True)
            return pd.DataFrame(state["history"])
        if state.get("num_processes", acc.num_processes) != acc.num_processes:
            raise ValueError(
                f"{last_path} was written by {state['num_processes']} process(es), this run has "
                f"{acc.num_processes}: resume with the same number (data order and schedule "
                "depend on it), or pass resume=False to start over"
            )
    if acc.is_main_process:
        remove_stale_temps(out_dir)  # left by a run killed while writing a file
        atomic_write_json(out_dir / "config.json", cfg.to_dict())

    with acc.main_process_first():
        data = load_train_data(cfg, acc.num_processes)
    net = build_model(cfg.arch, cfg.encoder, len(cfg.slice_offsets), len(CLASSES),
                      weights=None if state else cfg.weights, **cfg.model_kwargs)  # fmt: skip
    lr = effective_lr(cfg.lr, acc.num_processes, cfg.grad_accum, cfg.scale_lr)
    if acc.num_processes * cfg.grad_accum > 1:
        acc.print(f"effective batch {effective_batch_size(cfg.batch_size, acc.num_processes, cfg.grad_accum)} "
                  f"({cfg.batch_size} x {acc.num_processes} processes x grad_accum {cfg.grad_accum}); "
                  f"peak lr {lr:.3g} (scale_lr={cfg.scale_lr})", flush=True)  # fmt: skip
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    loss_fn = _build_loss(cfg)
    model = torch.compile(net) if cfg.compile else net
    model, optimizer, train_loader, val_loader = acc.prepare(
        model, optimizer, data.train_loader, data.val_loader
    )
    batches_per_epoch = len(train_loader)  # per process
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
    schedule = WarmupCosine(
        round(cfg.warmup_epochs * steps_per_epoch), cfg.epochs * steps_per_epoch
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer.optimizer, schedule)

    run = {"epoch": 0, "loss_sum": 0.0, "n_batches": 0, "best_score": -math.inf, "best_epoch": -1,
           "bad_epochs": 0, "history": []}  # fmt: skip
    if state is not None:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if acc.scaler is not None and state.get("scaler"):
            acc.scaler.load_state_dict(state["scaler"])
        acc.step = int(state["accelerator_step"])
        run.update({k: state[k] for k in run})
        set_rng_state(state["rng"])
        acc.print(
            f"resuming {last_path} at epoch {run['epoch'] + 1}, batch {run['n_batches']}",
            flush=True,
        )

    def checkpoint(finished: bool = False) -> None:
        if acc.is_main_process:
            save_state(last_path, {
                **run, "config": cfg.to_dict(), "finished": finished, "model": net.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
                "accelerator_step": int(acc.step), "rng": rng_state(), "num_processes": acc.num_processes,
            })  # fmt: skip
            where = (f"epoch {run['epoch'] + 1}, batch {run['n_batches']}" if run["n_batches"]
                     else f"end of epoch {run['epoch']}")  # fmt: skip
            print(f"saved checkpoint {last_path} ({where})", flush=True)
        acc.wait_for_everyone()

    def on_step(loss_sum: float, n_batches: int) -> None:
        run.update(loss_sum=loss_sum, n_batches=n_batches)
        opt_steps = math.ceil(n_batches / cfg.grad_accum)
        if (
            cfg.save_every_steps
            and opt_steps % cfg.save_every_steps == 0
            and n_batches < batches_per_epoch
        ):
            checkpoint()

    t_start = time.perf_counter()
    stopped_early = False
    while run["epoch"] < cfg.epochs:
        epoch, t0 = run["epoch"], time.perf_counter()
        train_loader.set_epoch(epoch)  # accelerate's loader passes it on to the sampler
        # resuming in the middle of an epoch: leave out the batches already trained on
        data.sampler.skip = run["n_batches"] * cfg.batch_size * acc.num_processes
        desc = f"epoch {epoch + 1}/{cfg.epochs}"
        try:
            loss_sum, n = train_one_epoch(acc, model, train_loader, optimizer, scheduler, loss_fn, desc=desc,
                                          progress=cfg.progress, loss_sum=run["loss_sum"],
                                          n_batches=run["n_batches"], on_step=on_step)  # fmt: skip
        except NonFiniteLossError as err:
            raise NonFiniteLossError(
                f"{err}; training stopped, last good checkpoint kept: {last_path}"
            ) from None
        row = {"epoch": epoch + 1, "step": int(scheduler.last_epoch), "lr": float(scheduler.get_last_lr()[0]),
               "train_loss": loss_sum / max(n, 1)}  # fmt: skip
        row.update(validate(acc, model, val_loader, loss_fn, data, cfg.threshold, cfg.progress,
                            cfg.min_size))  # fmt: skip
        row = broadcast_object_list([row])[0]  # the metrics are computed on the main process
        row["epoch_time_s"] = time.perf_counter() - t0
        score = row["val_score"]
        improved = math.isfinite(score) and score > run["best_score"]
        if improved:
            run.update(best_score=score, best_epoch=epoch + 1, bad_epochs=0)
            if acc.is_main_process:
                save_model(out_dir / "best.safetensors", net, _model_config(cfg, row))
        else:
            run["bad_epochs"] += 1
        run["history"].append(row)
        run.update(epoch=epoch + 1, loss_sum=0.0, n_batches=0)
        data.sampler.skip = 0
        stopped_early = bool(cfg.patience) and run["bad_epochs"] >= cfg.patience
        done = stopped_early or run["epoch"] >= cfg.epochs
        if acc.is_main_process:
            atomic_write_text(
                out_dir / "history.csv", pd.DataFrame(run["history"]).to_csv(index=False)
            )
            acc.print(_summary(row, cfg.epochs, improved), flush=True)
        checkpoint(finished=done)
        if stopped_early:
            acc.print(
                f"early stop: no improvement for {cfg.patience} epochs (best epoch {run['best_epoch']})",
                flush=True,
            )
            break
    history = pd.DataFrame(run["history"])
    if acc.is_main_process:
        _write_metrics(
            out_dir, run, history, cfg, acc, stopped_early, time.perf_counter() - t_start
        )
    acc.wait_for_everyone()
    return history


def _accelerator(cfg: TrainConfig) -> Accelerator:
    amp = cfg.amp
    if amp == "fp16" and (cfg.device == "cpu" or not torch.cuda.is_available()):
        warnings.warn("amp='fp16' needs a CUDA GPU; training in full precision", stacklevel=3)
        amp = "no"
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # accelerate keeps one global state per process; a notebook that trains several
        # models with other amp/device settings needs a fresh one (single process only)
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(
        mixed_precision=amp, gradient_accumulation_steps=cfg.grad_accum, cpu=cfg.device == "cpu"
    )


def _build_loss(cfg: TrainConfig) -> torch.nn.Module:
    from gi_utils.losses import build_loss

    return build_loss(cfg.loss, **cfg.loss_kwargs)


def _check_resumable(cfg: TrainConfig, saved: dict[str, Any], path: Path) -> None:
    now = cfg.to_dict()
    diff = [k for k in now if k not in RESUME_FREE_FIELDS and now[k] != saved.get(k)]
    if diff:
        details = ", ".join(f"{k}: saved {saved.get(k)!r} != now {now[k]!r}" for k in diff)
        raise ValueError(
            f"{path} belongs to another run ({details}); pass resume=False to start over "
            "there, or choose another out_dir"
        )


def _model_config(cfg: TrainConfig, row: dict[str, Any]) -> dict[str, Any]:
    from gi_utils.transforms import NORM_VERSION

    return model_config(
        cfg.arch, cfg.encoder, len(cfg.slice_offsets), len(CLASSES),
        model_kwargs=cfg.model_kwargs, img_size=cfg.img_size, slice_offsets=list(cfg.slice_offsets),
        resize_mode=cfg.resize_mode, threshold=cfg.threshold, min_size=cfg.min_size,
        norm_version=NORM_VERSION,
        epoch=row["epoch"], val_score=row.get("val_score"), val_dice=row.get("val_dice"),
        train_config=cfg.to_dict(),
    )  # fmt: skip


def _summary(row: dict[str, Any], epochs: int, improved: bool) -> str:
    keys = ("train_loss", "val_loss", "val_dice", "val_hausdorff", "val_score")
    figures = " ".join(f"{k} {row[k]:.4f}" for k in keys if k in row)
    return (f"epoch {row['epoch']}/{epochs} {figures} lr {row['lr']:.2e} "
            f"({row['epoch_time_s']:.1f} s){' *best*' if improved else ''}")  # fmt: skip


def _write_metrics(out_dir, run, history, cfg, acc, stopped_early, seconds) -> None:
    best = (
        history.loc[history["epoch"] == run["best_epoch"]].iloc[0].to_dict()
        if run["best_epoch"] > 0
        else {}
    )
    atomic_write_json(out_dir / "metrics.json", {
        "arch": cfg.arch, "encoder": cfg.encoder, "fold": cfg.fold, "best_epoch": run["best_epoch"],
        "best": best, "final": history.iloc[-1].to_dict() if len(history) else {},
        "epochs_run": len(history), "stopped_early": stopped_early, "train_time_s": seconds,
        "device": str(acc.device), "mixed_precision": acc.mixed_precision, "num_processes": acc.num_processes,
        "effective_batch_size": effective_batch_size(cfg.batch_size, acc.num_processes, cfg.grad_accum),
        "peak_lr": effective_lr(cfg.lr, acc.num_processes, cfg.grad_accum, cfg.scale_lr),
    })  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """``python -m gi_utils.train --arch unet --epochs 2 ...`` (every TrainConfig field)."""
    cfg = parse_args(argv)
    history = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(history.to_string(index=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
