"""Inference: whole volumes in 2.5D, flip TTA, ensembles, post-processing, submission.csv.

The input of a model is built exactly as in training: :func:`gi_utils.transforms.preprocess_volume`
(per-scan normalisation + resize to the model's ``img_size``) and the neighbours at the
model's ``slice_offsets`` stacked as channels, clamped at the ends of the scan (what
:class:`gi_utils.dataset.SliceDataset` does). Everything a model needs is read from the
config saved with it (:func:`gi_utils.models.load_model`), so a submission notebook only
passes the ``.safetensors`` paths.

Ensembles average probabilities: first over the flips of TTA, then over the models; the
models that share an input (``img_size``, ``resize_mode``, ``slice_offsets``) are averaged
at that resolution, then every group's average is resized to the scan's own (H, W)
(linear) and averaged there. Thresholds and the removal of small connected components
act at the original resolution; component sizes are in original pixels.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch import nn

from gi_utils.checkpoint import atomic_write_text
from gi_utils.constants import CLASSES, NUM_CLASSES, SUBMISSION_COLUMNS
from gi_utils.data import build_metadata, iter_volumes, read_volume
from gi_utils.models import load_model
from gi_utils.paths import DataNotFoundError, resolve_data_dir
from gi_utils.progress import progress_bar
from gi_utils.rle import RLEError, encode_rle, is_empty_rle, parse_rle
from gi_utils.transforms import NORM_VERSION, preprocess_volume, restore_size

__all__ = [
    "TTA_FLIPS",
    "default_device",
    "load_models",
    "stack_slices",
    "predict_probs",
    "predict_volume",
    "remove_small_components",
    "postprocess",
    "drop_small_components",
    "predict_volumes",
    "make_submission",
    "validate_submission",
    "write_submission",
    "empty_submission",
]

#: Flip TTA: name -> axes of an (N, C, S, S) batch.
TTA_FLIPS: dict[str, tuple[int, ...]] = {"hflip": (3,), "vflip": (2,), "hvflip": (2, 3)}

Model = tuple[nn.Module, dict]


def default_device() -> torch.device:
    """CUDA when present, else CPU (checked when called, never at import)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


def remove_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Drop 8-connected components of a (H, W) mask with fewer than ``min_size`` pixels."""
    mask = np.asarray(mask, dtype=bool)
    if min_size <= 1 or not mask.any():
        return mask
    pixels = np.ascontiguousarray(mask, dtype=np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(pixels, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_size
    keep[0] = False  # background
    return keep[labels]


def _per_class(value, name: str, kind=float) -> list:
    values = [value] * NUM_CLASSES if np.isscalar(value) else list(value)
    if len(values) != NUM_CLASSES:
        raise ValueError(
            f"{name} needs 1 or {NUM_CLASSES} values (one per class {CLASSES}), got {value!r}"
        )
    return [kind(v) for v in values]


def postprocess(
    probs: np.ndarray, thresholds: float | Sequence[float] = 0.5, min_size: int | Sequence[int] = 0
) -> np.ndarray:
    """Threshold (D, H, W, 3) probabilities per class and drop small components per slice.

    Returns:
        bool (D, H, W, 3).
    """
    th = _per_class(thresholds, "thresholds")
    return drop_small_components(probs > np.asarray(th, np.float32), min_size)


def drop_small_components(masks: np.ndarray, min_size: int | Sequence[int]) -> np.ndarray:
    """Remove components smaller than ``min_size`` (one value or one per class) from every
    (slice, class) of bool (D, H, W, 3) masks, in place; returns ``masks``."""
    for c, size in enumerate(_per_class(min_size, "min_size", int)):
        if size > 1:
            for d in range(len(masks)):
                masks[d, ..., c] = remove_small_components(masks[d, ..., c], size)
    return masks


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


# --------------------------------------------------------------------------- submission
def empty_submission() -> pd.DataFrame:
    """A submission with the competition's header and no rows."""
    return pd.DataFrame({c: pd.Series(dtype=str) for c in SUBMISSION_COLUMNS})


def _has_images(folder: Path) -> bool:
    return folder.is_dir() and next(folder.rglob("*.png"), None) is not None


