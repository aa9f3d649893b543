"""Training losses for multilabel sigmoid outputs ``(N, 3, H, W)``, built on smp's losses.

Every loss is a :class:`WeightedSumLoss` of :mod:`segmentation_models_pytorch.losses`
terms (``SoftBCEWithLogitsLoss``, ``DiceLoss(mode="multilabel", from_logits=True)``,
``TverskyLoss``, ``LovaszLoss``); nothing is re-implemented here. Build one by name with
:func:`build_loss`; the valid names are the keys of :data:`LOSSES`.

Empty masks: smp's Dice and Tversky terms are computed per channel over the whole batch
and a channel with no true pixel in the batch contributes 0, whatever is predicted. So
false positives on empty slices are penalised only through the BCE term; a pure
``"dice"`` or ``"tversky"`` loss ignores them. The Lovász hinge (``"bce_dice_lovasz"``, the
3rd place's ComboLoss) treats the batch's three channels as one binary problem
(smp's ``mode="multilabel"``, ``per_image=False``), so it sees empty channels too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from segmentation_models_pytorch.losses import (
    DiceLoss,
    LovaszLoss,
    SoftBCEWithLogitsLoss,
    TverskyLoss,
)
from torch import nn

__all__ = [
    "WeightedSumLoss",
    "LOSSES",
    "build_loss",
    "bce_dice",
    "bce_tversky",
    "bce_dice_lovasz",
    "bce",
    "dice",
    "tversky",
]


class WeightedSumLoss(nn.Module):
    """``sum_i weight_i * term_i(logits, target)``.

    Args:
        terms: ``name -> (loss module, weight)``; weights must be >= 0.

    Call with ``logits`` float ``(N, C, H, W)`` and ``target`` ``(N, C, H, W)`` of 0/1
    (float, bool or integer); returns a scalar tensor.
    """

    def __init__(self, terms: dict[str, tuple[nn.Module, float]]) -> None:
        super().__init__()
        for name, (_, weight) in terms.items():
            if not weight >= 0:
                raise ValueError(f"weight of loss term {name!r} is {weight}; expected >= 0")
        self.terms = nn.ModuleDict({name: module for name, (module, _) in terms.items()})
        self.weights = {name: float(weight) for name, (_, weight) in terms.items()}

    def parts(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each term's unweighted value, for logging."""
        if logits.shape != target.shape:
            raise ValueError(
                f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must have the same shape"
            )
        target = target.type_as(logits)
        return {name: term(logits, target) for name, term in self.terms.items()}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        parts = self.parts(logits, target)
        return sum(self.weights[name] * value for name, value in parts.items())

    def extra_repr(self) -> str:
        return "weights=" + ", ".join(f"{n}: {w:g}" for n, w in self.weights.items())


def _bce(pos_weight: float | None = None, smooth_factor: float | None = None) -> nn.Module:
    pw = None if pos_weight is None else torch.tensor(float(pos_weight))
    return SoftBCEWithLogitsLoss(ignore_index=None, smooth_factor=smooth_factor, pos_weight=pw)


def bce_dice(
    bce_weight: float = 0.5,
    dice_weight: float = 0.5,
    smooth: float = 0.0,
    pos_weight: float | None = None,
) -> WeightedSumLoss:
    """``bce_weight * BCE + dice_weight * (1 - soft Dice)``, the usual choice for this task."""
    return WeightedSumLoss(
        {
            "bce": (_bce(pos_weight), bce_weight),
            "dice": (DiceLoss(mode="multilabel", from_logits=True, smooth=smooth), dice_weight),
        }
    )


def bce_tversky(
    bce_weight: float = 0.5,
    tversky_weight: float = 0.5,
    alpha: float = 0.3,
    beta: float = 0.7,
    gamma: float = 1.0,
    pos_weight: float | None = None,
) -> WeightedSumLoss:
    """``bce_weight * BCE + tversky_weight * (1 - Tversky)``.

    ``alpha`` weighs false positives and ``beta`` false negatives (``alpha = beta = 0.5``
    is Dice); the default ``beta > alpha`` favours recall of the thin bowel loops.
    """
    tv = TverskyLoss(mode="multilabel", from_logits=True, alpha=alpha, beta=beta, gamma=gamma)
    return WeightedSumLoss({"bce": (_bce(pos_weight), bce_weight), "tversky": (tv, tversky_weight)})


def bce_dice_lovasz(
    bce_weight: float = 0.5,
    dice_weight: float = 0.5,
    lovasz_weight: float = 1.0,
    smooth: float = 0.0,
    pos_weight: float | None = None,
) -> WeightedSumLoss:
    """``bce_weight * BCE + dice_weight * (1 - soft Dice) + lovasz_weight * Lovász hinge``:
    the 3rd place's ComboLoss (BCE 0.5, Dice 0.5, Lovász 1). The Lovász term is smp's
    ``LovaszLoss(mode="multilabel", per_image=False)``: one hinge over every pixel and
    channel of the batch (it expects 0/1 targets; with MixUp's soft targets it takes
    ``2 t - 1`` as the sign, as smp does)."""
    return WeightedSumLoss(
        {
            "bce": (_bce(pos_weight), bce_weight),
            "dice": (DiceLoss(mode="multilabel", from_logits=True, smooth=smooth), dice_weight),
            "lovasz": (LovaszLoss(mode="multilabel", per_image=False, from_logits=True), lovasz_weight),
        }
    )


def bce(pos_weight: float | None = None, smooth_factor: float | None = None) -> WeightedSumLoss:
    """Binary cross-entropy on logits (``smooth_factor``: label smoothing)."""
    return WeightedSumLoss({"bce": (_bce(pos_weight, smooth_factor), 1.0)})


def dice(smooth: float = 0.0, log_loss: bool = False) -> WeightedSumLoss:
    """``1 - soft Dice`` (or ``-log`` of it); blind to false positives on empty channels."""
    return WeightedSumLoss(
        {
            "dice": (
                DiceLoss(mode="multilabel", from_logits=True, smooth=smooth, log_loss=log_loss),
                1.0,
            )
        }
    )


def tversky(alpha: float = 0.3, beta: float = 0.7, gamma: float = 1.0) -> WeightedSumLoss:
    """``(1 - Tversky) ** gamma``; blind to false positives on empty channels."""
    tv = TverskyLoss(mode="multilabel", from_logits=True, alpha=alpha, beta=beta, gamma=gamma)
    return WeightedSumLoss({"tversky": (tv, 1.0)})


#: Loss name -> factory; the factories' keyword arguments are the loss settings.
LOSSES: dict[str, Callable[..., WeightedSumLoss]] = {
    "bce_dice": bce_dice,
    "bce_tversky": bce_tversky,
    "bce_dice_lovasz": bce_dice_lovasz,
    "bce": bce,
    "dice": dice,
    "tversky": tversky,
}


def build_loss(name: str = "bce_dice", **kwargs) -> WeightedSumLoss:
    """Build a loss by name, e.g. ``build_loss("bce_dice", bce_weight=0.3, dice_weight=0.7)``.

    Raises:
        KeyError: unknown name; the message lists the valid names.
        TypeError: a keyword the named factory does not take.
    """
    try:
        factory = LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown loss {name!r}; valid names: {sorted(LOSSES)}") from None
    return factory(**kwargs)
