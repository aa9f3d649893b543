"""Named presets of :class:`~gi_utils.training.config.TrainConfig` values: the one place the
settings of the notebook default, the CPU demo and a Kaggle/Colab GPU are written down.

* ``smoke``: the cheap default of ``02_train`` and the tests (64 px, one short epoch);
* ``demo``: what ``make demo`` trains on a 2-core CPU (128 px, light decoders);
* ``gpu``: suggested settings on one Kaggle/Colab GPU (320 px, whole epochs).

A preset is a set of overrides of the TrainConfig defaults, plus per-architecture
overrides (:data:`ARCH_PRESETS`); values given by the user win over both. The README's
configuration table is :func:`presets_table`, and a test keeps the two equal.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from gi_utils.training.config import TrainConfig

__all__ = ["PRESETS", "ARCH_PRESETS", "TABLE_FIELDS", "preset_values", "preset_config", "presets_table",
           "config_table"]

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "img_size": 64, "epochs": 1, "batch_size": 16, "lr": 2e-3, "cache": "disk",
        "sample_empty_fraction": 0.3, "max_steps_per_epoch": 10,
    },
    "demo": {
        "img_size": 128, "epochs": 4, "batch_size": 16, "lr": 3e-3, "cache": "disk", "n_folds": 3,
        "sample_empty_fraction": 0.5, "max_steps_per_epoch": 60, "min_size": 10,
    },
    "gpu": {
        "encoder": "resnet34", "weights": "imagenet", "img_size": 320, "epochs": 20,
        "batch_size": 16, "lr": 2e-3, "cache": "disk", "num_workers": 2,
        "sample_empty_fraction": 0.5, "max_steps_per_epoch": 0, "min_size": 20,
    },
}  # fmt: skip

#: Per-architecture overrides of a preset. In the CPU demo UNet and UNet++ use an encoder
#: depth of 4 instead of 5 (dropping the deepest decoder level: UNet++'s nested decoder is
#: otherwise about three times slower per step than UNet) and light decoders; DeepLabV3+,
#: which learns more slowly here, gets more epochs and UNet++, the slowest per step, fewer.
#: The demo trains UNet on every fold of a 3-fold split and DeepLabV3+ on fold 0. 3-D models
#: take batches of 2 patches (a patch of 32 slices holds 32 slices' worth of pixels).
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
}  # fmt: skip

#: Rows of the README's configuration table.
TABLE_FIELDS: tuple[str, ...] = (
    "arch", "encoder", "weights", "model_kwargs", "img_size", "epochs", "max_steps_per_epoch",
    "batch_size", "lr", "slice_offsets", "loss", "sample_empty_fraction", "min_size", "amp",
    "ema_decay", "channels_last", "cache", "num_workers", "n_folds", "patch_depth",
)  # fmt: skip


def preset_values(preset: str | None, arch: str = "unet") -> dict[str, Any]:
    """The overrides of ``preset`` for ``arch`` (``None``/``""``: none).

    Raises:
        ValueError: an unknown preset, listing the valid names.
    """
    if not preset:
        return {}
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r} is not valid; choose one of {', '.join(PRESETS)}")
    return {**PRESETS[preset], **ARCH_PRESETS.get(preset, {}).get(arch.lower(), {})}


def preset_config(preset: str | None = "smoke", **values: Any) -> TrainConfig:
    """A validated TrainConfig: the defaults, then ``preset`` (for ``values['arch']``),
    then ``values``."""
    arch = str(values.get("arch", TrainConfig.arch))
    return TrainConfig.from_dict({**preset_values(preset, arch), **values})


def _cell(value: Any) -> str:
    text = "`None`" if value is None else f"`{value!r}`".replace("'", '"')
    return text.replace("|", "\\|")


def presets_table(fields: tuple[str, ...] = TABLE_FIELDS) -> str:
    """Markdown: one row per field, its help, the TrainConfig default and each preset's value
    (per-architecture values of a preset listed in its cell)."""
    base = TrainConfig()
    head = ["parameter", "what it does", "default", *(f"`{p}`" for p in PRESETS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in fields:
        cells = [f"`{name}`", TrainConfig.help(name).replace("|", "\\|"), _cell(getattr(base, name))]
        for preset, values in PRESETS.items():
            own = _cell(values[name]) if name in values else ""
            per_arch = [f"{arch}: {_cell(v[name])}" for arch, v in ARCH_PRESETS.get(preset, {}).items()
                        if name in v]  # fmt: skip
            cells.append("; ".join(x for x in [own, *per_arch] if x) or "·")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def config_table(cfg: TrainConfig, fields: tuple[str, ...] = ("fold", *TABLE_FIELDS)) -> pd.DataFrame:
    """The main settings of ``cfg`` next to the TrainConfig defaults (for a notebook)."""
    base = TrainConfig()
    rows = [{"parameter": n, "value": repr(getattr(cfg, n)), "default": repr(getattr(base, n))} for n in fields]
    return pd.DataFrame(rows).set_index("parameter")
