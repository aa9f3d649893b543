"""The settings of a training run: :class:`TrainConfig` and its validation.

Every field is a parameter of ``02_train.ipynb`` and a flag of ``python -m gi_utils.training``
(its help text, ``TrainConfig.help(name)``, feeds ``--help`` and the table of ``docs/configuration.md``); an
unknown name or a bad value raises a ``ValueError`` that names the field. Named presets of
values (``smoke``, ``demo``, ``gpu``) live beside it in :mod:`gi_utils.training.presets`.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
from accelerate.utils import is_tensorboard_available, is_wandb_available

from gi_utils.constants import CLASSES
from gi_utils.data.augment import build_transforms
from gi_utils.data.cache import CACHE_DTYPES
from gi_utils.data.gpu_augment import GpuAugment
from gi_utils.data.preprocess import RESIZE_MODES
from gi_utils.device import AMP_MODES, DEVICES
from gi_utils.losses import LOSSES
from gi_utils.models.registry import arch_names, check_encoder, check_img_size, find_arch
from gi_utils.training.feed_plan import DATA_PATHS
from gi_utils.training.levers import check_levers
from gi_utils.training.scaling import LR_SCALING

__all__ = ["CACHE_MODES", "LOGGERS", "TrainConfig"]

CACHE_MODES: tuple[str, ...] = ("none", "memory", "disk")
#: Training-log trackers (accelerate's): nothing is uploaded unless "wandb" is asked for.
LOGGERS: tuple[str, ...] = ("none", "tensorboard", "wandb")
_BAD_PROJECT_CHARS = "/\\#?%:"


def _f(default: Any, help: str) -> Any:  # noqa: A002 - the argparse word
    """A dataclass field with its help text (mutable defaults copied per instance)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda d=default: json.loads(json.dumps(d)), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every setting of a training run; validated on creation (``ValueError`` names the field).

    The fields and what they do are listed with :meth:`help` (and ``python -m
    gi_utils.training --help``); the values of the named presets with
    :func:`gi_utils.training.presets.preset_config`. ``arch`` is normalised here, once
    (lower case), and its registry entry looked up once: :attr:`spec` (an attribute, not a
    field), which the stages ask whether the model is 2.5D or 3-D.
    """

    # model
    arch: str = _f("unet", "architecture: a 2.5D smp name (gi_utils.models.ARCHITECTURES) or a 3-D MONAI one "
                   "(segresnet3d, unet3d)")
    encoder: str = _f("resnet18", "smp encoder (resnet34, efficientnet-b4, ...) or tu-NAME for a timm model "
                      "(3-D models have none)")
    weights: str | None = _f(None, "encoder weights: None (random), imagenet (needs internet) or a local file")
    model_kwargs: dict[str, Any] = _f({}, "extra smp arguments, e.g. {\"decoder_channels\": [64, 32, 16, 16]}")
    gate: bool = _f(False, "a classifier gate: per-slice organ-presence head (smp aux_params), joint BCE")
    gate_weight: float = _f(0.2, "weight of the gate's BCE in the training loss")
    # data
    data_dir: str | None = _f(None, "data root; None: resolved once where the run starts (gi_utils.paths)")
    fold: int = _f(0, "validation fold, 0 .. n_folds - 1; -1 trains on all cases (no validation)")
    n_folds: int = _f(5, "folds, grouped by case and stratified on empty slices")
    folds_seed: int = _f(42, "seed of the fold assignment (the same for every architecture)")
    folds_dir: str | None = _f(None, "folder of the folds files; None: <out_dir>/../folds")
    drop_bad_cases: bool = _f(True, "drop the case-days with known annotation problems")
    img_size: int = _f(128, "model input side in pixels, a multiple of 32 (320-384 on a GPU)")
    resize_mode: str = _f("resize", "resize (stretch each slice to img_size), pad (centred) or crop (to the scan's "
                          "body box, then resized: the 2nd/3rd places' body crop; mapped back at inference)")
    slice_offsets: tuple[int, ...] = _f((-2, 0, 2), "2.5D: neighbour slices stacked as channels")
    patch_depth: int = _f(32, "3-D: consecutive slices per training patch and per sliding window")
    probe_size: bool = _f(False, "3-D on a GPU: batch_size and patch_depth from probe steps of the model, the "
                          "largest of a short list that fits the free memory with a margin (printed, recorded); "
                          "the values given on a CPU")
    patches_per_volume: int = _f(4, "3-D: training patches drawn from each scan per epoch")
    sw_overlap: float = _f(0.5, "3-D: overlap of the sliding windows along the slice axis (validation)")
    augment: bool = _f(True, "training augmentation (flips, affine, distortions, dropout)")
    augment_kwargs: dict[str, Any] = _f({}, "per-transform overrides, e.g. {\"HorizontalFlip\": {\"p\": 0.0}}")
    cache: str = _f("memory", "none | memory | disk (memory-mapped, shared by runs)")
    cache_dir: str | None = _f(None, "folder of the disk cache; None: <out_dir>/../cache")
    cache_dtype: str = _f("float16", "float16 (exact) | uint8 (half the disk: for 320 px and more on Kaggle)")
    cache_masks: bool = _f(True, "keep the masks in the cache; False: decode them from train.csv per sample")
    num_workers: int = _f(0, "DataLoader worker processes (the GPU presets: one per CPU, 4 on Kaggle, 2 on Colab)")
    data_path: str = _f("auto", "auto | device (the cache on the GPU, augmentation in batches there: kornia for 2.5D, "
                        "torch for 3-D patches) | workers (DataLoader workers, albumentations or MONAI); "
                        "auto: device on CUDA when the slices fit beside a probe step of the model")
    # optimisation
    epochs: int = _f(10, "epochs")
    batch_size: int = _f(16, "samples per step and process")
    lr: float = _f(2e-3, "AdamW peak learning rate (warm-up, then cosine)")
    weight_decay: float = _f(1e-4, "AdamW weight decay")
    warmup_epochs: float = _f(0.5, "linear warm-up, in epochs")
    grad_accum: int = _f(1, "gradient accumulation steps")
    scale_lr: str = _f("none", "none | linear | sqrt: scale lr to batch_size x processes x grad_accum")
    loss: str = _f("bce_dice", "bce_dice | bce_tversky | bce_dice_lovasz | bce | dice | tversky")
    loss_kwargs: dict[str, Any] = _f({}, "arguments of the loss, e.g. {\"bce_weight\": 0.3}")
    ema_decay: float = _f(0.99, "validate and keep an exponential moving average of the weights; 0 is off")
    amp: str = _f("auto", "auto | no | fp16 | bf16 (auto: fp16/bf16 on a GPU, bf16 on a CPU that has it)")
    channels_last: bool = _f(True, "NHWC memory layout (faster convolutions on CPUs and tensor cores)")
    compile: bool = _f(False, "torch.compile the model (opt-in; no gain on small CPUs)")
    device: str = _f("auto", "auto (CUDA when present) | cpu")
    # validation
    threshold: float = _f(0.5, "probability threshold of validation and the default post-processing")
    min_size: int = _f(0, "remove predicted components under this many pixels (at img_size) before scoring")
    patience: int = _f(0, "early stop after this many epochs without a better score; 0 is off")
    # the levers of the top solutions (docs/levers.md: who used each, what they reported)
    drop_tail: int = _f(0, "leave out of training the N slices past each scan's last annotated one (the 1st "
                        "place's splits_notail: 5); 2.5D only; 0 is off")
    mix: str = _f("none", "none | cutmix | mixup | cutmix_mixup: mix a batch with a shuffled copy of itself, "
                  "masks as images (the 3rd place: cutmix_mixup)")
    mix_p: float = _f(0.33, "probability that a batch is mixed when mix is on (the 3rd place: 0.33)")
    swa_epochs: int = _f(0, "average the validated weights of the last N epochs (SWA; BatchNorm statistics "
                         "recomputed), validated and kept like an epoch's; 0 is off")
    init_from: str | None = _f(None, "start from an earlier run's weights: a run folder or a .safetensors model "
                               "(all weights when the models match, else the encoder's)")
    patch_size: int = _f(0, "3-D: in-plane side of the training patches, a random window of the slices (the 1st "
                         "place: 160 px, then a short fine-tune on larger ones, init_from); 0: whole slices")
    seg_weight: float = _f(1.0, "weight of the segmentation loss; 0 with gate=True trains the classifier alone "
                           "(the 3rd place's classification model, then init_from it)")
    # cheap runs
    sample_empty_fraction: float = _f(1.0, "share of the slices without any organ drawn each epoch")
    max_steps_per_epoch: int = _f(0, "cut each epoch to this many steps; 0 is the whole epoch")
    # bookkeeping
    out_dir: str = _f("runs/unet", "run folder (checkpoints, history, metrics, out-of-fold files)")
    seed: int = _f(42, "seed of weights, data order and augmentation")
    deterministic: bool = _f(True, "deterministic kernels (torch, cuDNN, cuBLAS); docs/determinism.md: what repeats on CUDA")
    save_every_steps: int = _f(0, "also checkpoint every this many steps; 0: after each epoch only")
    resume: bool = _f(True, "continue from out_dir/last.pt when present")
    time_limit: float | None = _f(None, "hours this session may train, from its start: a step or validation that "
                                 "would cross it is not begun, last.pt is saved and the run stops (run it again, "
                                 "in the next session, to continue); None: the platform's, 12 h Kaggle and Colab "
                                 "sessions (9 h interactive Kaggle) less 30 min for saving and the last cells: "
                                 "11.5 (8.5); 0: none")
    progress: bool = _f(True, "progress bars")
    log_with: str = _f("none", "none | tensorboard (event files in out_dir/logs) | wandb (key: Kaggle secret or "
                       "env WANDB_API_KEY, or `wandb login`)")
    log_project: str = _f("gi-tract-segmentation", "W&B project; each run is named after its folder and "
                          "grouped by model")

    def __post_init__(self) -> None:
        for f in fields(self):
            setattr(self, f.name, _coerce(f.name, f.type, getattr(self, f.name)))
        spec = find_arch(self.arch)
        if spec is None:
            raise ValueError(f"arch={self.arch!r} is not valid; choose one of {', '.join(arch_names())}")
        self.arch, self.spec = spec.name, spec
        if spec.is_3d:
            self._check_3d()
        try:
            check_encoder(self.encoder)
        except KeyError as err:
            raise ValueError(f"encoder: {err.args[0]}") from None
        _check_choice("loss", self.loss, tuple(LOSSES))
        _check_choice("amp", self.amp, AMP_MODES)
        _check_choice("cache", self.cache, CACHE_MODES)
        _check_choice("device", self.device, DEVICES)
        _check_choice("resize_mode", self.resize_mode, RESIZE_MODES)
        _check_choice("scale_lr", self.scale_lr, LR_SCALING)
        _check_choice("log_with", self.log_with, LOGGERS)
        _check_choice("cache_dtype", self.cache_dtype, CACHE_DTYPES)
        _check_choice("data_path", self.data_path, DATA_PATHS)
        if self.data_path == "device" and self.cache == "none":
            raise ValueError("data_path='device' needs a cache (cache='memory' or 'disk'); got cache='none'")
        _check_logger(self.log_with, self.log_project)
        check_img_size(self.img_size)
        if self.n_folds < 2:
            raise ValueError(f"n_folds must be >= 2, got {self.n_folds}")
        if not -1 <= self.fold < self.n_folds:
            raise ValueError(
                f"fold must be in 0..{self.n_folds - 1} (n_folds={self.n_folds}), or -1 for all "
                f"cases, got {self.fold}"
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
            "gate_weight",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.time_limit is not None and not (self.time_limit >= 0 and math.isfinite(self.time_limit)):
            raise ValueError(f"time_limit must be hours >= 0 (0: none) or None (the platform's), got {self.time_limit}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1) (0 = off), got {self.ema_decay}")
        if self.fold == -1 and self.patience:
            raise ValueError("patience needs a validation fold; fold=-1 trains on all cases")
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
            try:  # a wrong transform or argument name fails here, before any work
                build_transforms(self.img_size, train=True, overrides=self.augment_kwargs)
            except (KeyError, ValueError, TypeError) as err:
                msg = err.args[0] if err.args else str(err)
                raise ValueError(f"augment_kwargs: {msg}") from None
        check_levers(self)
        if self.augment_kwargs and self.data_path == "device":
            try:  # and one the device augmentation cannot honour
                GpuAugment(self.img_size, self.augment_kwargs)
            except (KeyError, ValueError) as err:
                raise ValueError(f"augment_kwargs (data_path='device'): {err.args[0]}") from None

    @property
    def in_channels(self) -> int:
        """Input channels: the 2.5D neighbours, or 1 for a 3-D model."""
        return self.spec.in_channels(self.slice_offsets)

    def _check_3d(self) -> None:
        stride = self.spec.depth_stride(self.model_kwargs)
        if self.patch_depth < stride or self.patch_depth % stride:
            raise ValueError(f"patch_depth must be a positive multiple of {stride} for {self.arch}, "
                             f"got {self.patch_depth}")  # fmt: skip
        if self.patches_per_volume < 1:
            raise ValueError(f"patches_per_volume must be >= 1, got {self.patches_per_volume}")
        if not 0 <= self.sw_overlap < 1:
            raise ValueError(f"sw_overlap must be in [0, 1), got {self.sw_overlap}")
        for name, bad, why in (("gate", self.gate, "the classifier gate is a 2.5D head"),
                               ("weights", self.weights is not None, "3-D models train from scratch"),
                               ("augment_kwargs", bool(self.augment_kwargs), "they name 2.5D transforms"),
                               ("cache", self.cache == "none", "3-D patches are read from the cache")):  # fmt: skip
            if bad:
                raise ValueError(f"{name}={getattr(self, name)!r} does not apply to the 3-D {self.arch}: {why}")

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

    @property
    def build_kwargs(self) -> dict[str, Any]:
        """The smp arguments of the model: ``model_kwargs`` plus the gate head's ``aux_params``."""
        gate = {"aux_params": {"classes": len(CLASSES), "dropout": 0.2}} if self.gate else {}
        return {**self.model_kwargs, **gate}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists); ``from_dict(to_dict())`` gives an equal config."""
        d = asdict(self)
        d["slice_offsets"] = list(self.slice_offsets)
        return d

    def replace(self, **changes: Any) -> TrainConfig:
        """A new, validated config with ``changes`` (this one is left as it is)."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    @staticmethod
    def help(name: str | None = None) -> str | dict[str, str]:
        """The help text of one field, or ``{field: help}`` of all."""
        texts = {f.name: f.metadata["help"] for f in fields(TrainConfig)}
        return texts if name is None else texts[name]


def _check_logger(name: str, project: str) -> None:
    """A tracker that is asked for must be installed; the W&B project name must be valid.

    The W&B key is looked for where the run starts (:func:`gi_utils.training.tracking.wandb_key`:
    reading a Kaggle secret is a request, not something to do whenever a config is made).
    """
    if name == "tensorboard" and not is_tensorboard_available():
        raise ValueError("log_with='tensorboard' needs the tensorboard package: pip install tensorboard")
    if name == "wandb" and not is_wandb_available():
        raise ValueError("log_with='wandb' needs the wandb package: pip install wandb")
    bad = sorted(set(project) & set(_BAD_PROJECT_CHARS))
    if not project or bad or len(project) > 128:
        raise ValueError(f"log_project={project!r} is not a valid W&B project name: 1 to 128 characters, "
                         f"none of {' '.join(_BAD_PROJECT_CHARS)}")  # fmt: skip


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
