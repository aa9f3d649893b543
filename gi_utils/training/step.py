"""One training epoch: forward, loss, backward, optimizer and scheduler steps, with
accelerate's accumulation and a check that the loss stays finite."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from gi_utils.models.registry import split_outputs
from gi_utils.progress import progress_bar

__all__ = ["NonFiniteLossError", "train_one_epoch"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the last checkpoint on disk is kept."""


def train_one_epoch(
    acc: Accelerator,
    model: torch.nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    loss_fn: torch.nn.Module,
    *,
    desc: str = "train",
    progress: bool = True,
    loss_sum: float = 0.0,
    n_batches: int = 0,
    on_step=None,
    memory_format: torch.memory_format = torch.contiguous_format,
    gate_weight: float = 0.0,
    mix=None,
    seg_weight: float = 1.0,
) -> tuple[float, int]:
    """One pass over ``loader``: forward, loss, backward, optimizer and scheduler step.

    Args:
        acc: the Accelerator the model, optimizer and loader were prepared with.
        loader: yields ``(image (N, C, S, S), mask (N, 3, S, S))`` batches.
        loss_sum, n_batches: running totals when resuming in the middle of an epoch.
        on_step: called as ``on_step(loss_sum, n_batches)`` after every optimizer step.
        memory_format: layout the images are put in (``torch.channels_last`` to match a
            channels-last model).
        gate_weight: weight of the classifier gate's BCE against the presence of each
            class on each slice (models with a gate head).
        mix: ``mix(images, masks, b) -> (images, masks)`` applied to batch ``b`` of the
            epoch (counted from 0 on this process) before the forward pass: CutMix/MixUp
            (:class:`gi_utils.data.BatchMix`); ``None``: the batches as they come.
        seg_weight: weight of the segmentation loss (0: a classifier-only run).

    Returns:
        ``(loss_sum, n_batches)``; the epoch's mean loss is their ratio.

    Raises:
        NonFiniteLossError: a batch gave a NaN or infinite loss.
    """
    model.train()
    bar = progress_bar(loader, desc, progress, leave=False)
    for images, masks in bar:
        if mix is not None:
            images, masks = mix(images, masks, n_batches)
        images = images.contiguous(memory_format=memory_format)
        with acc.accumulate(model):
            seg, gate = split_outputs(model(images))
            loss = seg_weight * loss_fn(seg.float(), masks)
            if gate is not None:
                present = masks.flatten(2).amax(-1).to(gate.dtype)  # (N, 3): organ on the slice
                loss = loss + gate_weight * F.binary_cross_entropy_with_logits(gate.float(), present.float())
            acc.backward(loss)
            optimizer.step()
            if acc.sync_gradients:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        value = loss.detach()
        if acc.num_processes > 1:  # all ranks see the same value, so all stop together
            value = acc.reduce(value, "mean")
        value = float(value)
        if not math.isfinite(value):
            raise NonFiniteLossError(f"{desc}: loss is {value} at batch {n_batches + 1}")
        loss_sum, n_batches = loss_sum + value, n_batches + 1
        if progress:
            bar.set_postfix(loss=f"{loss_sum / n_batches:.4f}", refresh=False)
        if on_step is not None and acc.sync_gradients:
            on_step(loss_sum, n_batches)
    return loss_sum, n_batches
