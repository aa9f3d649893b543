"""CutMix and MixUp on a training batch, masks mixed as the images are: the 3rd place's
"CutMix + MixUp, p = 0.33" (``TrainConfig.mix``, ``mix_p``).

Batch level: with probability ``p`` a batch is mixed with a shuffled copy of itself (a
permutation ``perm`` of its samples) by one method (``cutmix_mixup``: CutMix or MixUp,
half each), with one ``lam ~ U(0, 1)`` (Beta(1, 1), as the CutMix paper draws it):

* CutMix: a box of area ``(1 - lam)`` of the image, centred uniformly and clipped to it,
  is pasted from sample ``perm[i]`` into sample ``i``: its image pixels, every channel
  (the 2.5D neighbours) and its masks, so a box carries the mask of its source;
* MixUp: ``x = lam x_i + (1 - lam) x_perm[i]`` and the targets the same mix of the
  masks (soft targets).

The in-plane box works on 2.5D batches ``(N, C, S, S)`` and 3-D ones ``(N, C, D, S, S)``
alike (the box spans the depth). Every draw is made, in the same order and number, from
one ``torch.Generator`` the caller seeds per batch (:func:`mix_generator`, from
``(seed, epoch, batch)``), so a resumed run mixes as an uninterrupted one.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["MIX_MODES", "BatchMix", "cut_box", "cutmix", "mixup", "mix_generator"]

#: ``TrainConfig.mix`` values.
MIX_MODES: tuple[str, ...] = ("none", "cutmix", "mixup", "cutmix_mixup")
#: Keeps the mixing stream apart from the device augmentation's, seeded from the same triple.
_SALT = 0x6D6978


def mix_generator(seed: int, epoch: int, batch: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of the mixing of global batch ``batch`` of ``epoch``."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(batch), _SALT]).generate_state(2, np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) & (2**63 - 1))


def cutmix(images: torch.Tensor, masks: torch.Tensor, perm: torch.Tensor,
           box: tuple[int, int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Paste ``box = (top, left, bottom, right)`` (half-open, pixels) of sample ``perm[i]``
    into sample ``i``, images and masks alike (new tensors; the inputs are not changed)."""
    y0, x0, y1, x1 = box
    images, masks = images.clone(), masks.clone()
    images[..., y0:y1, x0:x1] = images[perm][..., y0:y1, x0:x1]
    masks[..., y0:y1, x0:x1] = masks[perm][..., y0:y1, x0:x1]
    return images, masks


def mixup(images: torch.Tensor, masks: torch.Tensor, perm: torch.Tensor,
          lam: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``lam * sample i + (1 - lam) * sample perm[i]``, images and masks the same mix."""
    return lam * images + (1 - lam) * images[perm], lam * masks + (1 - lam) * masks[perm].to(images.dtype)


def cut_box(size: tuple[int, int], lam: float, centre: tuple[float, float]) -> tuple[int, int, int, int]:
    """The CutMix box of area ``(1 - lam) * H * W`` centred at ``centre`` (fractions of
    the sides), clipped to the image: ``(top, left, bottom, right)``."""
    h, w = size
    r = math.sqrt(1.0 - lam)
    ch, cw = int(h * r), int(w * r)
    cy, cx = int(centre[0] * h), int(centre[1] * w)
    return max(cy - ch // 2, 0), max(cx - cw // 2, 0), min(cy + ch // 2, h), min(cx + cw // 2, w)


class BatchMix:
    """CutMix and/or MixUp of a batch with probability ``p`` (see the module docstring).

    Args:
        mode: one of :data:`MIX_MODES` other than ``"none"``.
        p: probability that a batch is mixed.
    """

    def __init__(self, mode: str, p: float) -> None:
        if mode not in MIX_MODES or mode == "none":
            raise ValueError(f"mix={mode!r}: choose one of {', '.join(MIX_MODES[1:])}")
        if not 0 <= p <= 1:
            raise ValueError(f"mix_p must be in [0, 1], got {p}")
        self.mode, self.p = mode, float(p)

    def draw(self, n: int, gen: torch.Generator) -> dict:
        """The batch's draws, always the same in number and order: ``apply`` (bool),
        ``method`` ("cutmix" or "mixup"), ``perm`` (n,), ``lam``, ``centre`` (y, x)."""
        u = torch.rand(5, generator=gen, device=gen.device).tolist()
        perm = torch.randperm(n, generator=gen, device=gen.device)
        method = self.mode if self.mode != "cutmix_mixup" else ("cutmix" if u[1] < 0.5 else "mixup")
        return {"apply": u[0] < self.p, "method": method, "perm": perm, "lam": u[2], "centre": (u[3], u[4])}

    def __call__(self, images: torch.Tensor, masks: torch.Tensor,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, dict]:  # fmt: skip
        """Mix one batch: ``images`` float (N, C, [D,] S, S), ``masks`` float (N, 3, [D,] S, S).

        Returns:
            ``(images, masks, draws)``; the inputs themselves when the batch is not mixed.
        """
        d = self.draw(len(images), gen)
        if not d["apply"]:
            return images, masks, d
        perm = d["perm"].to(images.device)
        if d["method"] == "mixup":
            images, masks = mixup(images, masks, perm, d["lam"])
        else:
            d["box"] = cut_box(tuple(images.shape[-2:]), d["lam"], d["centre"])
            images, masks = cutmix(images, masks, perm, d["box"])
        return images, masks, d
