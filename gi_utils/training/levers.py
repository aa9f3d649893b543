"""The checks of the levers the top solutions credit (``TrainConfig`` fields; what each
does and its source: ``docs/levers.md``), kept beside the config so that its module stays
about settings, not about them: :func:`check_levers` raises a ``ValueError`` that names
the field, as the config's own checks do."""

from __future__ import annotations

from typing import Any

from gi_utils.data.mixing import MIX_MODES

__all__ = ["check_levers"]


def _refuse_3d(cfg: Any, name: str, why: str) -> None:
    if cfg.spec.is_3d:
        raise ValueError(f"{name}={getattr(cfg, name)!r} does not apply to the 3-D {cfg.arch}: {why}")


def check_levers(cfg: Any) -> None:
    """Validate the lever fields of a ``TrainConfig`` (called from its ``__post_init__``).

    Raises:
        ValueError: a value out of range, or a lever that does not apply to the model
            (the field and what was expected named).
    """
    if cfg.drop_tail < 0:
        raise ValueError(f"drop_tail must be >= 0 (0 is off), got {cfg.drop_tail}")
    if cfg.drop_tail:
        _refuse_3d(cfg, "drop_tail", "3-D patches are cut from whole scans")
    if cfg.mix not in MIX_MODES:
        raise ValueError(f"mix={cfg.mix!r} is not valid; choose one of {', '.join(MIX_MODES)}")
    if not 0 <= cfg.mix_p <= 1:
        raise ValueError(f"mix_p must be in [0, 1], got {cfg.mix_p}")
    if not 0 <= cfg.swa_epochs <= cfg.epochs:
        raise ValueError(f"swa_epochs must be in 0..epochs ({cfg.epochs}), got {cfg.swa_epochs}")
    if cfg.patch_size:
        if not cfg.spec.is_3d:
            raise ValueError(f"patch_size={cfg.patch_size} applies to 3-D models; a 2.5D {cfg.arch} trains on "
                             "whole slices (patch_size=0)")  # fmt: skip
        stride = cfg.spec.depth_stride(cfg.model_kwargs)
        if not 0 < cfg.patch_size <= cfg.img_size or cfg.patch_size % stride:
            raise ValueError(f"patch_size must be a multiple of {stride} for {cfg.arch}, at most img_size "
                             f"({cfg.img_size}), or 0; got {cfg.patch_size}")  # fmt: skip
    if cfg.resize_mode == "crop" and (cfg.cache == "none" or not cfg.cache_masks):
        raise ValueError(f"resize_mode='crop' needs a cache with masks (cache='memory' or 'disk', cache_masks=True): "
                         f"each scan's body box is found, and its masks cut to it, when the cache is built; got "
                         f"cache={cfg.cache!r}, cache_masks={cfg.cache_masks}")  # fmt: skip
    if cfg.seg_weight < 0:
        raise ValueError(f"seg_weight must be >= 0, got {cfg.seg_weight}")
    if cfg.seg_weight == 0 and not cfg.gate:
        raise ValueError("seg_weight=0 trains nothing without the classifier gate: set gate=True "
                         "(the classification-first run)")
