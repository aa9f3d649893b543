"""Prediction: whole volumes in 2.5D, flip TTA, ensembles, probabilities at each scan's size.

The input of a model is built exactly as in training: :func:`gi_utils.data.preprocess_volume`
(per-scan normalisation + resize to the model's ``img_size``) and the neighbours at the
model's ``slice_offsets`` stacked as channels, clamped at the ends of the scan (what
:class:`gi_utils.data.SliceDataset` does). Everything a model needs is read from the
config saved with it (:func:`gi_utils.models.load_model`), so a submission notebook only
passes the ``.safetensors`` paths.

Ensembles average probabilities: first over the flips of TTA, then over the models; the
models that share an input (``img_size``, ``resize_mode``, ``slice_offsets``) are averaged
at that resolution, then every group's average is resized to the scan's own (H, W)
(linear) and averaged there. Thresholds and the removal of small connected components
(:mod:`gi_utils.inference.postprocessing`) act on those probabilities.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from gi_utils.constants import NUM_CLASSES
from gi_utils.data.images import iter_volumes, read_volume
from gi_utils.data.preprocess import NORM_VERSION, preprocess_volume, restore_size
from gi_utils.device import default_device
from gi_utils.models.io import load_model
from gi_utils.progress import progress_bar

__all__ = [
    "TTA_FLIPS",
    "Model",
    "load_models",
    "stack_slices",
    "predict_probs",
    "predict_volume",
    "predict_volumes",
]

#: Flip TTA: name -> axes of an (N, C, S, S) batch.
TTA_FLIPS: dict[str, tuple[int, ...]] = {"hflip": (3,), "vflip": (2,), "hvflip": (2, 3)}

Model = tuple[nn.Module, dict]


def load_models(paths: Sequence[str | os.PathLike] | str | os.PathLike, device=None) -> list[Model]:
    """``load_model`` each path (a single path is fine); warns on an old normalisation."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    device = device or default_device()
    models = []
    for path in paths:
        model, config = load_model(path, device)
        if config.get("norm_version", NORM_VERSION) != NORM_VERSION:
            warnings.warn(
                f"{path} was trained with normalisation version {config['norm_version']}, "
                f"this gi_utils uses {NORM_VERSION}: predictions may be off",
                stacklevel=2,
            )
        models.append((model, config))
    if not models:
        raise ValueError("no model paths given")
    return models


def _tta_names(tta: bool | str | Sequence[str]) -> list[str]:
    if tta is True:
        names = ["hflip"]
    elif not tta:
        names = []
    else:
        names = [tta] if isinstance(tta, str) else list(tta)
    bad = [n for n in names if n not in TTA_FLIPS]
    if bad:
        raise ValueError(f"unknown TTA {bad}; valid: {list(TTA_FLIPS)} (or True for hflip)")
    return names


# --------------------------------------------------------------------------- prediction
def stack_slices(vol: np.ndarray, offsets: Sequence[int]) -> np.ndarray:
    """2.5D input: (D, S, S) -> (D, C, S, S), channel k = slice ``d + offsets[k]`` clamped."""
    d = np.arange(len(vol))
    idx = np.clip(d[:, None] + np.asarray(offsets)[None, :], 0, len(vol) - 1)
    return vol[idx]


@torch.no_grad()
def predict_probs(
    model: nn.Module, images: np.ndarray, batch_size: int = 16, tta=False, device=None
) -> np.ndarray:
    """Sigmoid probabilities of one model, averaged over the identity and the TTA flips.

    Args:
        images: float32 (N, C, S, S).
        tta: ``False``, ``True`` (= ``"hflip"``) or names from :data:`TTA_FLIPS`.

    Returns:
        float32 (N, classes, S, S).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    flips = [()] + [TTA_FLIPS[n] for n in _tta_names(tta)]
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(device)
        total = None
        for f in flips:
            with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                logits = model(x.flip(f) if f else x)
            p = logits.float().sigmoid()
            p = p.flip(f) if f else p
            total = p if total is None else total + p
        out.append((total / len(flips)).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, NUM_CLASSES, *images.shape[2:]), np.float32)


def _input_key(config: dict) -> tuple:
    return (
        int(config["img_size"]),
        config.get("resize_mode", "resize"),
        tuple(config["slice_offsets"]),
    )


def predict_volume(
    models: Sequence[Model], vol: np.ndarray, *, tta=False, batch_size: int = 16, device=None
) -> np.ndarray:
    """Ensemble probabilities of one scan at its own resolution.

    Args:
        models: ``(model, config)`` pairs from :func:`load_models`.
        vol: uint16 (D, H, W), the raw scan.

    Returns:
        float32 (D, H, W, 3), channels in :data:`~gi_utils.constants.CLASSES` order.
    """
    groups: dict[tuple, list[nn.Module]] = {}
    for model, config in models:
        groups.setdefault(_input_key(config), []).append(model)
    total = np.zeros((*vol.shape, NUM_CLASSES), np.float32)
    for (size, mode, offsets), members in groups.items():
        images = stack_slices(preprocess_volume(vol, size, mode), offsets)
        probs = sum(predict_probs(m, images, batch_size, tta, device) for m in members)
        total += restore_size(np.moveaxis(probs, 1, -1), vol.shape[1:], mode)  # sum of members
    return total / len(models)


def predict_volumes(
    models: Sequence[Model],
    meta: pd.DataFrame,
    *,
    tta=False,
    batch_size: int = 16,
    device=None,
    progress: bool = True,
) -> Iterator[tuple[str, pd.DataFrame, np.ndarray]]:
    """Yield ``(case_day, rows, probs float32 (D, H, W, 3))`` per scan of ``meta``, with a bar."""
    scans = list(iter_volumes(meta))
    for case_day, rows in progress_bar(scans, "predict", progress, unit="scan"):
        yield (
            case_day,
            rows,
            predict_volume(
                models, read_volume(rows), tta=tta, batch_size=batch_size, device=device
            ),
        )


