"""The 3-D training feed on the device (data_path="device" for a 3-D model): the worker
path's patches without augmentation, augmentation statistics that match MONAI's, masks
that stay on their organs and resumable draws. Tiny sizes. (A 3-D training run on the
device path that resumes exactly: test_device_feed.py, with the 2.5D one.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.transforms import Affine
from scipy.stats import ks_2samp
from torch.utils.data import DataLoader

from gi_utils.data import (
    DevicePatches,
    GpuAugment3d,
    PatchDataset,
    VolumeCache,
    build_metadata,
    build_transforms_3d,
    default_3d_specs,
    unpack_masks,
)
from gi_utils.training import DeviceLoader, EpochSampler, SeededSamples

torch.set_num_threads(1)
S = 32
NO_AUGMENT = {name: {"p": 0.0} for name in default_3d_specs()}


@pytest.fixture(scope="module")
def meta(synth_factory):
    """The scans of test_models_3d: 4 cases x 2-3 scans x 12 slices."""
    return build_metadata(synth_factory(n_cases=4, seed=0, slices_per_scan=12, size=(80, 72)))


def _loaders(meta, cache, depth, overrides, seed=3, batch=4, resident=True):
    """The worker path (MONAI, DataLoader) and the device path on the CPU, one sampler
    each (the same seed, epoch 1)."""
    ds = PatchDataset(meta, cache, depth, build_transforms_3d(overrides=overrides), patches_per_volume=3)
    s_w, s_d = EpochSampler(np.zeros(len(ds), bool), seed), EpochSampler(np.zeros(len(ds), bool), seed)
    s_w.set_epoch(1)
    worker = DataLoader(SeededSamples(ds, seed), batch_size=batch, sampler=s_w, drop_last=True)
    patches = DevicePatches(ds, cache, "cpu", seed, resident=resident)
    device = DeviceLoader(patches, s_d, batch, GpuAugment3d(overrides), seed)
    device.set_epoch(1)
    return worker, device


# --------------------------------------------------------------------------- gathering
@pytest.mark.parametrize("dtype,masks,depth,resident", [("float16", True, 8, True), ("uint8", False, 16, False)],
                         ids=["f16_packed_resident", "u8_rle_padded_host"])  # fmt: skip
def test_without_augmentation_the_device_patches_equal_the_worker_patches(meta, dtype, masks, depth, resident):
    """(a) every probability 0: the same patches (positions, values, padding past a scan's
    end when the patch is deeper than the scan), batch for batch."""
    cache = VolumeCache(meta, S, None, progress=False, dtype=dtype, with_masks=masks)
    worker, device = _loaders(meta, cache, depth, NO_AUGMENT, resident=resident)
    pairs = list(zip(worker, device, strict=True))
    assert len(pairs) >= 4
    for (iw, mw), (id_, md) in pairs:
        assert id_.shape == iw.shape == (4, 1, depth, S, S) and md.shape == mw.shape == (4, 3, depth, S, S)
        assert torch.equal(iw, id_) and torch.equal(mw, md)
    starts = device.data.rows(device.sampler.indices(1), 1)[0][:, 0]
    if depth == 16:  # deeper than the 12-slice scans: the rest is zeros
        assert all((iw[:, :, 12:] == 0).all() and (mw[:, :, 12:] == 0).all() for (iw, mw), _ in pairs)
    else:
        assert len(np.unique(starts - device.data.first[device.sampler.indices(1) // 3])) > 1


# --------------------------------------------------------------------------- statistics
def _marks(n: int, depth: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """A 0.5 disc about the centre and two 4x4 marks at 10 pixels from it: organ 0 above
    (moved only by the affine step), organ 1 to the right (flipped to the left)."""
    c = S // 2
    images, packed = torch.zeros(n, 1, depth, S, S), torch.zeros(n, depth, S, S, dtype=torch.uint8)
    yy, xx = torch.meshgrid(torch.arange(S) - (S - 1) / 2, torch.arange(S) - (S - 1) / 2, indexing="ij")
    images[..., (yy**2 + xx**2) < 36] = 0.5
    packed[..., c - 12 : c - 8, c - 2 : c + 2] = 1
    packed[..., c - 2 : c + 2, c + 8 : c + 12] = 2
    return images, packed


def _measure(images: torch.Tensor, packed: torch.Tensor) -> dict[str, np.ndarray]:
    """Per sample: flipped (organ 1 left of the centre), the angle (degrees) and distance
    ratio of organ 0's centroid about the centre, the centre's intensity."""
    yy, xx = torch.meshgrid(torch.arange(S) - (S - 1) / 2, torch.arange(S) - (S - 1) / 2, indexing="ij")
    out: dict[str, list] = {"flip": [], "angle": [], "radius": [], "centre": []}
    for img, pk in zip(images, packed, strict=True):
        o0, o1 = ((pk[0] & 1) > 0).float(), ((pk[0] & 2) > 0).float()
        y0, x0 = (o0 * yy).sum() / o0.sum(), (o0 * xx).sum() / o0.sum()
        out["flip"].append(bool((o1 * xx).sum() < 0))
        out["angle"].append(float(torch.rad2deg(torch.atan2(x0, -y0))))
        out["radius"].append(float(torch.hypot(x0, y0)) / 10.0)
        out["centre"].append(float(img[0, 0, S // 2 - 1 : S // 2 + 1, S // 2 - 1 : S // 2 + 1].mean()))
    return {k: np.asarray(v) for k, v in out.items()}


def test_augmentation_statistics_match_the_worker_path():
    """(b) from the images: flip rate, rotation range (organ 0's angle), in-plane scale
    (its distance) and the intensity changes, 400 MONAI samples (seeded per sample as on
    the worker path) against 400 device samples (4 batches)."""
    n = 400
    images, packed = _marks(n)
    compose, worker = build_transforms_3d(), []
    for i in range(n):
        compose.set_random_state(seed=i)
        res = compose({"image": images[i].numpy(), "mask": unpack_masks(packed[i].numpy(), axis=0).astype(np.float32)})
        m = torch.as_tensor(np.asarray(res["mask"])).round().to(torch.uint8)
        worker.append((torch.as_tensor(np.asarray(res["image"])), m[0] | (m[1] << 1) | (m[2] << 2)))
    w = _measure(torch.stack([a for a, _ in worker]), torch.stack([b for _, b in worker]))
    aug, dev_i, dev_p = GpuAugment3d(), [], []
    for b in range(4):
        out, moved, _ = aug(images[:100], packed[:100], torch.Generator().manual_seed(b))
        dev_i.append(out)
        dev_p.append(moved)
    d = _measure(torch.cat(dev_i), torch.cat(dev_p))
    sp = default_3d_specs()
    p = sp["RandFlipd"]["p"]
    se = np.sqrt(2 * p * (1 - p) / n)
    assert abs(w["flip"].mean() - d["flip"].mean()) < 4.5 * se, (w["flip"].mean(), d["flip"].mean())
    assert abs(w["flip"].mean() - p) < 4.5 * se / np.sqrt(2)
    top = np.rad2deg(sp["RandAffined"]["rotate"])  # 14.9 degrees
    for name, r in (("worker", w), ("device", d)):
        turned = np.abs(r["angle"]) > 2.5
        assert abs(turned.mean() - sp["RandAffined"]["p"] * (1 - 2.5 / top)) < 0.1, (name, turned.mean())
        # unequal in-plane scales tilt the mark further (by up to 1.1 / 0.9), the masks' pixels by ~1 degree
        assert top - 2.5 < np.abs(r["angle"]).max() < top * 1.1 / 0.9 + 1.5, (name, np.abs(r["angle"]).max())
        moved = np.abs(r["radius"] - 1) > 0.02
        assert 0.3 < moved.mean() < 0.55, (name, moved.mean())  # the affine step's share (scale 0.9-1.1)
        assert 0.86 < r["radius"].min() < 0.95 and 1.05 < r["radius"].max() < 1.16, (name, r["radius"].min(),
                                                                                       r["radius"].max())  # fmt: skip
    for key in ("angle", "radius"):  # the same laws
        assert ks_2samp(w[key], d[key]).pvalue > 1e-3, (key, ks_2samp(w[key], d[key]))
    cw, cd = w["centre"] - 0.5, d["centre"] - 0.5  # 0.5 * f + o: scale by 0.9-1.1, shift by 0.05
    for name, c in (("worker", cw), ("device", cd)):
        assert 0.65 < (np.abs(c) > 1e-4).mean() < 0.85 and np.abs(c).max() < 0.1 + 1e-4, name
    assert abs(cw.std() - cd.std()) < 0.2 * cw.std(), (cw.std(), cd.std())


# --------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("rotate, scale", [(0.2, (1.08, 0.93)), (-0.26, (0.9, 1.1))])
def test_the_affine_step_is_monais_for_the_same_parameters(rotate, scale):
    """The device grid is MONAI's backward map (rotation sense, scale per axis, centre):
    the same image resampled by MONAI's ``Affine`` and by the device step agree to
    float32 rounding (the border, where the resamplers pad differently, left out)."""
    img = F.avg_pool2d(torch.rand(1, 4, S, S, generator=torch.Generator().manual_seed(0)), 5, 1, 2)
    want = Affine(rotate_params=(rotate, 0.0, 0.0), scale_params=(1.0, *scale), padding_mode="zeros",
                  mode="bilinear", image_only=True)(img)  # fmt: skip
    theta = GpuAugment3d.theta(torch.tensor([rotate]), torch.tensor([scale]))
    got = F.grid_sample(img, F.affine_grid(theta, [1, 4, S, S], align_corners=False), align_corners=False)
    inner = (..., slice(6, -6), slice(6, -6))
    assert (torch.as_tensor(np.asarray(want)) - got)[inner].abs().max() < 1e-5
    assert (img - got)[inner].abs().max() > 0.05


def _painted(n: int, depth: int = 4, s: int = 48) -> tuple[torch.Tensor, torch.Tensor, tuple[float, ...]]:
    """Three boxes per patch, a different place per sample and slice, painted 0.3 / 0.6
    / 0.9 on a 0.1 background; packed masks (bit c = organ c)."""
    values, g = (0.3, 0.6, 0.9), torch.Generator().manual_seed(2)
    images, packed = torch.full((n, 1, depth, s, s), 0.1), torch.zeros(n, depth, s, s, dtype=torch.uint8)
    for i in range(n):
        for k in range(depth):
            for c, (y, x) in enumerate(((8, 8), (8, 28), (28, 16))):
                dy, dx, h, w = torch.randint(0, 5, (4,), generator=g).tolist()
                box = (slice(y + dy, y + dy + 8 + h), slice(x + dx, x + dx + 8 + w))
                images[i, 0, k][box] = values[c]
                packed[i, k][box] = 1 << c
    return images, packed, values


def _eroded(packed: torch.Tensor) -> torch.Tensor:
    """Each organ shrunk by one pixel in-plane (3 x 3), packed."""
    n, p, s, _ = packed.shape
    out = torch.zeros_like(packed)
    for c in range(3):
        m = ((packed >> c) & 1).float().reshape(n * p, 1, s, s)
        out |= ((-F.max_pool2d(-m, 3, 1, 1) > 0).reshape(n, p, s, s).to(torch.uint8) << c)
    return out


def test_masks_stay_on_their_organs():
    """(c) flip half the time, the affine step always, no intensity change: each mask's
    core (the organ eroded before the warp, the same draws) lies on pixels of exactly
    its organ's value, slice by slice; the masks left where they were fail the check."""
    images, packed, values = _painted(24)
    aug = GpuAugment3d({**NO_AUGMENT, "RandFlipd": {"p": 0.5}, "RandAffined": {"p": 1.0}})
    out, moved, prm = aug(images, packed, torch.Generator().manual_seed(5))
    _, core, _ = aug(images, _eroded(packed), torch.Generator().manual_seed(5))
    assert prm["flip"].any() and not prm["flip"].all()
    assert (moved != packed).flatten(1).any(1).all()

    def off(masks: torch.Tensor) -> tuple[int, int]:
        """(mask pixels not on their organ's value, mask pixels)."""
        bits = torch.stack([((masks >> c) & 1).bool() for c in range(3)])  # (3, N, P, S, S)
        wrong = (out[:, 0][None] - torch.tensor(values)[:, None, None, None, None]).abs() > 1e-4
        return int((bits & wrong).sum()), int(bits.sum())

    bad, total = off(core)
    assert total > 0.5 * int(sum(((moved >> c) & 1).sum() for c in range(3))) and bad == 0, \
        f"{bad} of {total} mask core pixels are off their organ"  # fmt: skip
    assert torch.equal(core & moved, core)
    bad, total = off(_eroded(packed))  # the control: masks left where they were
    assert bad > 0.05 * total


def test_unknown_step_or_argument_is_named():
    with pytest.raises(KeyError, match="'RandZoomd'.*RandFlipd"):
        GpuAugment3d({"RandZoomd": {"p": 1.0}})
    with pytest.raises(ValueError, match="RandAffined: no argument.*'shear'"):
        build_transforms_3d(overrides={"RandAffined": {"shear": 0.1}})


# --------------------------------------------------------------------------- resuming
def test_draws_after_a_restart_equal_an_uninterrupted_epoch(meta):
    """(d) a new loader at (epoch, batch 2) yields the batches 2.. of the whole epoch."""
    cache = VolumeCache(meta, S, None, progress=False)
    _, device = _loaders(meta, cache, 8, None, batch=2)
    full = list(device)
    _, again = _loaders(meta, cache, 8, None, batch=2)
    again.sampler.skip = 2 * again.batch_size
    rest = list(again)
    assert len(rest) == len(full) - 2 and len(rest) > 2
    for (ia, ma), (ib, mb) in zip(full[2:], rest, strict=True):
        assert torch.equal(ia, ib) and torch.equal(ma, mb)
    again.sampler.skip = 0
    again.set_epoch(2)
    assert not torch.equal(next(iter(again))[0], full[0][0])
