"""One training epoch: forward, loss, backward, optimizer and scheduler steps, with
accelerate's accumulation and a check that the loss stays finite.

The losses stay on the device and are read back together every :data:`LOSS_CHECK_EVERY`
batches (:class:`LossTally`): reading one back makes the host wait until the device has
finished the step, so checking every step would keep the host from queueing the next one.
A NaN is still caught, at most that many batches late, before any checkpoint is written
(a checkpoint reads the running loss first), and named with its batch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from gi_utils.models.registry import split_outputs
from gi_utils.progress import progress_bar

__all__ = ["LOSS_CHECK_EVERY", "LossTally", "NonFiniteLossError", "train_one_epoch"]

#: Batches whose losses are read back (and checked finite) together: one wait for the
#: device per this many steps instead of one per step.
LOSS_CHECK_EVERY: int = 32


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the last checkpoint on disk is kept."""


class LossTally:
    """The running loss of an epoch: each batch's loss kept on the device, read back every
    ``every`` batches (or when :attr:`loss_sum` is asked), summed on the host in batch
    order (the sum of reading each one back at once, to the bit).

    Raises:
        NonFiniteLossError: at the read-back, for the first NaN or infinite loss (its
            batch and the batches read back with it named).
    """

    def __init__(self, loss_sum: float = 0.0, n_batches: int = 0, every: int = LOSS_CHECK_EVERY,
                 desc: str = "train") -> None:  # fmt: skip
        if every < 1:
            raise ValueError(f"LossTally: every={every}; expected >= 1")
        self._sum, self._read, self.every, self.desc = float(loss_sum), int(n_batches), int(every), desc
        self._pending: list[torch.Tensor] = []

    @property
    def n_batches(self) -> int:
        """Batches added so far (read back or not)."""
        return self._read + len(self._pending)

    @property
    def loss_sum(self) -> float:
        """The sum of the losses so far: the pending ones read back (a wait) and checked."""
        self.check()
        return self._sum

    def add(self, loss: torch.Tensor) -> bool:
        """Add one batch's loss (a 0-d tensor); True when this read the pending ones back."""
        self._pending.append(loss.detach())
        if len(self._pending) < self.every:
            return False
        self.check()
        return True

    def check(self) -> None:
        """Read the pending losses back (one wait for the device) and add them in order."""
        if not self._pending:
            return
        values = torch.stack(self._pending).tolist()
        first, last = self._read + 1, self._read + len(values)
        for k, value in enumerate(values):
            if not math.isfinite(value):
                raise NonFiniteLossError(f"{self.desc}: loss is {value} at batch {first + k} (batches {first}-{last} "
                                         "read back together)")  # fmt: skip
            self._sum += value
        self._read, self._pending = last, []


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
    check_every: int = LOSS_CHECK_EVERY,
    mix=None,
    seg_weight: float = 1.0,
) -> tuple[float, int]:
    """One pass over ``loader``: forward, loss, backward, optimizer and scheduler step.

    Args:
        acc: the Accelerator the model, optimizer and loader were prepared with.
        loader: yields ``(image (N, C, S, S), mask (N, 3, S, S))`` batches.
        loss_sum, n_batches: running totals when resuming in the middle of an epoch.
        on_step: called as ``on_step(tally, n_batches)`` after every optimizer step
            (``tally.loss_sum``, the running sum, waits for the device: ask it only to save).
        memory_format: layout the images are put in (``torch.channels_last`` to match a
            channels-last model).
        gate_weight: weight of the classifier gate's BCE against the presence of each
            class on each slice (models with a gate head).
        check_every: batches whose losses are read back and checked together (:class:`LossTally`).
        mix: ``mix(images, masks, b) -> (images, masks)`` applied to batch ``b`` of the
            epoch (counted from 0 on this process) before the forward pass: CutMix/MixUp
            (:class:`gi_utils.data.BatchMix`); ``None``: the batches as they come.
        seg_weight: weight of the segmentation loss (0: a classifier-only run).

    Returns:
        ``(loss_sum, n_batches)``; the epoch's mean loss is their ratio.

    Raises:
        NonFiniteLossError: a batch gave a NaN or infinite loss (raised when it is read
            back: at most ``check_every`` batches later, or when ``on_step`` asks the sum).
    """
    model.train()
    tally = LossTally(loss_sum, n_batches, check_every, desc)
    bar = progress_bar(loader, desc, progress, leave=False)
    for images, masks in bar:
        if mix is not None:
            images, masks = mix(images, masks, tally.n_batches)
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
        if acc.num_processes > 1:  # all ranks see the same values, so all stop together
            value = acc.reduce(value, "mean")
        if tally.add(value) and progress:
            bar.set_postfix(loss=f"{tally.loss_sum / tally.n_batches:.4f}", refresh=False)
        if on_step is not None and acc.sync_gradients:
            on_step(tally, tally.n_batches)
    return tally.loss_sum, tally.n_batches
