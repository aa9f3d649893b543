"""Post-processing: probabilities -> masks, one definition for validation, the comparison
pictures, the out-of-fold search and the submission.

A :class:`PostProcess` holds, per class, the probability threshold and the minimum size of
a connected component. Component sizes are counted in pixels of a ``size_ref`` x
``size_ref`` slice (the model's ``img_size``) and scaled to the area of the slice they act
on, so the same record serves at model resolution (validation, out-of-fold files) and at
each scan's own size (the submission); ``size_ref=None`` takes them as given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

from gi_utils.constants import CLASSES, NUM_CLASSES

__all__ = ["PostProcess", "per_class", "remove_small_components", "drop_small_components", "postprocess"]


def per_class(value, name: str, kind=float) -> tuple:
    """One value per class from a scalar or a sequence of :data:`NUM_CLASSES` values."""
    values = [value] * NUM_CLASSES if np.isscalar(value) else list(value)
    if len(values) != NUM_CLASSES:
        raise ValueError(
            f"{name} needs 1 or {NUM_CLASSES} values (one per class {CLASSES}), got {value!r}"
        )
    return tuple(kind(v) for v in values)


@dataclass(frozen=True)
class PostProcess:
    """Per-class thresholds and minimum component sizes (see the module docstring).

    Attributes:
        thresholds: foreground is ``probability > threshold``, per class.
        min_size: components with fewer pixels are removed, per class (0 or 1 keeps all),
            counted at ``size_ref`` x ``size_ref``.
        size_ref: the side length ``min_size`` refers to; ``None``: pixels as given.
    """

    thresholds: tuple[float, ...] = (0.5, 0.5, 0.5)
    min_size: tuple[int, ...] = (0, 0, 0)
    size_ref: int | None = None
    source: str = field(default="default", compare=False)

    def __post_init__(self) -> None:
        th = per_class(self.thresholds, "thresholds")
        if not all(0.0 <= t < 1.0 for t in th):
            raise ValueError(f"thresholds must lie in [0, 1), got {th}")
        sizes = per_class(self.min_size, "min_size", int)
        if min(sizes) < 0:
            raise ValueError(f"min_size must be >= 0, got {sizes}")
        object.__setattr__(self, "thresholds", th)
        object.__setattr__(self, "min_size", sizes)

    @classmethod
    def from_model_configs(cls, configs: Sequence[Mapping[str, Any]]) -> PostProcess:
        """The settings the models were trained with: their ``threshold`` (the first
        model's) and the largest ``min_size`` of the ensemble, at the first one's size."""
        ref = int(configs[0]["img_size"])
        size = max(float(c.get("min_size", 0)) * ref**2 / int(c["img_size"]) ** 2 for c in configs)
        th = float(configs[0].get("threshold", 0.5))
        return cls((th,) * NUM_CLASSES, (int(round(size)),) * NUM_CLASSES, ref, "models")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PostProcess:
        """Inverse of :meth:`to_dict` (unknown keys are an error naming them)."""
        known = {"thresholds", "min_size", "size_ref", "source"}
        extra = sorted(set(values) - known)
        if extra:
            raise ValueError(f"unknown PostProcess field(s) {extra}; valid: {sorted(known)}")
        return cls(**values)

    def override(self, thresholds: float | Sequence[float] | None = None,
                 min_size: int | Sequence[int] | None = None) -> PostProcess:  # fmt: skip
        """A copy with the given fields replaced (``None`` keeps a field)."""
        return PostProcess(
            self.thresholds if thresholds is None else per_class(thresholds, "thresholds"),
            self.min_size if min_size is None else per_class(min_size, "min_size", int),
            self.size_ref, self.source if thresholds is None and min_size is None else "given",
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["thresholds"], d["min_size"] = list(self.thresholds), list(self.min_size)
        return d

    def sizes_for(self, size_hw: tuple[int, int]) -> tuple[int, ...]:
        """``min_size`` in pixels of a slice of (H, W)."""
        if self.size_ref is None:
            return self.min_size
        scale = size_hw[0] * size_hw[1] / self.size_ref**2
        return tuple(int(round(s * scale)) for s in self.min_size)

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """Masks of one scan: (D, H, W, 3) probabilities (float, or uint8 x 255) -> bool."""
        return postprocess(probs, self.thresholds, self.sizes_for(probs.shape[1:3]))


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


def postprocess(
    probs: np.ndarray, thresholds: float | Sequence[float] = 0.5, min_size: int | Sequence[int] = 0
) -> np.ndarray:
    """Threshold (D, H, W, 3) probabilities per class and drop small components per slice.

    ``probs`` is float in [0, 1], or uint8 holding ``round(255 * p)`` (the out-of-fold
    files), thresholded at ``255 * threshold``.

    Returns:
        bool (D, H, W, 3).
    """
    th = np.asarray(per_class(thresholds, "thresholds"), np.float32)
    if probs.dtype == np.uint8:
        th = th * np.float32(255)
    return drop_small_components(probs > th, min_size)


def drop_small_components(masks: np.ndarray, min_size: int | Sequence[int]) -> np.ndarray:
    """Remove components smaller than ``min_size`` (one value or one per class) from every
    (slice, class) of bool (D, H, W, 3) masks, in place; returns ``masks``."""
    for c, size in enumerate(per_class(min_size, "min_size", int)):
        if size > 1:
            for d in range(len(masks)):
                masks[d, ..., c] = remove_small_components(masks[d, ..., c], size)
    return masks
