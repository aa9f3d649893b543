"""Prediction of a 3-D model: MONAI sliding windows along the slice axis, flip TTA.

A window is ``patch_depth`` consecutive slices at the model's full in-plane size, so the
windows slide along the slice axis only; neighbouring windows overlap by ``overlap`` of
their depth and are blended with a weight that is Gaussian along the slice axis (nnU-Net's
and MONAI's ``mode="gaussian"``, centre slices count most) or constant. A scan shorter than
a window is padded by MONAI and cut back. Windows run on the model's device; their sum is
kept on ``SlidingWindow.device`` (the CPU by default), so a long scan at 320 px does not
fill a 16 GB GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from gi_utils.device import inference_autocast

__all__ = ["SW_MODES", "SlidingWindow", "sliding_logits", "predict_probs_3d"]

#: Blending of overlapping windows.
SW_MODES: tuple[str, ...] = ("gaussian", "constant")


@dataclass(frozen=True)
class SlidingWindow:
    """Settings of the sliding windows of a 3-D model.

    Attributes:
        overlap: share of a window's depth shared with the next one, in [0, 1).
        mode: ``"gaussian"`` (along the slice axis, sigma = ``sigma_scale`` x depth) or
            ``"constant"``.
        batch_size: windows per forward pass.
        device: where the windows' weighted sum is kept (``None``: the model's device).
    """

    overlap: float = 0.5
    mode: str = "gaussian"
    sigma_scale: float = 0.125
    batch_size: int = 1
    device: str | torch.device | None = "cpu"

    def __post_init__(self) -> None:
        if not 0 <= self.overlap < 1:
            raise ValueError(f"SlidingWindow.overlap must be in [0, 1), got {self.overlap}")
        if self.mode not in SW_MODES:
            raise ValueError(f"SlidingWindow.mode={self.mode!r} is not valid; choose one of {', '.join(SW_MODES)}")
        if self.batch_size < 1:
            raise ValueError(f"SlidingWindow.batch_size must be >= 1, got {self.batch_size}")

    def weight_map(self, depth: int, size: int, device: torch.device) -> torch.Tensor:
        """(depth, size, size): the weight of each voxel of a window."""
        if self.mode == "constant":
            w = torch.ones(depth, device=device)
        else:
            d = torch.arange(depth, dtype=torch.float32, device=device) - (depth - 1) / 2
            w = torch.exp(-0.5 * (d / (self.sigma_scale * depth)) ** 2).clamp_min(1e-3)
        return w[:, None, None].expand(depth, size, size)


def sliding_logits(model: nn.Module, x: torch.Tensor, patch_depth: int, sw: SlidingWindow | None = None) -> torch.Tensor:
    """Logits (N, classes, D, S, S) of ``x`` (N, 1, D, S, S) by sliding windows of
    ``patch_depth`` slices (the caller sets no-grad and autocast)."""
    sw = sw or SlidingWindow()
    size = x.shape[-1]
    # MONAI is imported here, not with the module: its import costs seconds (monai3d.py)
    from monai.inferers import sliding_window_inference

    out = sliding_window_inference(
        x, roi_size=(patch_depth, size, size), sw_batch_size=sw.batch_size, predictor=model,
        overlap=(sw.overlap, 0.0, 0.0), roi_weight_map=sw.weight_map(patch_depth, size, x.device),
        sw_device=x.device, device=sw.device if sw.device is not None else x.device,
    )  # fmt: skip
    return out.as_tensor() if hasattr(out, "as_tensor") else out


@torch.no_grad()
def predict_probs_3d(
    model: nn.Module, vol: np.ndarray, patch_depth: int, tta=(), device=None, amp: str | None = None,
    sw: SlidingWindow | None = None,
) -> np.ndarray:  # fmt: skip
    """Sigmoid probabilities float32 (D, classes, S, S) of one preprocessed scan ``vol``
    float32 (D, S, S), averaged over the identity and the ``tta`` flips (axes of
    :data:`gi_utils.inference.predict.TTA_FLIPS`, given as a list of axis tuples)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    autocast = inference_autocast(device, amp)  # resolved once, entered per flip
    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(vol, dtype=np.float32))[None, None].to(device)
    total = None
    flips = [(), *tta]
    for f in flips:
        with autocast:
            logits = sliding_logits(model, x.flip(f) if f else x, patch_depth, sw)
        p = logits.float().sigmoid()
        p = p.flip(f) if f else p
        total = p if total is None else total + p
    return (total[0] / len(flips)).transpose(0, 1).cpu().numpy()
