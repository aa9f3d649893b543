"""Losses: hand-computed values on tiny tensors, the empty-slice behaviour, the registry."""

from __future__ import annotations

import math

import pytest
import torch

from gi_utils.losses import LOSSES, WeightedSumLoss, build_loss


def _half_and_one_pixel():
    """Logits 0 (p = 0.5) on a (1, 3, 2, 2) batch; one true pixel per channel."""
    logits = torch.zeros(1, 3, 2, 2, requires_grad=True)
    target = torch.zeros(1, 3, 2, 2)
    target[:, :, 0, 0] = 1
    return logits, target


def test_registry_and_unknown_name():
    assert {"bce_dice", "bce_tversky", "bce", "dice"} <= set(LOSSES)
    for name in LOSSES:
        assert isinstance(build_loss(name), WeightedSumLoss)
    with pytest.raises(KeyError, match="bce_dice") as err:
        build_loss("bce_dyce")
    assert "bce_dyce" in str(err.value)
    with pytest.raises(TypeError):
        build_loss("bce", dice_weight=1.0)


def test_bce_of_zero_logits_is_log_two():
    logits, target = _half_and_one_pixel()
    assert build_loss("bce")(logits, target).item() == pytest.approx(math.log(2))


def test_dice_hand_computed():
    # per channel: sum(p * t) = 0.5, sum(p) = 2, sum(t) = 1 -> Dice 2 * 0.5 / 3 = 1/3
    logits, target = _half_and_one_pixel()
    assert build_loss("dice")(logits, target).item() == pytest.approx(2 / 3)


def test_bce_dice_weights():
    logits, target = _half_and_one_pixel()
    assert build_loss("bce_dice")(logits, target).item() == pytest.approx(
        0.5 * math.log(2) + 0.5 * 2 / 3
    )
    loss = build_loss("bce_dice", bce_weight=1.0, dice_weight=2.0)
    assert loss(logits, target).item() == pytest.approx(math.log(2) + 4 / 3)
    parts = loss.parts(logits, target)
    assert parts["bce"].item() == pytest.approx(math.log(2)) and parts[
        "dice"
    ].item() == pytest.approx(2 / 3)


def test_bce_tversky_hand_computed():
    # TP = 0.5, FP = 3 * 0.5 = 1.5, FN = 0.5 -> T = 0.5 / (0.5 + 0.3 * 1.5 + 0.7 * 0.5) = 0.5 / 1.3
    logits, target = _half_and_one_pixel()
    tv = 1 - 0.5 / 1.3
    assert build_loss("tversky")(logits, target).item() == pytest.approx(tv)
    loss = build_loss("bce_tversky", bce_weight=0.25, tversky_weight=0.75)
    assert loss(logits, target).item() == pytest.approx(0.25 * math.log(2) + 0.75 * tv)
    # alpha = beta = 0.5 is Dice
    assert build_loss("tversky", alpha=0.5, beta=0.5)(logits, target).item() == pytest.approx(2 / 3)


def test_perfect_prediction_is_near_zero_and_gradients_flow():
    logits, target = _half_and_one_pixel()
    sure = (target * 2 - 1) * 20  # +20 on true pixels, -20 elsewhere
    for name in LOSSES:
        assert build_loss(name)(sure, target).item() == pytest.approx(0.0, abs=1e-6)
    loss = build_loss("bce_dice")(logits, target)
    loss.backward()
    assert (
        logits.grad is not None
        and torch.isfinite(logits.grad).all()
        and logits.grad.abs().sum() > 0
    )


def test_false_positives_on_an_empty_slice_cost_only_through_bce():
    logits = torch.full((1, 3, 2, 2), 10.0)  # confident foreground everywhere
    empty = torch.zeros(1, 3, 2, 2)
    assert build_loss("dice")(logits, empty).item() == 0.0  # smp ignores channels without truth
    assert build_loss("tversky")(logits, empty).item() == 0.0
    combined = build_loss("bce_dice")(logits, empty).item()
    assert combined > 0 and combined == pytest.approx(0.5 * (10 + math.log1p(math.exp(-10))))
    assert build_loss("bce_tversky")(logits, empty).item() > 0


def test_target_dtype_and_shape_checks():
    logits, target = _half_and_one_pixel()
    loss = build_loss("bce_dice")
    assert loss(logits, target.bool()).item() == pytest.approx(loss(logits, target).item())
    with pytest.raises(ValueError, match="same shape"):
        loss(logits, target[:, :2])
    with pytest.raises(ValueError, match="'dice'"):
        build_loss("bce_dice", dice_weight=-1.0)
    assert "bce: 0.5" in repr(loss)


# --------------------------------------------------------------------------- Lovász (3rd place's ComboLoss)
def test_lovasz_hand_computed():
    # zero logits: every hinge error is 1 - 0 = 1, so the loss is the Jaccard loss of
    # predicting every pixel positive at the end of the sorted list: 1 - 0 / union = 1
    logits, target = _half_and_one_pixel()
    loss = build_loss("bce_dice_lovasz", bce_weight=0.0, dice_weight=0.0, lovasz_weight=1.0)
    assert loss(logits, target).item() == pytest.approx(1.0)
    # a margin of 2 on every pixel: errors 1 - 2 = -1 are clipped to 0
    perfect = (2 * target - 1) * 2
    assert loss(perfect, target).item() == pytest.approx(0.0)


def test_lovasz_term_equals_smp_on_a_known_case():
    from segmentation_models_pytorch.losses import LovaszLoss

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=gen)
    target = (torch.rand(2, 3, 8, 8, generator=gen) > 0.7).float()
    combo = build_loss("bce_dice_lovasz")
    parts = combo.parts(logits, target)
    smp_value = LovaszLoss(mode="multilabel", per_image=False)(logits, target)
    assert parts["lovasz"].item() == pytest.approx(smp_value.item(), rel=1e-6)
    expected = 0.5 * parts["bce"] + 0.5 * parts["dice"] + 1.0 * parts["lovasz"]
    assert combo(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    assert combo.weights == {"bce": 0.5, "dice": 0.5, "lovasz": 1.0}
