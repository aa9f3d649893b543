"""Stochastic weight averaging over the last epochs of a run (``TrainConfig.swa_epochs``):
the 3rd place's SWA "over the last epochs, with a BN update", the 2nd place's over
epochs 11-21 of 21.

The weights a run validates (the moving average when ``ema_decay`` > 0, else the raw
ones) are averaged at the end of each of its last ``swa_epochs`` epochs, equally
(torch's :class:`~torch.optim.swa_utils.AveragedModel`, parameters only); after the
last epoch the BatchNorm statistics of the average are recomputed by one pass over the
training batches (:func:`torch.optim.swa_utils.update_bn`; a model without BatchNorm,
such as MONAI's SegResNet with group norm, keeps its statistics-free layers as they
are). :class:`~gi_utils.training.session.TrainingRun` then validates the average like one
more epoch: it becomes the run's best model (``best.safetensors``, the out-of-fold set)
when it scores better, and always for ``fold=-1``. Its state travels in ``last.pt``, so
a resumed run averages the epochs of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn

__all__ = ["SwaAverage"]


class _InContext(nn.Module):
    """``module``'s forward inside ``context()`` (its BatchNorm layers stay its children)."""

    def __init__(self, module: nn.Module, context) -> None:
        super().__init__()
        self.module, self.context = module, context

    def forward(self, x: torch.Tensor):
        with self.context():
            return self.module(x)


class SwaAverage:
    """The equal-weight average of a model's weights at the end of epochs
    ``epochs - n + 1 .. epochs`` (numbered from 1).

    Args:
        model: the model whose weights are averaged (copied; never changed here).
        epochs: the run's epochs.
        n: how many of the last epochs (``1 <= n <= epochs``).
    """

    def __init__(self, model: nn.Module, epochs: int, n: int) -> None:
        if not 1 <= n <= epochs:
            raise ValueError(f"swa_epochs must be in 1..epochs ({epochs}), got {n}")
        self.first = int(epochs) - int(n) + 1
        device = next(model.parameters()).device
        self.average = AveragedModel(model, device=device, use_buffers=False)

    @property
    def module(self) -> nn.Module:
        """The averaged model (what is validated and saved)."""
        return self.average.module

    @property
    def n_averaged(self) -> int:
        """How many epochs' weights the average holds."""
        return int(self.average.n_averaged)

    def collect(self, model: nn.Module, epoch: int) -> bool:
        """Add ``model``'s weights at the end of ``epoch`` (from 1) when it is one of the
        averaged epochs; returns whether it was."""
        if epoch < self.first:
            return False
        self.average.update_parameters(model)
        return True

    def update_bn(self, batches: Iterable[Any], memory_format: torch.memory_format = torch.contiguous_format,
                  autocast=None) -> None:  # fmt: skip
        """Recompute the average's BatchNorm statistics over ``batches`` (``(images,
        masks)`` pairs on the model's device; one epoch of training batches), the forward
        passes in ``autocast`` (a context manager factory, e.g. accelerate's) when given
        (the batches are made outside it)."""
        images = (b[0].contiguous(memory_format=memory_format) for b in batches)
        update_bn(images, _InContext(self.module, autocast or contextlib.nullcontext))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.average.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.average.load_state_dict(state)
