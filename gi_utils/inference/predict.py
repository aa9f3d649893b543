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
from gi_utils.data.preprocess import NORM_VERSION, preprocess_volume, restore_size, scan_box
from gi_utils.device import default_device, inference_autocast
from gi_utils.inference.blending import blend
from gi_utils.inference.sliding_window import SlidingWindow, predict_probs_3d
from gi_utils.models.io import ModelConfig, load_model
from gi_utils.models.registry import split_outputs
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

#: Flip TTA: name -> axes (counted from the end: the same for a 2.5D (N, C, S, S) batch
#: and a 3-D (N, C, D, S, S) one).
TTA_FLIPS: dict[str, tuple[int, ...]] = {"hflip": (-1,), "vflip": (-2,), "hvflip": (-2, -1)}

Model = tuple[nn.Module, ModelConfig]


def load_models(paths: Sequence[str | os.PathLike] | str | os.PathLike, device=None,
                channels_last: bool = False) -> list[Model]:  # fmt: skip
    """``load_model`` each path (a single path is fine); warns on an old normalisation.

    ``channels_last``: NHWC weights (with ``amp="bf16"`` about 3x faster on a CPU with AMX,
    ``benchmarks/bench_infer.py``).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    device = device or default_device()
    models = []
    for path in paths:
        model, config = load_model(path, device)
        if config.norm_version not in (None, NORM_VERSION):
            warnings.warn(
                f"{path} was trained with normalisation version {config.norm_version}, "
                f"this gi_utils uses {NORM_VERSION}: predictions may be off",
                stacklevel=2,
            )
        if channels_last:
            model = model.to(memory_format=config.spec.memory_format)
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
    model: nn.Module, images: np.ndarray, batch_size: int = 16, tta=False, device=None, amp: str | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Sigmoid probabilities of one model, averaged over the identity and the TTA flips.

    Args:
        images: float32 (N, C, S, S).
        tta: ``False``, ``True`` (= ``"hflip"``) or names from :data:`TTA_FLIPS`.
        amp: autocast dtype, ``"no"`` | ``"fp16"`` | ``"bf16"`` | ``"auto"`` (as training:
            :func:`gi_utils.device.resolve_amp`); ``None``: fp16 on CUDA, full precision on
            the CPU (``benchmarks/bench_infer.py`` measures what mixed precision changes).

    Returns:
        ``(probs float32 (N, classes, S, S), gate float32 (N, classes) or None)``; the gate
        is the classifier head's probability per slice and class (models with a gate).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    flips = [()] + [TTA_FLIPS[n] for n in _tta_names(tta)]
    autocast = inference_autocast(device, amp)  # resolved once, entered per forward pass
    model.eval()
    out, gates = [], []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(device)
        total = gate_total = None
        for f in flips:
            with autocast:
                seg, gate = split_outputs(model(x.flip(f) if f else x))
            p = seg.float().sigmoid()
            p = p.flip(f) if f else p
            total = p if total is None else total + p
            if gate is not None:
                g = gate.float().sigmoid()
                gate_total = g if gate_total is None else gate_total + g
        out.append((total / len(flips)).cpu().numpy())
        if gate_total is not None:
            gates.append((gate_total / len(flips)).cpu().numpy())
    probs = np.concatenate(out) if out else np.zeros((0, NUM_CLASSES, *images.shape[2:]), np.float32)
    return probs, (np.concatenate(gates) if gates else None)


def _input_key(config: ModelConfig) -> tuple:
    """Members that share this see the same input (3-D models: the scan itself)."""
    if config.spec.is_3d:
        return int(config.img_size), config.resize_mode, None
    return int(config.img_size), config.resize_mode, tuple(config.slice_offsets)


def predict_volume(
    models: Sequence[Model], vol: np.ndarray, *, tta=False, batch_size: int = 16, device=None,
    weights: Sequence[float] | None = None, amp: str | None = None, sliding: SlidingWindow | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:  # fmt: skip
    """Ensemble probabilities of one scan at its own resolution (2.5D and 3-D members).

    Args:
        models: ``(model, config)`` pairs from :func:`load_models`.
        vol: uint16 (D, H, W), the raw scan.
        weights: one weight per model (normalised here); ``None``: equal weights.
        amp: autocast of :func:`predict_probs`.
        sliding: the sliding windows of 3-D members (overlap, blending, where the sum is
            kept); ``None``: :class:`SlidingWindow` defaults with each model's own overlap.

    Returns:
        ``(probs float32 (D, H, W, 3), gate float32 (D, 3) or None)``, channels in
        :data:`~gi_utils.constants.CLASSES` order; the gate is the weighted mean of the
        members that have a classifier head.
    """
    groups: dict[tuple, list[int]] = {}
    for k, (_, config) in enumerate(models):
        groups.setdefault(_input_key(config), []).append(k)
    total = np.zeros((*vol.shape, NUM_CLASSES), np.float32)
    gates: list[np.ndarray | None] = [None] * len(models)

    def run(k: int, pre: np.ndarray, images: np.ndarray | None) -> np.ndarray:
        model, config = models[k]
        if images is None:  # a 3-D model: sliding windows over the scan
            sw = sliding or SlidingWindow(overlap=float(config.sw_overlap))
            flips = [TTA_FLIPS[n] for n in _tta_names(tta)]
            return predict_probs_3d(model, pre, int(config.patch_depth), flips, device, amp, sw)
        p, gates[k] = predict_probs(model, images, batch_size, tta, device, amp)
        return p

    for (size, mode, offsets), ks in groups.items():  # one part of the blend per input: one resize back
        box = scan_box(vol, mode)  # "crop" mode: the scan's body box, both ways
        pre = preprocess_volume(vol, size, mode, box=box)
        images = stack_slices(pre, offsets) if offsets is not None else None
        # the weights are checked before the first model runs
        part, _ = blend(((run(k, pre, images) if k in ks else None, None) for k in range(len(models))), weights,
                        n=len(models))  # fmt: skip
        total += restore_size(np.moveaxis(part, 1, -1), vol.shape[1:], mode, box)  # weighted sum
    return total, blend([(None, g) for g in gates], weights)[1]


def predict_volumes(
    models: Sequence[Model],
    meta: pd.DataFrame,
    *,
    tta=False,
    batch_size: int = 16,
    device=None,
    weights: Sequence[float] | None = None,
    amp: str | None = None,
    sliding: SlidingWindow | None = None,
    progress: bool = True,
) -> Iterator[tuple[str, pd.DataFrame, np.ndarray, np.ndarray | None]]:
    """Yield ``(case_day, rows, probs (D, H, W, 3), gate (D, 3) or None)`` per scan of
    ``meta`` (see :func:`predict_volume`), with a progress bar."""
    scans = list(iter_volumes(meta))
    for case_day, rows in progress_bar(scans, "predict", progress, unit="scan"):
        probs, gate = predict_volume(models, read_volume(rows), tta=tta, batch_size=batch_size,
                                     device=device, weights=weights, amp=amp, sliding=sliding)  # fmt: skip
        yield case_day, rows, probs, gate
