"""Ensembles on out-of-fold predictions: a weighted mean of the members' probabilities on
the case-days every member covers, scored and searched like one model.

Members at another ``img_size`` than the first are resized to it (linear, per slice);
the truth is the first member's. The classifier gate is the weighted mean of the members
that have one. The blend is computed one volume at a time and quantised to uint8 like the
OOF files, so the search and the scoring treat it exactly like a single model's set.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import cv2
import numpy as np

from gi_utils.evaluation.oof import OOFCollection
from gi_utils.inference.blending import blend, normalised_weights

__all__ = ["Blend", "weight_grid"]


class Blend:
    """A weighted mean of OOF collections (see the module docstring).

    Args:
        members: the collections, one per model (architecture).
        weights: one non-negative weight per member, default equal (normalised when
            blended, :func:`gi_utils.inference.normalised_weights`).
        case_days: restrict to these (default: those all members cover, in the first
            member's order).
    """

    def __init__(self, members: Sequence[OOFCollection], weights: Sequence[float] | None = None,
                 case_days: Sequence[str] | None = None) -> None:  # fmt: skip
        if not members:
            raise ValueError("a blend needs at least one member")
        normalised_weights(weights, len(members))  # checked here, where the blend is made
        self.members, self.weights = list(members), weights
        common = [cd for cd in members[0].case_days if all(cd in m.owner for m in members[1:])]
        if case_days is not None:
            missing = [cd for cd in case_days if cd not in set(common)]
            if missing:
                raise ValueError(f"case-days {missing[:3]} are not covered by every member of the blend")
            common = list(case_days)
        self.case_days = common
        self.img_size = members[0].img_size
        self.name = " + ".join(m.name for m in members)

    @property
    def has_gate(self) -> bool:
        return any(m.has_gate for m in self.members)

    def source(self, case_days: Sequence[str] | None = None, truth: bool = True):
        """Blended volumes as ``(case_day, probs uint8, truth or None, gate)``."""
        for cd in case_days if case_days is not None else self.case_days:
            true = []  # the first member's truth
            total, gate = blend((self._member(m, cd, truth and k == 0, true) for k, m in enumerate(self.members)),
                                self.weights, n=len(self.members), dtype=np.float64)  # fmt: skip
            probs = np.clip(np.round(total), 0, 255).astype(np.uint8)
            yield cd, probs, true[0], gate

    def _member(self, member: OOFCollection, cd: str, truth: bool, true: list) -> tuple[np.ndarray, np.ndarray | None]:
        """One member's probabilities at the blend's size (float32) and its gate."""
        v = member.volume(cd, truth)
        probs = v.probs.astype(np.float32)
        if probs.shape[1] != self.img_size:
            probs = np.stack([cv2.resize(p, (self.img_size, self.img_size), interpolation=cv2.INTER_LINEAR)
                              for p in probs])  # fmt: skip
        true.append(v.truth)
        return probs, v.gate


def weight_grid(n_members: int, step: float = 0.1) -> list[tuple[float, ...]]:
    """Weight vectors on a grid of ``step`` summing to 1, every member > 0 (``n_members``
    = 1 gives ``[(1.0,)]``); e.g. 2 members: (0.1, 0.9), ..., (0.9, 0.1)."""
    k = int(round(1 / step))
    out = []
    for combo in itertools.product(range(1, k), repeat=n_members - 1):
        last = k - sum(combo)
        if last >= 1:
            out.append(tuple(round(c / k, 6) for c in (*combo, last)))
    return out or [(1.0,)]
