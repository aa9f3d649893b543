"""The settings of a training run: :class:`TrainConfig`, its validation and its command line.

Every field is a parameter of ``02_train.ipynb`` and a flag of ``python -m gi_utils.train``;
an unknown name or a bad value raises a ``ValueError`` that names the field.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import warnings
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from gi_utils.distributed import LR_SCALING
from gi_utils.models import ARCHITECTURES, check_encoder, check_img_size
from gi_utils.transforms import RESIZE_MODES

__all__ = [
    "AMP_MODES", "CACHE_MODES", "DEVICES", "TrainConfig", "config_parser", "parse_args", "resolve_amp",
]  # fmt: skip

#: Mixed precision: "auto" = fp16 or bf16 on a GPU (bf16 where it is supported), bf16 on a
#: CPU with native bf16 instructions (AVX512-BF16 or AMX), full precision elsewhere.
AMP_MODES: tuple[str, ...] = ("no", "fp16", "bf16", "auto")
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
    (2.5D channels), ``augment`` with ``augment_kwargs`` (per-transform overrides of the
    default augmentation, e.g. ``{"HorizontalFlip": {"p": 0.0}}``; see
    :func:`gi_utils.transforms.build_transforms`), ``cache`` ("none"|"memory"|"disk", disk under
    ``cache_dir``, default ``<out_dir>/../cache`` so runs share it), ``num_workers``.
    Optimisation: ``epochs``, ``batch_size`` (per process), ``lr``, ``weight_decay``,
    ``warmup_epochs``, ``grad_accum``, ``scale_lr`` ("none"|"linear"|"sqrt": scale ``lr``, set
    for one process, to the effective batch ``batch_size x processes x grad_accum``; see
    :func:`gi_utils.distributed.effective_lr`), ``loss`` (a name of
    :data:`gi_utils.losses.LOSSES`) with ``loss_kwargs``,
    ``ema_decay`` (0 = off; 0.99: validation and the best checkpoint use an
    exponential moving average of the weights, with timm's warm-up, which steadies short
    runs), ``amp`` ("no"|"fp16"|"bf16"|"auto", see :func:`resolve_amp`), ``channels_last`` (NHWC
    memory layout of model and batches: faster convolutions on CPUs and tensor cores),
    ``compile`` (torch.compile, opt-in), ``device`` ("auto": CUDA when present | "cpu"). Validation: ``threshold`` on probabilities,
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
    augment_kwargs: dict[str, Any] = field(default_factory=dict)
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
    ema_decay: float = 0.99
    amp: str = "auto"
    channels_last: bool = True
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
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1) (0 = off), got {self.ema_decay}")
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if not 0 <= self.sample_empty_fraction <= 1:
            raise ValueError(
                f"sample_empty_fraction must be in [0, 1], got {self.sample_empty_fraction}"
            )
        if not self.slice_offsets:
            raise ValueError("slice_offsets must hold at least one offset, e.g. (0,) or (-2, 0, 2)")
        for name in ("model_kwargs", "loss_kwargs", "augment_kwargs"):
            try:
                json.dumps(getattr(self, name))
            except TypeError as err:
                raise ValueError(f"{name} must be JSON-serialisable: {err}") from None
        if self.augment_kwargs:
            from gi_utils.transforms import build_transforms

            try:  # a wrong transform or argument name fails here, before any work
                build_transforms(self.img_size, train=True, overrides=self.augment_kwargs)
            except (KeyError, ValueError, TypeError) as err:
                msg = err.args[0] if err.args else str(err)
                raise ValueError(f"augment_kwargs: {msg}") from None

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


def resolve_amp(amp: str, cuda: bool) -> str:
    """The mixed precision a run uses: ``amp`` with "auto" (and fp16 without a GPU) resolved.

    "auto" gives bf16 on a GPU that supports it, fp16 on other GPUs (T4, P100), bf16 on a
    CPU with native bf16 instructions (about 2x faster there) and "no" on other CPUs,
    where bf16 is emulated and slower. "fp16" without CUDA warns and gives "no".
    """
    import torch

    if amp == "auto":
        if cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        native = (getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
                  or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())  # fmt: skip
        return "bf16" if native else "no"
    if amp == "fp16" and not cuda:
        warnings.warn("amp='fp16' needs a CUDA GPU; training in full precision", stacklevel=3)
        return "no"
    return amp


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
