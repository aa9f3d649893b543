"""Post-processing: probabilities -> masks, one definition for validation, the comparison
pictures, the out-of-fold search and the submission.

A :class:`PostProcess` holds, per class, four steps applied in this order to one scan:

1. **threshold**: foreground is ``probability > threshold``;
2. **min_size**: 8-connected components with fewer pixels are removed, per slice;
3. **slice gate**: a slice keeps the class only if the class's largest probability on it
   reaches ``gate_max`` and, for models with a classifier head, the head's probability
   reaches ``gate_head`` (0 switches either off) -- the empty-slice gate of the strongest
   solutions, since one false pixel on an empty slice costs a whole Hausdorff term;
4. **tail**: runs of at most ``tail`` consecutive positive slices at either end of the
   class's z-range, cut off from the rest by an empty slice, are removed (the "ambiguous
   tail" of an organ; 0 is off).

Component sizes are counted in pixels of a ``size_ref`` x ``size_ref`` slice (the model's
``img_size``) and scaled to the area of the slice they act on, so the same record serves
at model resolution (validation, out-of-fold sets) and at each scan's own size (the
submission); ``size_ref=None`` takes them as given. Probabilities are float in [0, 1] or
uint8 holding ``round(255 p)`` (the out-of-fold files). The step functions below are
public so that the out-of-fold search (:mod:`gi_utils.evaluation.search`) builds exactly
the masks :meth:`PostProcess.apply` builds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from gi_utils.constants import CLASSES, NUM_CLASSES
from gi_utils.models.io import ModelConfig

__all__ = ["PostProcess", "per_class", "prob_scale", "label_components", "keep_components",
           "slice_gate", "strip_tails", "remove_small_components", "postprocess_class"]  # fmt: skip

_FIELDS = ("thresholds", "min_size", "gate_max", "gate_head", "tail")


def per_class(value, name: str, kind=float) -> tuple:
    """One value per class from a scalar or a sequence of :data:`NUM_CLASSES` values."""
    values = [value] * NUM_CLASSES if np.isscalar(value) else list(value)
    if len(values) != NUM_CLASSES:
        raise ValueError(
            f"{name} needs 1 or {NUM_CLASSES} values (one per class {CLASSES}), got {value!r}"
        )
    return tuple(kind(v) for v in values)


def prob_scale(probs: np.ndarray) -> float:
    """255 for uint8 probabilities (``round(255 p)``), else 1."""
    return 255.0 if probs.dtype == np.uint8 else 1.0


# --------------------------------------------------------------------------- the steps
def label_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of a (H, W) mask: ``(labels int32 (H, W), areas (n + 1,))``,
    label 0 = background (its area is set to 0)."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(np.ascontiguousarray(mask, np.uint8), connectivity=8)
    areas = stats[:, cv2.CC_STAT_AREA].copy()
    areas[0] = 0
    return labels, areas


def keep_components(labels: np.ndarray, areas: np.ndarray, min_size: int) -> np.ndarray:
    """bool (H, W): the pixels of components with at least ``min_size`` pixels."""
    keep = areas >= max(min_size, 1)
    keep[0] = False
    return keep[labels]


def remove_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Drop 8-connected components of a (H, W) mask with fewer than ``min_size`` pixels."""
    mask = np.asarray(mask, dtype=bool)
    if min_size <= 1 or not mask.any():
        return mask
    return keep_components(*label_components(mask), min_size)


def slice_gate(slice_max: np.ndarray, gate_max: float, head: np.ndarray | None, gate_head: float) -> np.ndarray:
    """bool (D,): the slices that keep a class. ``slice_max``: the class's largest
    probability per slice (in [0, 1]); ``head``: the classifier's probability per slice or
    None (then ``gate_head`` is ignored)."""
    keep = np.ones(len(slice_max), bool)
    if gate_max > 0:
        keep &= slice_max >= gate_max
    if gate_head > 0 and head is not None:
        keep &= head >= gate_head
    return keep


def strip_tails(present: np.ndarray, tail: int) -> np.ndarray:
    """bool (D,): ``present`` without runs of at most ``tail`` slices at either end of the
    z-range that an empty slice separates from the rest (the last run is never removed)."""
    present = np.asarray(present, bool).copy()
    if tail <= 0 or not present.any():
        return present
    edges = np.diff(np.r_[0, present.astype(np.int8), 0])
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # runs [s, e)
    lo, hi = 0, len(starts)
    while hi - lo > 1 and ends[lo] - starts[lo] <= tail:
        present[starts[lo] : ends[lo]] = False
        lo += 1
    while hi - lo > 1 and ends[hi - 1] - starts[hi - 1] <= tail:
        present[starts[hi - 1] : ends[hi - 1]] = False
        hi -= 1
    return present


