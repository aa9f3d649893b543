"""The training order: which slices an epoch draws and the seed of each sample's
augmentation, both functions of ``(seed, epoch)`` only, so a resumed or multi-process run
sees exactly the samples of an uninterrupted one."""

from __future__ import annotations

import random

import numpy as np
from torch.utils.data import Dataset, Sampler

__all__ = ["EpochSampler", "SeededSamples"]


class EpochSampler(Sampler[int]):
    """Sample order of one epoch, a function of ``(seed, epoch)`` only.

    Every slice with an organ, plus ``round(empty_fraction * n_empty)`` slices without
    one drawn afresh each epoch, shuffled and cut to ``max_samples``. The yielded
    numbers encode the epoch (``epoch * n + index``) so that :class:`SeededSamples`
    can seed each sample's augmentation, whatever worker or process loads it.
    ``skip`` leaves out the first samples of the epoch (resuming in its middle).
    ``exclude`` (bool, one per sample) marks samples never drawn (the tail filter,
    :func:`gi_utils.data.tail_slices`); they stay in the dataset as others' neighbours.
    """

    def __init__(
        self, empty: np.ndarray, seed: int, empty_fraction: float = 1.0, max_samples: int = 0,
        exclude: np.ndarray | None = None,
    ) -> None:  # fmt: skip
        empty = np.asarray(empty, dtype=bool)
        self.n, self.seed, self.epoch, self.skip = len(empty), int(seed), 0, 0
        drawn = np.ones(self.n, bool) if exclude is None else ~np.asarray(exclude, dtype=bool)
        if len(drawn) != self.n:
            raise ValueError(f"EpochSampler: exclude has {len(drawn)} entries for {self.n} samples")
        self.organ, self.empty = np.flatnonzero(~empty & drawn), np.flatnonzero(empty & drawn)
        self.n_empty = int(round(empty_fraction * len(self.empty)))
        total = len(self.organ) + self.n_empty
        self.length = min(total, max_samples) if max_samples else total

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self, epoch: int) -> np.ndarray:
        """Dataset indices of ``epoch``, in order."""
        rng = np.random.default_rng([self.seed, epoch])
        empty = (
            rng.choice(self.empty, self.n_empty, replace=False) if self.n_empty else self.empty[:0]
        )
        idx = np.concatenate([self.organ, empty])
        rng.shuffle(idx)
        return idx[: self.length]

    def __iter__(self):
        return iter((self.epoch * self.n + self.indices(self.epoch)[self.skip :]).tolist())

    def __len__(self) -> int:
        return max(self.length - self.skip, 0)


class _SampleSeededTransform:
    """Wraps an albumentations Compose; each call draws from a generator seeded by ``key``."""

    def __init__(self, compose) -> None:
        self.compose, self.key = compose, (0, 0, 0)

    def set_random_seed(self, seed: int | None) -> None:
        """Ignored: the per-sample seed replaces SliceDataset's per-worker seed."""

    def __call__(self, **data):
        seq = np.random.SeedSequence(self.key)
        py_seed = int(seq.generate_state(1)[0])
        self.compose.set_random_state(np.random.default_rng(seq), random.Random(py_seed))
        return self.compose(**data)


class SeededSamples(Dataset):
    """Training view of a dataset: index ``epoch * n + i`` -> sample ``i`` drawn with the
    seed ``(seed, epoch, i)``: a SliceDataset's albumentations augmentation, or what a
    dataset with a ``seed_sample(key)`` method draws itself (the 3-D patches).

    Several views may share one dataset (a benchmark's worker counts and batch sizes):
    its transform is wrapped once, and each view sets the key before every sample."""

    def __init__(self, base: Dataset, seed: int) -> None:
        self.base, self.seed, self.n = base, int(seed), len(base)
        self.own_seed = hasattr(base, "seed_sample")
        transform = getattr(base, "transform", None)
        if not self.own_seed and transform is not None and not isinstance(transform, _SampleSeededTransform):
            base.transform = _SampleSeededTransform(transform)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, j: int):
        epoch, i = divmod(int(j), self.n)
        if self.own_seed:
            self.base.seed_sample((self.seed, epoch, i))
        elif isinstance(self.base.transform, _SampleSeededTransform):
            self.base.transform.key = (self.seed, epoch, i)
        return self.base[i]