def make_submission(
    model_paths: Sequence[str | os.PathLike] | str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    split: str = "test",
    out_csv: str | os.PathLike | None = "submission.csv",
    *,
    thresholds: float | Sequence[float] = 0.5,
    min_size: int | Sequence[int] | None = None,
    tta=False,
    batch_size: int = 16,
    device=None,
    progress: bool = True,
) -> pd.DataFrame:
    """Predict every scan of ``data_dir/split`` and write the competition's CSV.

    Args:
        model_paths: one or more ``.safetensors`` models (an ensemble is averaged).
        data_dir: data root (``None``: :func:`gi_utils.paths.resolve_data_dir`).
        split: folder of the scans, ``"test"`` on Kaggle.
        out_csv: where to write (atomically); ``None`` writes nothing.
        thresholds: probability threshold, one value or one per class.
        min_size: remove components smaller than this many pixels (0 = keep all);
            ``None`` = the models' own ``min_size`` (set in training, at model
            resolution; the largest of the ensemble) scaled to each scan's size.
        tta: ``False``, ``True`` (horizontal flip) or names of :data:`TTA_FLIPS`.

    Returns:
        ``id, class, predicted``: one row per (slice, class), classes in
        :data:`~gi_utils.constants.CLASSES` order, ``""`` for no mask. When the split has
        no images (Kaggle's hidden test set while a notebook is saved) the result is
        empty, with the header, and a warning.

    Raises:
        DataNotFoundError: ``data_dir`` does not exist (a typo must not give an empty
            submission).
    """
    root = Path(data_dir) if data_dir is not None else resolve_data_dir()
    if not root.is_dir():
        raise DataNotFoundError(f"data folder {root} does not exist (make_submission data_dir)")
    if not _has_images(root / split):
        warnings.warn(f"no images under {root / split}: writing an empty submission", stacklevel=2)
        df = empty_submission()
    else:
        models = load_models(model_paths, device)
        meta = build_metadata(root, split, labels=False)
        rows_out: list[tuple[str, str, str]] = []
        for _, rows, probs in predict_volumes(
            models, meta, tta=tta, batch_size=batch_size, device=device, progress=progress
        ):
            sizes = min_size if min_size is not None else _model_min_size(models, probs.shape[1:3])
            masks = postprocess(probs, thresholds, sizes)
            for d, sid in enumerate(rows.sort_values("slice")["id"]):
                rows_out.extend(
                    (sid, name, encode_rle(masks[d, ..., c])) for c, name in enumerate(CLASSES)
                )
        df = pd.DataFrame(rows_out, columns=list(SUBMISSION_COLUMNS))
        validate_submission(df, meta)
    if out_csv is not None:
        write_submission(df, out_csv)
    return df


def _model_min_size(models: Sequence[Model], size_hw: tuple[int, int]) -> int:
    """The ensemble's training-time ``min_size`` in pixels of a scan of (H, W)."""
    best = 0.0
    for _, config in models:
        s = int(config["img_size"])
        best = max(best, float(config.get("min_size", 0)) * size_hw[0] * size_hw[1] / (s * s))
    return int(round(best))


def write_submission(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``df`` as CSV atomically (temp file + ``os.replace``)."""
    return atomic_write_text(path, df.to_csv(index=False))


def validate_submission(df: pd.DataFrame, meta: pd.DataFrame) -> None:
    """Check a submission against the slices of ``meta`` (``build_metadata(..., "test")``).

    Checks: the header is exactly ``id,class,predicted``; one row per (id, class) of
    ``meta`` x :data:`CLASSES`, no duplicates, no others; every ``predicted`` is empty or
    an RLE with positive, increasing, non-overlapping runs inside the image (H * W of that id).

    Raises:
        ValueError: the first problem, naming the row (0-based), its id and class.
    """
    if list(df.columns) != list(SUBMISSION_COLUMNS):
        raise ValueError(
            f"submission columns are {list(df.columns)}; expected {list(SUBMISSION_COLUMNS)}"
        )
    pixels = dict(
        zip(meta["id"], meta["height"].astype(int) * meta["width"].astype(int), strict=True)
    )
    seen: set[tuple[str, str]] = set()
    for i, (sid, cls, rle) in enumerate(zip(df["id"], df["class"], df["predicted"], strict=True)):
        where = f"row {i} (id {sid!r}, class {cls!r})"
        if cls not in CLASSES:
            raise ValueError(f"{where}: unknown class; expected one of {list(CLASSES)}")
        if sid not in pixels:
            raise ValueError(f"{where}: id is not a slice of the test set")
        if (sid, cls) in seen:
            raise ValueError(f"{where}: duplicate (id, class)")
        seen.add((sid, cls))
        if not is_empty_rle(rle):
            try:
                parse_rle(rle, pixels[sid])
            except RLEError as err:
                raise ValueError(f"{where}: bad RLE: {err}") from None
    if len(seen) != len(pixels) * NUM_CLASSES:
        missing = next((s, c) for s in pixels for c in CLASSES if (s, c) not in seen)
        raise ValueError(
            f"submission has {len(seen)} rows, expected {len(pixels) * NUM_CLASSES}; "
            f"first missing (id, class): {missing}"
        )
