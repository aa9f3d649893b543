"""Batch size and learning rate across processes and accumulation steps.

``batch_size`` is per process, so one optimizer step sees :func:`effective_batch_size`
``= batch_size x num_processes x grad_accum`` samples; the learning rate stays ``lr``
unless ``TrainConfig.scale_lr`` asks for the ``"linear"`` or ``"sqrt"`` rule of
:func:`effective_lr`.
"""

from __future__ import annotations

import math

__all__ = ["LR_SCALING", "effective_batch_size", "effective_lr"]

#: Learning-rate scaling rules of ``TrainConfig.scale_lr`` (see :func:`effective_lr`).
LR_SCALING: tuple[str, ...] = ("none", "linear", "sqrt")


def effective_batch_size(batch_size: int, num_processes: int, grad_accum: int) -> int:
    """Samples per optimizer step: ``batch_size`` (per process) x processes x accumulation."""
    return int(batch_size) * int(num_processes) * int(grad_accum)


def effective_lr(lr: float, num_processes: int, grad_accum: int, rule: str = "none") -> float:
    """Peak learning rate of a run, scaled from the one-process, no-accumulation ``lr``.

    With ``k = num_processes * grad_accum`` (the batch grows k-fold):
    ``"none"`` -> ``lr``; ``"linear"`` -> ``lr * k`` (Goyal et al. 2017, for SGD-like
    optimisers with warm-up); ``"sqrt"`` -> ``lr * sqrt(k)`` (often safer for Adam/AdamW).
    ``k = 1`` gives ``lr`` under every rule.

    Raises:
        ValueError: an unknown ``rule`` (the valid ones are listed), or ``num_processes`` /
            ``grad_accum`` below 1.
    """
    if rule not in LR_SCALING:
        raise ValueError(f"scale_lr={rule!r} is not valid; choose one of {', '.join(LR_SCALING)}")
    for name, value in (("num_processes", num_processes), ("grad_accum", grad_accum)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    k = num_processes * grad_accum
    return float(lr) * {"none": 1.0, "linear": float(k), "sqrt": math.sqrt(k)}[rule]
