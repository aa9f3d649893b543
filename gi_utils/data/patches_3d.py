"""The 3-D datasets: patches of consecutive slices for training, whole scans for validation.

Both read the memory-mapped :class:`~gi_utils.data.cache.VolumeCache` (every scan decoded,
normalised and resized in-plane to the model's size once; the slice axis kept), so an
epoch decodes no PNG and nothing holds the dataset in RAM: a patch is a slice of the
memory-mapped arrays.

Training (:class:`PatchDataset`): ``patches_per_volume`` samples per scan and epoch, each
``patch_depth`` consecutive slices at a random depth; with probability
:data:`FOREGROUND_OVERSAMPLE` the patch is centred (give or take a quarter of its depth) on
a slice with an organ, as nnU-Net oversamples foreground. Where the patch lands and its
augmentation are drawn from a generator seeded by ``seed_sample((seed, epoch, i))``
(:class:`gi_utils.training.sampler.SeededSamples` calls it), so resuming is exact.
A scan shorter than the patch is padded at its end with zeros. With ``crop`` (the 1st
place's small 3-D crops, ``TrainConfig.patch_size``) a patch is a ``crop`` x ``crop``
window of the slices, placed uniformly (:meth:`PatchDataset.crop_of`, seeded the same way).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from gi_utils.data.cache import VolumeCache, cached_as, scan_packed_masks
from gi_utils.data.layout import sort_slices
from gi_utils.data.masks import unpack_masks

__all__ = ["FOREGROUND_OVERSAMPLE", "PatchDataset", "VolumeDataset"]

#: Share of training patches centred on a slice with an organ (nnU-Net: 0.33).
FOREGROUND_OVERSAMPLE: float = 0.33


class _CachedScans:
    """The scans of ``meta`` in a cache: ``(case_day, first cache row, depth)`` each, and
    reading slices ``[a, b)`` of one as float32 images and packed masks."""

    def __init__(self, meta: pd.DataFrame, cache: VolumeCache) -> None:
        self.meta, self.cache = sort_slices(meta), cache
        self.img_size, self.mode = cache.img_size, cache.mode
        rows = cache.rows(self.meta["id"])
        codes, names = pd.factorize(self.meta["case_day"], sort=False)
        self.scans: list[tuple[str, int, int]] = []
        self.first_row: list[int] = []  # row of self.meta where each scan starts
        for k, name in enumerate(names):
            at = np.flatnonzero(codes == k)
            r = rows[at]
            if not (np.diff(r) == 1).all():
                raise ValueError(f"scan {name!r}: its slices are not consecutive rows of the cache")
            self.scans.append((str(name), int(r[0]), len(r)))
            self.first_row.append(int(at[0]))
        empty = self.meta["empty"].to_numpy() if "empty" in self.meta else np.zeros(len(self.meta), bool)
        self.organ = [np.flatnonzero(~empty[f : f + d]) for f, (_, _, d) in zip(self.first_row, self.scans,
                                                                                 strict=True)]  # fmt: skip

    def images(self, v: int, a: int, b: int) -> np.ndarray:
        """float32 (b - a, S, S) of scan ``v``."""
        _, r0, _ = self.scans[v]
        return cached_as(np.asarray(self.cache.images[r0 + a : r0 + b]), np.float32)

    def packed(self, v: int, a: int, b: int) -> np.ndarray:
        """uint8 (b - a, S, S) packed masks of scan ``v`` (decoded from the RLE when the cache
        holds none)."""
        _, r0, _ = self.scans[v]
        if self.cache.with_masks:
            return np.asarray(self.cache.packed_masks[r0 + a : r0 + b])
        f = self.first_row[v]
        return scan_packed_masks(self.meta.iloc[f + a : f + b], self.img_size, self.mode)


def _plain(x) -> torch.Tensor:
    """A MONAI MetaTensor (or array) as a plain float32 tensor."""
    t = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)
    return t.float().contiguous()


class PatchDataset(Dataset):
    """3-D training samples: ``dataset[i]`` -> ``(image float32 (1, P, S, S), mask float32
    (3, P, S, S))`` of scan ``i // patches_per_volume`` (see the module docstring; with
    ``crop``, (1, P, crop, crop) and (3, P, crop, crop)).

    Args:
        meta: whole scans (e.g. one fold's training cases).
        cache: a :class:`VolumeCache` holding them (at the model's ``img_size``).
        patch_depth: P, slices per patch.
        transform: :func:`gi_utils.data.augment.build_transforms_3d` (or ``None``).
        patches_per_volume: samples per scan and epoch.
        foreground: share of patches centred on a slice with an organ.
        crop: in-plane side of the patches, a window of the (S, S) slices; 0: all of them.
    """

    def __init__(self, meta: pd.DataFrame, cache: VolumeCache, patch_depth: int, transform=None,
                 patches_per_volume: int = 4, foreground: float = FOREGROUND_OVERSAMPLE, crop: int = 0) -> None:  # fmt: skip
        if patch_depth < 1 or patches_per_volume < 1:
            raise ValueError(f"patch_depth ({patch_depth}) and patches_per_volume ({patches_per_volume}) must be >= 1")
        self.scans = _CachedScans(meta, cache)
        self.meta, self.img_size = self.scans.meta, cache.img_size
        self.patch_depth, self.per_volume, self.foreground = int(patch_depth), int(patches_per_volume), foreground
        self.transform = transform
        self.key: tuple[int, ...] = (0, 0, 0)
        if not 0 <= crop <= self.img_size:
            raise ValueError(f"crop={crop} must be in 0..img_size ({self.img_size}); 0 is the whole slice")
        self.crop = int(crop)

    def __len__(self) -> int:
        return len(self.scans.scans) * self.per_volume

    def seed_sample(self, key: tuple[int, ...]) -> None:
        """Seed of the next sample's position and augmentation (``(seed, epoch, i)``)."""
        self.key = tuple(int(k) for k in key)

    def start_of(self, v: int, rng: np.random.Generator) -> int:
        """First slice of a patch of scan ``v``."""
        depth, p = self.scans.scans[v][2], self.patch_depth
        room = max(depth - p, 0)
        organ = self.scans.organ[v]
        if len(organ) and rng.random() < self.foreground:
            centre = int(rng.choice(organ)) + int(rng.integers(-(p // 4), p // 4 + 1))
            return int(np.clip(centre - p // 2, 0, room))
        return int(rng.integers(0, room + 1))

    def position(self, key: tuple[int, ...], i: int) -> tuple[int, np.random.SeedSequence]:
        """First slice of patch ``i`` drawn with the seed ``key`` (``(seed, epoch, i)``), and
        the seed sequence its augmentation continues from (the device path,
        :class:`~gi_utils.data.device_patches.DevicePatches`, cuts the same patches)."""
        seq = np.random.SeedSequence([*key, int(i)])
        return self.start_of(int(i) // self.per_volume, np.random.default_rng(seq)), seq

    def crop_of(self, key: tuple[int, ...], i: int) -> tuple[int, int]:
        """Top-left corner ``(y, x)`` of patch ``i``'s crop, uniform, drawn with the seed
        ``key`` (``(seed, epoch, i)``) apart from its position and augmentation."""
        room = self.img_size - self.crop
        rng = np.random.default_rng(np.random.SeedSequence([*key, int(i), 1]))
        return int(rng.integers(0, room + 1)), int(rng.integers(0, room + 1))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} patches")
        v = int(i) // self.per_volume
        a, seq = self.position(self.key, i)
        b = min(a + self.patch_depth, self.scans.scans[v][2])
        image = np.zeros((1, self.patch_depth, self.img_size, self.img_size), np.float32)
        mask = np.zeros((3, self.patch_depth, self.img_size, self.img_size), np.float32)
        image[0, : b - a] = self.scans.images(v, a, b)
        mask[:, : b - a] = unpack_masks(self.scans.packed(v, a, b), axis=0)
        if self.crop:
            y, x = self.crop_of(self.key, i)
            image = np.ascontiguousarray(image[..., y : y + self.crop, x : x + self.crop])
            mask = np.ascontiguousarray(mask[..., y : y + self.crop, x : x + self.crop])
        if self.transform is None:
            return torch.from_numpy(image), torch.from_numpy(mask)
        self.transform.set_random_state(seed=int(seq.generate_state(1)[0]))
        out = self.transform({"image": image, "mask": mask})
        return _plain(out["image"]), _plain(out["mask"]).round()


class VolumeDataset(Dataset):
    """Whole scans for validation: ``dataset[k]`` -> ``(image float16 (1, D, S, S), mask
    uint8 (3, D, S, S), rows int64 (D,))``, ``rows`` the scan's row numbers in ``.meta``
    (what the out-of-fold writer indexes). Use with ``batch_size=1``."""

    def __init__(self, meta: pd.DataFrame, cache: VolumeCache) -> None:
        self.scans = _CachedScans(meta, cache)
        self.meta, self.img_size = self.scans.meta, cache.img_size

    def __len__(self) -> int:
        return len(self.scans.scans)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not 0 <= k < len(self):
            raise IndexError(f"scan {k} out of range for {len(self)} scans")
        depth = self.scans.scans[k][2]
        image = self.scans.images(k, 0, depth).astype(np.float16)[None]
        mask = unpack_masks(self.scans.packed(k, 0, depth), axis=0).astype(np.uint8)
        rows = np.arange(self.scans.first_row[k], self.scans.first_row[k] + depth)
        return torch.from_numpy(image), torch.from_numpy(mask), torch.from_numpy(rows)
