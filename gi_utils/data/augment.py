"""The training augmentation, applied on top of the preprocessed (S, S) slices (2.5D,
albumentations) or of a patch of consecutive slices (3-D, MONAI).

:func:`build_transforms` builds an ``albumentations.Compose`` of flips, affine, grid and
elastic distortion, brightness/contrast and coarse dropout; per-transform overrides come
from ``TrainConfig.augment_kwargs``. Masks follow every geometric step with nearest
neighbour and are never dropped out.

Works with albumentations 2.x and 1.4.x (from 1.4.21, the first with ``Compose(seed=...)``
and ``set_random_state``, which the per-sample seeding needs): the specs use the 2.x
argument names, and where the installed transform does not take one, its 1.4 name
(:data:`ALBU_1_4_NAMES`) is passed instead: the same transforms with the same
probabilities and values. Arguments are checked against the transform's signature on
both, so a wrong name fails the same way.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import albumentations as A
import cv2

if TYPE_CHECKING:
    from monai.transforms import Compose

__all__ = ["ALBU_1_4_NAMES", "build_transforms", "build_transforms_3d", "default_3d_specs", "default_train_specs",
           "make_transform", "specs_3d"]

#: Per transform, 2.x argument name -> its albumentations 1.4 name, used when the installed
#: transform does not take the 2.x name.
ALBU_1_4_NAMES: dict[str, dict[str, str]] = {
    "Affine": {"fill": "cval", "fill_mask": "cval_mask", "border_mode": "mode"},
    "CoarseDropout": {"fill": "fill_value", "fill_mask": "mask_fill_value"},
}
#: albumentations 2.x validates each transform's arguments itself when asked (``strict``).
_ALBU_2 = int(A.__version__.split(".")[0]) >= 2


def default_train_specs(img_size: int) -> list[tuple[str, dict[str, Any]]]:
    """(transform name, kwargs) of the default training augmentation, in order."""
    hole = (max(1, img_size // 32), max(2, img_size // 10))
    return [
        ("HorizontalFlip", {"p": 0.5}),
        ("Affine", {
            "scale": (0.9, 1.1), "translate_percent": (-0.0625, 0.0625), "rotate": (-15, 15),
            "border_mode": cv2.BORDER_CONSTANT, "fill": 0, "fill_mask": 0, "p": 0.5,
        }),
        ("GridDistortion", {"num_steps": 5, "distort_limit": 0.1, "p": 0.15}),
        ("ElasticTransform", {"alpha": 120.0, "sigma": 6.0, "approximate": True, "p": 0.1}),
        ("RandomBrightnessContrast", {"brightness_limit": 0.1, "contrast_limit": 0.1, "p": 0.5}),
        ("CoarseDropout", {
            "num_holes_range": (1, 6), "hole_height_range": hole, "hole_width_range": hole,
            "fill": 0, "p": 0.3,
        }),
    ]  # fmt: skip


def make_transform(name: str, kwargs: dict[str, Any]) -> A.BasicTransform:
    """The albumentations transform ``name`` built with ``kwargs`` (2.x argument names).

    Raises:
        ValueError: an argument the installed transform does not take (named, with the
            arguments it takes), or a value it refuses; the message starts with ``name``.
    """
    cls = getattr(A, name)
    takes = [k for k, v in inspect.signature(cls.__init__).parameters.items()
             if k != "self" and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)]  # fmt: skip
    renamed = ALBU_1_4_NAMES.get(name, {})
    kwargs = {k if k in takes else renamed.get(k, k): v for k, v in kwargs.items()}
    wrong = [k for k in kwargs if k not in takes]
    if wrong:
        raise ValueError(f"{name}: no argument(s) {wrong} in albumentations {A.__version__}; it takes {takes}")
    if _ALBU_2:
        kwargs["strict"] = True
    try:
        return cls(**kwargs)
    except ValueError as err:  # a value the transform refuses
        raise ValueError(f"{name}: {err}") from None


def build_transforms(
    img_size: int,
    train: bool,
    *,
    overrides: dict[str, dict[str, Any]] | None = None,
    seed: int | None = None,
) -> A.Compose | None:
    """The augmentation applied on top of the preprocessed (S, S) slices.

    Training (``train=True``): horizontal flip, affine (scale 0.9-1.1, shift 6 %, rotate
    15 degrees), grid distortion and elastic (rare), brightness/contrast, coarse dropout;
    masks follow every geometric step with nearest neighbour and are never dropped out.
    No resize: slices are already (S, S). Validation (``train=False``) returns ``None``.

    Args:
        img_size: S (hole sizes of the dropout scale with it).
        train: training pipeline or none.
        overrides: per-transform keyword updates, e.g. ``{"Affine": {"p": 0.0}}``; a
            transform name not in the pipeline raises ``KeyError`` listing the names,
            and an argument the transform does not take raises ``ValueError``
            (:func:`make_transform`; the pipeline is ``A.Compose(..., strict=True)``).
        seed: seed of the Compose's own random state (the dataset reseeds it per
            DataLoader worker).

    Returns:
        ``albumentations.Compose`` taking ``image`` float32 (S, S, C) and ``mask``
        (S, S), or ``None`` when ``train`` is false.
    """
    if not train:
        return None
    specs = default_train_specs(img_size)
    names = [name for name, _ in specs]
    for name, given in (overrides or {}).items():
        if name not in names:
            raise KeyError(f"override for unknown transform {name!r}; valid names: {names}")
        if not isinstance(given, dict):
            raise ValueError(f"override for {name} must be a dict of its arguments, got {given!r}")
    transforms = []
    for name, kwargs in specs:
        kwargs = {**kwargs, **(overrides or {}).get(name, {})}
        transforms.append(make_transform(name, kwargs))
    return A.Compose(transforms, strict=True, seed=seed)


def default_3d_specs() -> dict[str, dict[str, float]]:
    """(MONAI transform name -> its probability ``p`` and range) of the 3-D training
    augmentation, in order: left-right flip; an in-plane affine (rotation about the slice
    axis of up to ``rotate`` radians, in-plane scale ``1 +- scale`` per axis, the slice
    axis kept); intensity ``x * (1 + f)``, ``|f| <= factor``; intensity ``x + o``,
    ``|o| <= offset``. Both data paths read it: the worker path
    (:func:`build_transforms_3d`) and the device path
    (:class:`~gi_utils.data.gpu_augment_3d.GpuAugment3d`)."""
    return {
        "RandFlipd": {"p": 0.5},
        "RandAffined": {"p": 0.5, "rotate": 0.26, "scale": 0.1},
        "RandScaleIntensityd": {"p": 0.5, "factor": 0.1},
        "RandShiftIntensityd": {"p": 0.5, "offset": 0.05},
    }


def specs_3d(overrides: dict[str, dict[str, float]] | None = None) -> dict[str, dict[str, float]]:
    """:func:`default_3d_specs` updated by ``overrides`` (``{"RandFlipd": {"p": 0.0}}``).

    Raises:
        KeyError: a transform name not in the pipeline (the valid names listed).
        ValueError: an argument the step does not take (the step and its arguments named).
    """
    specs = default_3d_specs()
    for name, given in (overrides or {}).items():
        if name not in specs:
            raise KeyError(f"override for unknown 3-D transform {name!r}; valid names: {list(specs)}")
        wrong = [k for k in given if k not in specs[name]]
        if wrong:
            raise ValueError(f"{name}: no argument(s) {wrong}; it takes {list(specs[name])}")
        specs[name] = {**specs[name], **given}
    return specs


def build_transforms_3d(train: bool = True, overrides: dict[str, dict[str, float]] | None = None) -> Compose | None:
    """The 3-D training augmentation (MONAI dictionary transforms on ``image`` (1, D, S, S)
    and ``mask`` (3, D, S, S)) of :func:`default_3d_specs` (updated by ``overrides``, see
    :func:`specs_3d`; the ranges and probabilities are there): left-right flip, an in-plane
    affine (the slice axis kept), intensity scale and shift. Masks follow with nearest
    neighbour. ``train=False`` returns ``None``. The caller seeds it per sample with
    ``set_random_state(seed=...)``."""
    if not train:
        return None
    # MONAI is imported here, not with the module: its package import costs about 5 s of CPU,
    # which every 2.5D process (a notebook kernel, a loader worker) would pay for nothing.
    from monai.transforms import (
        Compose,
        RandAffined,
        RandFlipd,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    keys, sp = ("image", "mask"), specs_3d(overrides)
    aff = sp["RandAffined"]
    return Compose([
        RandFlipd(keys, prob=sp["RandFlipd"]["p"], spatial_axis=2),
        RandAffined(keys, prob=aff["p"], rotate_range=(aff["rotate"], 0.0, 0.0),
                    scale_range=(0.0, aff["scale"], aff["scale"]), mode=("bilinear", "nearest"),
                    padding_mode="zeros"),
        RandScaleIntensityd("image", factors=sp["RandScaleIntensityd"]["factor"], prob=sp["RandScaleIntensityd"]["p"]),
        RandShiftIntensityd("image", offsets=sp["RandShiftIntensityd"]["offset"], prob=sp["RandShiftIntensityd"]["p"]),
    ])  # fmt: skip
