"""Named presets of :class:`~gi_utils.training.config.TrainConfig` values: the one place the
settings of the notebook default, the CPU demo and a Kaggle/Colab GPU are written down.

* ``smoke``: the cheap default of ``02_train`` and the tests (64 px, one short epoch);
* ``demo``: what ``make demo`` trains on a 2-core CPU (128 px, light decoders);
* ``gpu``: one GPU anywhere (320 px, whole epochs, a loader worker per CPU);
* ``kaggle``, ``colab``: the same on a Kaggle or Colab GPU session (16 GB T4s: two on
  Kaggle, one on Colab; about 20 GB of saved output on Kaggle), with the compact cache
  (uint8 images, masks decoded from ``train.csv``: a third of the bytes) and 3-D entries
  sized for 16 GB;
* ``auto`` (the notebooks' default) is not a set of values: it names the preset that fits
  the machine, :func:`machine_preset` (a platform's GPU preset on a GPU, ``smoke`` on a CPU);
* the recipes (:data:`RECIPES`): ``kaggle_levers``, the ``kaggle`` preset with the levers of
  the top solutions combined as their write-ups did, scaled to a Kaggle week (T4 x2), and
  ``kaggle_levers_cls``, its classification-first run; each setting's source and the
  week's plan are in ``docs/levers.md`` (:data:`RECIPE_SOURCES` holds the sources).

A preset is a set of overrides of the TrainConfig defaults, plus per-architecture
overrides (:data:`ARCH_PRESETS`); values given by the user win over both. The configuration
table of ``docs/configuration.md`` is :func:`presets_table`, and a test keeps the two equal.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import pandas as pd

from gi_utils.device import cuda_wanted
from gi_utils.models.registry import find_arch
from gi_utils.paths import platform_name
from gi_utils.training.config import TrainConfig

__all__ = ["PRESETS", "RECIPES", "RECIPE_SOURCES", "recipe_table", "ARCH_PRESETS", "AUTO_PRESET", "PRESET_ENV", "CORES", "TABLE_FIELDS", "machine_preset", "resolve_preset", "available_cpus",
           "preset_values", "with_preset", "preset_config", "presets_table", "config_table"]

#: Environment variable that pins what ``auto`` resolves to (the tests set ``smoke``).
PRESET_ENV = "GI_PRESET"
#: The preset name that stands for "the one that fits this machine" (:func:`machine_preset`).
AUTO_PRESET = "auto"
#: A preset value of ``num_workers`` meaning one loader worker per CPU this process may use
#: (Kaggle: 4 vCPUs, Colab: 2), resolved when the preset is applied.
CORES = "cores"

_GPU: dict[str, Any] = {
    "encoder": "resnet34", "weights": "imagenet", "img_size": 320, "epochs": 20,
    "batch_size": 16, "lr": 2e-3, "cache": "disk", "num_workers": CORES,
    "sample_empty_fraction": 0.5, "max_steps_per_epoch": 0, "min_size": 20,
}  # fmt: skip
#: Kaggle and Colab sessions: the compact cache (3.9 GB instead of 11.8 GB for the whole
#: competition at 320 px, docs/configuration.md), so a session's 20 GB of disk holds two runs.
_PLATFORM_GPU: dict[str, Any] = {**_GPU, "cache_dtype": "uint8", "cache_masks": False}

#: Sources of the recipes' settings (docs/levers.md gives the addresses): setting -> who.
RECIPE_SOURCES: dict[str, str] = {
    "slice_offsets": "3rd place: 5-slice input (2nd place too)",
    "loss": "3rd place: ComboLoss, BCE 0.5 + Dice 0.5 + Lovász 1",
    "mix": "3rd place: CutMix + MixUp", "mix_p": "3rd place: p = 0.33",
    "swa_epochs": "3rd place: SWA over the last epochs with a BN update; 2nd place: SWA over epochs 11-21 of 21",
    "gate": "3rd place: a classification branch beside the segmentation; 1st place: a classifier gate",
    "drop_tail": "1st place: splits_notail, the 5 slices past the last annotated one",
    "resize_mode": "3rd and 2nd places: the body cropped before resizing (a detector there, the image here)",
    "seg_weight": "3rd place: a classification model first, the segmentation model initialised from it",
    "sample_empty_fraction": "1st place: the classifiers trained on every slice",
    "patch_size": "1st place: 3-D SegResNets on 160 px crops, then 20 epochs on 224 px ones",
    "cache_masks": "needed by resize_mode='crop' (the masks are cut to each scan's box in the cache)",
    "epochs": "sized to a Kaggle week here (the 3rd place: 35 epochs; 2nd: 21); the plan in docs/levers.md",
}  # fmt: skip
#: The recipes: presets combining the levers the way the strongest write-ups did, scaled to
#: Kaggle's free week (two T4s, 12-hour sessions, 30 GPU hours; the plan: docs/levers.md).
#: ``kaggle_levers`` trains the segmentation models, each fold started from its own
#: ``kaggle_levers_cls`` run (``-p init_from 'runs/pretrain/<cls run>_fold{fold}'``).
_LEVERS: dict[str, Any] = {
    **_PLATFORM_GPU, "cache_masks": True, "resize_mode": "crop", "slice_offsets": (-2, -1, 0, 1, 2),
    "gate": True, "drop_tail": 5,
}  # fmt: skip
RECIPES: dict[str, dict[str, Any]] = {
    "kaggle_levers": {**_LEVERS, "loss": "bce_dice_lovasz", "mix": "cutmix_mixup", "mix_p": 0.33, "epochs": 20,
                      "swa_epochs": 10},
    "kaggle_levers_cls": {**_LEVERS, "seg_weight": 0.0, "epochs": 5, "sample_empty_fraction": 1.0},
}  # fmt: skip

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "img_size": 64, "epochs": 1, "batch_size": 16, "lr": 2e-3, "cache": "disk",
        "sample_empty_fraction": 0.3, "max_steps_per_epoch": 10,
    },
    "demo": {
        "img_size": 128, "epochs": 4, "batch_size": 16, "lr": 3e-3, "cache": "disk", "n_folds": 3,
        "sample_empty_fraction": 0.5, "max_steps_per_epoch": 60, "min_size": 10,
    },
    "gpu": _GPU,
    "kaggle": _PLATFORM_GPU,
    "colab": _PLATFORM_GPU,
    **RECIPES,
}  # fmt: skip

#: 3-D models on a GPU: the largest patches that fit a 16 GB T4 (fp16 with a
#: gradient scaler, AdamW, the weight average) with a margin, estimated from activation
#: memory measured on the CPU and extrapolated (``python benchmarks/memory_3d.py``: SegResNet
#: about 11.8 GB, UNet about 8.5 GB of a 13.6 GB budget = 16 GB x 0.85; not yet measured on
#: a GPU). Today's ``gpu`` values (batches of 16 patches of 32x320x320) would need ~36 GB.
#: Where a GPU is present the run measures instead (``probe_size``: probe steps of the model
#: choose batch and depth from :data:`~gi_utils.training.feed_plan.SIZES_3D`); these values
#: are the fallback.
_GPU_3D: dict[str, dict[str, Any]] = {
    "segresnet3d": {"weights": None, "batch_size": 2, "patch_depth": 32, "model_kwargs": {"init_filters": 16},
                    "probe_size": True},
    "unet3d": {"weights": None, "batch_size": 4, "patch_depth": 64,
               "model_kwargs": {"channels": [32, 64, 128, 256]}, "probe_size": True},
}  # fmt: skip
#: Sizes a preset's ``probe_size`` would choose: given by the user, they turn it off.
_PROBED = ("batch_size", "patch_depth")

#: Per-architecture overrides of a preset. In the CPU demo UNet and UNet++ use an encoder
#: depth of 4 instead of 5 (dropping the deepest decoder level: UNet++'s nested decoder is
#: otherwise about three times slower per step than UNet) and light decoders; DeepLabV3+,
#: which learns more slowly here, gets more epochs and UNet++, the slowest per step, fewer.
#: The demo trains UNet on every fold of a 3-fold split and DeepLabV3+ on fold 0. 3-D models
#: take batches of 2 patches (a patch of 32 slices holds 32 slices' worth of pixels). On a
#: GPU they train from scratch (no encoder weights) on patches sized for the GPU's memory
#: (:data:`_GPU_3D`, estimated by ``benchmarks/memory_3d.py``).
ARCH_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {
        "segresnet3d": {"batch_size": 2, "patch_depth": 16},
        "unet3d": {"batch_size": 2, "patch_depth": 16},
    },
    "demo": {
        "segresnet3d": {"batch_size": 2, "patch_depth": 32, "epochs": 5},
        "unet": {"model_kwargs": {"encoder_depth": 4, "decoder_channels": [64, 32, 16, 16]}},
        "unetplusplus": {"model_kwargs": {"encoder_depth": 4, "decoder_channels": [64, 32, 16, 16]},
                         "epochs": 3},
        "deeplabv3plus": {"model_kwargs": {"decoder_channels": 128}, "epochs": 5},
    },
    "gpu": _GPU_3D,
    "kaggle": _GPU_3D,
    "colab": _GPU_3D,
    # the 1st place's 3-D round 1 on crops (160 of ~266 px there; 192 of 320 here), round 2 from
    # it on whole slices: -p patch_size 0 -p init_from '<round-1 run>_fold{fold}' -p lr 1e-4 -p epochs 4
    "kaggle_levers": {name: {**v, "patch_size": 192, "drop_tail": 0, "gate": False, "mix": "none", "swa_epochs": 0}
                      for name, v in _GPU_3D.items()},
}  # fmt: skip

#: Rows of the configuration table (``docs/configuration.md``).
TABLE_FIELDS: tuple[str, ...] = (
    "arch", "encoder", "weights", "model_kwargs", "img_size", "epochs", "max_steps_per_epoch",
    "batch_size", "lr", "slice_offsets", "loss", "sample_empty_fraction", "min_size", "amp",
    "ema_decay", "channels_last", "cache", "cache_dtype", "cache_masks", "num_workers", "data_path", "n_folds", "patch_depth", "probe_size",
)  # fmt: skip


def machine_preset() -> str:
    """The preset that fits this machine: ``$GI_PRESET`` when set (the tests pin ``smoke``);
    on a GPU the platform's (``kaggle``, ``colab``, else ``gpu``); on a CPU ``smoke``
    (cheap; the CPU demo is ``demo``, asked for by name)."""
    pinned = os.environ.get(PRESET_ENV)
    if pinned:
        return pinned
    if not cuda_wanted():
        return "smoke"
    platform = platform_name()
    return platform if platform in PRESETS else "gpu"


def resolve_preset(preset: str | None) -> str:
    """``preset`` with :data:`AUTO_PRESET` replaced by :func:`machine_preset` ("" stays "").

    Raises:
        ValueError: an unknown preset, listing the valid names.
    """
    if preset == AUTO_PRESET:
        return machine_preset()
    if preset and preset not in PRESETS:
        raise ValueError(f"preset={preset!r} is not valid; choose one of {AUTO_PRESET}, {', '.join(PRESETS)}")
    return preset or ""


def available_cpus() -> int:
    """CPUs this process may run on (a container's share, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def preset_values(preset: str | None, arch: str = "unet") -> dict[str, Any]:
    """The overrides of ``preset`` for ``arch`` (``None``/``""``: none; ``"auto"``: the
    machine's, :func:`resolve_preset`), with :data:`CORES` replaced by the CPU count.

    Raises:
        ValueError: an unknown preset, listing the valid names.
    """
    preset = resolve_preset(preset)
    if not preset:
        return {}
    spec = find_arch(arch)  # an unknown name: the preset alone, and TrainConfig names the error
    values = {**PRESETS[preset], **(ARCH_PRESETS.get(preset, {}).get(spec.name, {}) if spec else {})}
    if values.get("num_workers") == CORES:
        values["num_workers"] = available_cpus()
    return values


def with_preset(preset: str | None, values: Mapping[str, Any]) -> dict[str, Any]:
    """The TrainConfig values of a run: ``preset``'s (for ``values['arch']``, else the
    default architecture), then ``values`` over them. The one merge of a preset: the
    command line, ``02_train``'s parameters and :func:`preset_config` call it. A
    ``batch_size`` or ``patch_depth`` in ``values`` turns a preset's ``probe_size`` off.

    Raises:
        ValueError: an unknown preset, listing the valid names.
    """
    merged = {**preset_values(preset, str(values.get("arch", TrainConfig.arch))), **values}
    if merged.get("probe_size") and "probe_size" not in values and any(k in values for k in _PROBED):
        merged["probe_size"] = False  # the user's batch_size / patch_depth, not the probe's
    return merged


def preset_config(preset: str | None = "smoke", **values: Any) -> TrainConfig:
    """A validated TrainConfig: the defaults, then ``preset`` (for ``values['arch']``),
    then ``values``."""
    return TrainConfig.from_dict(with_preset(preset, values))


def _cell(value: Any) -> str:
    text = "`None`" if value is None else f"`{value!r}`".replace("'", '"')
    return text.replace("|", "\\|")


def presets_table(fields: tuple[str, ...] = TABLE_FIELDS) -> str:
    """Markdown: one row per field, its help, the TrainConfig default and each machine preset's
    value (per-architecture values of a preset listed in its cell); the recipes have their own
    table, with sources, in docs/levers.md."""
    base = TrainConfig()
    machine = {name: values for name, values in PRESETS.items() if name not in RECIPES}
    head = ["parameter", "what it does", "default", *(f"`{p}`" for p in machine)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in fields:
        cells = [f"`{name}`", TrainConfig.help(name).replace("|", "\\|"), _cell(getattr(base, name))]
        for preset, values in machine.items():
            own = _cell(values[name]) if name in values else ""
            per_arch = [f"{arch}: {_cell(v[name])}" for arch, v in ARCH_PRESETS.get(preset, {}).items()
                        if name in v]  # fmt: skip
            cells.append("; ".join(x for x in [own, *per_arch] if x) or "·")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def recipe_table(base: str = "kaggle") -> str:
    """Markdown: the settings in which the recipes differ from the ``base`` preset, each
    recipe's value and its source (:data:`RECIPE_SOURCES`); docs/levers.md holds it."""
    default = TrainConfig()
    names = sorted({k for values in RECIPES.values() for k, v in values.items()
                    if PRESETS[base].get(k, getattr(default, k)) != v}, key=[f.name for f in fields(TrainConfig)].index)  # fmt: skip
    head = ["setting", *(f"`{r}`" for r in RECIPES), f"`{base}`", "source"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        base_value = PRESETS[base].get(name, getattr(default, name))
        cells = [_cell(values.get(name, base_value)) for values in RECIPES.values()]
        lines.append(f"| `{name}` | " + " | ".join([*cells, _cell(base_value), RECIPE_SOURCES[name]]) + " |")
    return "\n".join(lines) + "\n"


def config_table(cfg: TrainConfig, fields: tuple[str, ...] = ("fold", *TABLE_FIELDS)) -> pd.DataFrame:
    """The main settings of ``cfg`` next to the TrainConfig defaults (for a notebook)."""
    base = TrainConfig()
    rows = [{"parameter": n, "value": repr(getattr(cfg, n)), "default": repr(getattr(base, n))} for n in fields]
    return pd.DataFrame(rows).set_index("parameter")
