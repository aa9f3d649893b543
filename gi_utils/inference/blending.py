"""One blend of several models' outputs: the weights checked and normalised, the weighted
mean of their probabilities and the weighted mean of the gates of the members that have a
classifier head.

Prediction (:func:`gi_utils.inference.predict_volume`), the ensemble of out-of-fold sets
(:class:`gi_utils.evaluation.Blend`) and the hold-out of several candidates
(:func:`gi_utils.report.holdout_table`) all blend through :func:`blend`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence, Sized

import numpy as np

__all__ = ["blend", "normalised_weights"]

Member = tuple[np.ndarray | None, np.ndarray | None]


def normalised_weights(weights: Sequence[float] | None, n: int) -> np.ndarray:
    """``weights`` checked (one non-negative value per member, not all 0) and divided by
    their sum, as float64; ``None``: ``n`` equal weights.

    Raises:
        ValueError: the weights are not ``n`` non-negative values, or all 0.
    """
    w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (n,) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights {list(np.atleast_1d(w))} must be {n} non-negative values, not all 0")
    return w / w.sum()


def blend(
    members: Iterable[Member], weights: Sequence[float] | None = None, *, n: int | None = None,
    dtype: type[np.floating] = np.float32,
) -> Member:  # fmt: skip
    """The weighted mean of ``members``' probabilities and of their gates.

    Args:
        members: ``(probs, gate)`` per member, all probabilities of one shape (an
            iterable: each is read when its turn comes, so a member can be computed
            then). A member given without probabilities (``None``) adds nothing to them
            but keeps its place (and its weight) in the blend: a caller that sums the
            members in parts (:func:`~gi_utils.inference.predict_volume`, one part per
            input size) blends each part with the others' left out. A member without a
            gate (``None``) is left out of the gates' mean.
        weights: one non-negative weight per member, not all 0, normalised here to sum
            to 1 (:func:`normalised_weights`); ``None``: equal weights.
        n: the number of members (needed only when ``members`` has no length and
            ``weights`` is ``None``).
        dtype: the type each weight takes before it multiplies an array (``float32``
            keeps float32 arrays so; ``float64`` sums uint8 probabilities exactly enough
            to round them back).

    Returns:
        ``(Σ w·probs or None when no member has any, Σ w·gate / Σ w over the members
        with a gate, or None when none has one, or only with weight 0)``.

    Raises:
        ValueError: the weights are not one non-negative value per member, or all 0.
    """
    if n is None:
        n = len(members) if isinstance(members, Sized) or weights is None else len(weights)  # type: ignore[arg-type]
    w = normalised_weights(weights, n)
    total = gate_total = None
    gate_weight = 0.0
    for (probs, gate), wk in zip(members, w, strict=True):
        wd = dtype(wk)
        if probs is not None:
            total = wd * probs if total is None else total + wd * probs
        if gate is not None:
            gate_total = wd * gate if gate_total is None else gate_total + wd * gate
            gate_weight += float(wk)
    return total, (gate_total / dtype(gate_weight) if gate_weight else None)