def postprocess_class(
    probs: np.ndarray, threshold: float, min_size: int, gate_max: float = 0.0, gate_head: float = 0.0,
    tail: int = 0, head: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """The four steps for one class of one scan: probabilities (D, H, W) -> bool (D, H, W).

    ``min_size`` is in the pixels of these slices; ``head``: (D,) gate probabilities or None.
    """
    scale = prob_scale(probs)
    mask = probs > np.float32(threshold * scale)
    if min_size > 1:
        for d in np.flatnonzero(mask.reshape(len(mask), -1).any(1)):
            mask[d] = keep_components(*label_components(mask[d]), min_size)
    keep = slice_gate(probs.reshape(len(probs), -1).max(1) / scale if len(probs) else np.zeros(0),
                      gate_max, head, gate_head)  # fmt: skip
    keep &= strip_tails(mask.reshape(len(mask), -1).any(1) & keep, tail)
    mask[~keep] = False
    return mask


@dataclass(frozen=True)
class PostProcess:
    """Per-class settings of the four steps (see the module docstring).

    Attributes:
        thresholds: foreground is ``probability > threshold``, per class.
        min_size: components with fewer pixels are removed (0 or 1 keeps all), counted at
            ``size_ref`` x ``size_ref``.
        gate_max: a slice keeps a class only if its largest probability reaches this (0: off).
        gate_head: ... and the classifier head's probability reaches this (0: off; needs a
            model with a gate head).
        tail: remove end runs of at most this many slices (0: off).
        size_ref: the side length ``min_size`` refers to; ``None``: pixels as given.
        source: where the settings come from (``"default"``, ``"models"``, ``"search"``,
            ``"given"``); not part of equality.
    """

    thresholds: tuple[float, ...] = (0.5, 0.5, 0.5)
    min_size: tuple[int, ...] = (0, 0, 0)
    gate_max: tuple[float, ...] = (0.0, 0.0, 0.0)
    gate_head: tuple[float, ...] = (0.0, 0.0, 0.0)
    tail: tuple[int, ...] = (0, 0, 0)
    size_ref: int | None = None
    source: str = field(default="default", compare=False)

    def __post_init__(self) -> None:
        kinds = {"thresholds": float, "min_size": int, "gate_max": float, "gate_head": float, "tail": int}
        for name, kind in kinds.items():
            object.__setattr__(self, name, per_class(getattr(self, name), name, kind))
        for name in ("thresholds", "gate_max", "gate_head"):
            if not all(0.0 <= v < 1.0 for v in getattr(self, name)):
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        for name in ("min_size", "tail"):
            if min(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_model_configs(cls, configs: Sequence[ModelConfig]) -> PostProcess:
        """The settings the models were trained with: their ``threshold`` (the first
        model's) and the largest ``min_size`` of the ensemble, at the first one's size."""
        ref = int(configs[0].img_size)
        size = max(float(c.min_size) * ref**2 / int(c.img_size) ** 2 for c in configs)
        th = float(configs[0].threshold)
        return cls((th,) * NUM_CLASSES, (int(round(size)),) * NUM_CLASSES, size_ref=ref, source="models")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PostProcess:
        """Inverse of :meth:`to_dict` (unknown keys are an error naming them)."""
        known = {*_FIELDS, "size_ref", "source"}
        extra = sorted(set(values) - known)
        if extra:
            raise ValueError(f"unknown PostProcess field(s) {extra}; valid: {sorted(known)}")
        return cls(**values)

    def override(self, thresholds: float | Sequence[float] | None = None,
                 min_size: int | Sequence[int] | None = None) -> PostProcess:  # fmt: skip
        """A copy with the given fields replaced (``None`` keeps a field)."""
        changes = {k: v for k, v in (("thresholds", thresholds), ("min_size", min_size)) if v is not None}
        return replace(self, **changes, source="given") if changes else self

    def with_class(self, c: int, **values: Any) -> PostProcess:
        """A copy where class ``c`` takes ``values`` (e.g. ``thresholds=0.4, tail=2``)."""
        changes = {}
        for name, value in values.items():
            current = list(getattr(self, name))
            current[c] = value
            changes[name] = tuple(current)
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        for name in _FIELDS:
            d[name] = list(getattr(self, name))
        return d

    def sizes_for(self, size_hw: tuple[int, int]) -> tuple[int, ...]:
        """``min_size`` in pixels of a slice of (H, W)."""
        if self.size_ref is None:
            return self.min_size
        scale = size_hw[0] * size_hw[1] / self.size_ref**2
        return tuple(int(round(s * scale)) for s in self.min_size)

    def apply(self, probs: np.ndarray, gate: np.ndarray | None = None) -> np.ndarray:
        """Masks of one scan: (D, H, W, 3) probabilities -> bool (D, H, W, 3).

        ``gate``: (D, 3) classifier-head probabilities in [0, 1], or None.
        """
        sizes = self.sizes_for(probs.shape[1:3])
        out = np.empty(probs.shape, bool)
        for c in range(NUM_CLASSES):
            out[..., c] = postprocess_class(
                probs[..., c], self.thresholds[c], sizes[c], self.gate_max[c], self.gate_head[c],
                self.tail[c], None if gate is None else gate[:, c],
            )  # fmt: skip
        return out
