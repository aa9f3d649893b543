"""The 3-D training augmentation in batches on the device (torch), the counterpart of the
MONAI pipeline of :func:`gi_utils.data.augment.build_transforms_3d`.

Same steps, order, probabilities and ranges (:func:`~gi_utils.data.augment.default_3d_specs`),
parameters drawn per sample from one ``torch.Generator`` (the caller seeds it per batch,
e.g. from ``(seed, epoch, batch)``), masks moved by nearest neighbour:

* ``RandFlipd(p)``: ``torch.flip`` of the last (left-right) axis (exact).
* ``RandAffined(rotate, scale, p)``: as MONAI builds it, the source of each output pixel
  is ``R(theta) @ diag(s_h, s_w)`` of its coordinates about the patch centre, ``theta``
  uniform in ``(-rotate, rotate)`` radians about the slice axis, ``s_h`` and ``s_w``
  uniform in ``1 +- scale``; the slice axis is kept, so each sample is one 2-D sampling
  grid applied to all its slices (``grid_sample``, bilinear for the image, nearest for
  the masks, zeros outside).
* ``RandScaleIntensityd(factor, p)``: ``x * (1 + f)``, ``f`` uniform in ``(-factor, factor)``.
* ``RandShiftIntensityd(offset, p)``: ``x + o``, ``o`` uniform in ``(-offset, offset)``.

Difference, by design: the resampling is torch's ``grid_sample`` (MONAI may use its own
resampler), so interpolated values can differ in the last bits; the transforms and their
parameters' laws are the same.

No step waits for the device: the resampling is computed for every patch and kept where
the patch takes the affine step (``torch.where``, never a boolean mask, whose count the
host would have to read).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gi_utils.data.augment import specs_3d

__all__ = ["GpuAugment3d"]


def _symmetric(gen: torch.Generator, n: int, half: float) -> torch.Tensor:
    """``n`` draws uniform in ``(-half, half)``."""
    return half * (2 * torch.rand(n, generator=gen, device=gen.device) - 1)


class GpuAugment3d:
    """The 3-D training augmentation on a batch of patches already on the device.

    Args:
        overrides: per-step updates with the MONAI names (``{"RandFlipd": {"p": 0.0}}``,
            :func:`~gi_utils.data.augment.specs_3d`).

    Raises:
        KeyError, ValueError: an unknown step or argument (named).
    """

    def __init__(self, overrides: dict[str, dict[str, float]] | None = None) -> None:
        sp = specs_3d(overrides)
        self.p = {name: float(kw["p"]) for name, kw in sp.items()}
        self.rotate, self.scale = float(sp["RandAffined"]["rotate"]), float(sp["RandAffined"]["scale"])
        self.factor, self.offset = float(sp["RandScaleIntensityd"]["factor"]), float(sp["RandShiftIntensityd"]["offset"])

    def draw(self, n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Per-sample parameters of a batch of ``n``, always drawn in the same order and number.

        Returns:
            ``{"flip", "affine", "scale_intensity", "shift_intensity"}`` bool (n,) (applied);
            ``rotate`` (n,) radians; ``scale`` (n, 2) the (h, w) factors of the source
            coordinates; ``factor``, ``offset`` (n,).
        """
        out = {name: torch.rand(n, generator=gen, device=gen.device) < self.p[key]
               for name, key in (("flip", "RandFlipd"), ("affine", "RandAffined"),
                                 ("scale_intensity", "RandScaleIntensityd"),
                                 ("shift_intensity", "RandShiftIntensityd"))}  # fmt: skip
        out["rotate"] = _symmetric(gen, n, self.rotate)
        out["scale"] = 1 + _symmetric(gen, 2 * n, self.scale).reshape(n, 2)
        out["factor"] = _symmetric(gen, n, self.factor)
        out["offset"] = _symmetric(gen, n, self.offset)
        return out

    @staticmethod
    def theta(rotate: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """(m, 2, 3) ``affine_grid`` matrices (normalised (x, y) output -> source) of MONAI's
        backward map ``R(rotate) @ diag(s_h, s_w)`` on (h, w) about the centre (a square
        patch: the normalisation is the same on both axes)."""
        c, s = torch.cos(rotate), torch.sin(rotate)
        sh, sw = scale[:, 0], scale[:, 1]
        zero = torch.zeros_like(c)
        return torch.stack([torch.stack([c * sw, s * sh, zero], -1), torch.stack([-s * sw, c * sh, zero], -1)], 1)

    def __call__(
        self, images: torch.Tensor, packed: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Augment one batch.

        Args:
            images: float32 (N, 1, P, S, S).
            packed: uint8 (N, P, S, S) packed masks (bit c = class c).
            gen: the batch's generator, on the images' device.

        Returns:
            ``(images, packed, params)``: new tensors (the inputs are not changed) and
            the parameters :meth:`draw` drew.
        """
        prm = self.draw(len(images), gen)
        f = prm["flip"]
        images = torch.where(f[:, None, None, None, None], images.flip(-1), images)
        packed = torch.where(f[:, None, None, None], packed.flip(-1), packed)
        a = prm["affine"]  # the slices of a patch are the channels of one 2-D resampling
        grid = F.affine_grid(self.theta(prm["rotate"], prm["scale"]), list(images[:, 0].shape), align_corners=False)
        warped = F.grid_sample(images[:, 0], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        images = torch.where(a[:, None, None, None, None], warped[:, None], images)
        moved = F.grid_sample(packed.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
        packed = torch.where(a[:, None, None, None], moved.round().to(torch.uint8), packed)
        gain = torch.where(prm["scale_intensity"], 1 + prm["factor"], torch.ones_like(prm["factor"]))
        shift = torch.where(prm["shift_intensity"], prm["offset"], torch.zeros_like(prm["offset"]))
        images = images * gain[:, None, None, None, None] + shift[:, None, None, None, None]
        return images, packed, prm
