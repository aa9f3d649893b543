"""The training feed on the device (data_path="device"): the same batches as the worker
path without augmentation, augmentation statistics that match albumentations', masks that
stay on their organs, resumable draws, the choice of the path, and a training run."""

from __future__ import annotations

import math
import random
import threading

import albumentations as A
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import ks_2samp
from torch.utils.data import DataLoader

from gi_utils.checkpoint import load_state
from gi_utils.data import (
    DeviceBatches,
    GpuAugment,
    SliceDataset,
    VolumeCache,
    ahead,
    build_metadata,
    build_transforms,
    default_train_specs,
    make_transform,
    neighbour_rows,
)
from gi_utils.data import device_batches as device_batches_mod
from gi_utils.training import (
    DeviceLoader,
    EpochSampler,
    SeededSamples,
    TrainConfig,
    train,
)
from gi_utils.training import session as session_mod

torch.set_num_threads(1)
S = 64
NAMES = [name for name, _ in default_train_specs(S)]
NO_AUGMENT = {name: {"p": 0.0} for name in NAMES}


@pytest.fixture(scope="module")
def synth(synth_factory):
    return synth_factory(n_cases=4, seed=0, slices_per_scan=12, size=(80, 72))


@pytest.fixture(scope="module")
def meta(synth):
    return build_metadata(synth)


def _loaders(meta, cache, overrides, seed=3, batch=4):
    """The worker path (albumentations, DataLoader) and the device path on the CPU, with
    one sampler each (the same seed, epoch 1)."""
    ds = SliceDataset(meta, S, (-2, 0, 2), build_transforms(S, True, overrides=overrides), cache=cache)
    empty = ds.meta["empty"].to_numpy()
    s_w, s_d = EpochSampler(empty, seed, 0.5), EpochSampler(empty, seed, 0.5)
    s_w.set_epoch(1)
    worker = DataLoader(SeededSamples(ds, seed), batch_size=batch, sampler=s_w, drop_last=True)
    device = DeviceLoader(DeviceBatches(meta, cache, (-2, 0, 2), "cpu"), s_d, batch, GpuAugment(S, overrides), seed)
    device.set_epoch(1)
    return worker, device


# --------------------------------------------------------------------------- gathering
def test_neighbour_rows_by_hand():
    got = neighbour_rows(np.array(["a", "a", "a", "b", "b"]), (-2, 0, 1))
    assert got.tolist() == [[0, 0, 1], [0, 1, 2], [0, 2, 2], [3, 3, 4], [3, 4, 4]]


@pytest.mark.parametrize("dtype,masks", [("float16", True), ("uint8", False)], ids=["f16_packed", "u8_rle"])
def test_without_augmentation_the_device_batches_equal_the_worker_batches(meta, dtype, masks):
    """(a) every probability 0: bit-equal images and masks, batch by batch."""
    cache = VolumeCache(meta, S, None, progress=False, dtype=dtype, with_masks=masks)
    worker, device = _loaders(meta, cache, NO_AUGMENT)
    a, b = list(worker), list(device)
    assert len(a) == len(b) == len(device) > 2
    for k, ((ia, ma), (ib, mb)) in enumerate(zip(a, b, strict=True)):
        assert ia.dtype == ib.dtype == ma.dtype == mb.dtype == torch.float32
        assert torch.equal(ia, ib), f"images of batch {k}"
        assert torch.equal(ma, mb), f"masks of batch {k}"
    assert sum(float(m.sum()) for _, m in b) > 0  # organs are in the batches


@pytest.mark.parametrize("dtype", ["float16", "uint8"])
def test_host_storage_gathers_the_same_batches(meta, dtype):
    """A cache too large for the GPU stays in (pinned) host memory: batches gathered there
    and copied equal those of the resident copy."""
    cache = VolumeCache(meta, S, None, progress=False, dtype=dtype)
    on, off = (DeviceBatches(meta, cache, (-2, 0, 2), "cpu", resident=r) for r in (True, False))
    index = np.array([5, 0, len(meta) - 1, 17, 5])
    (ia, pa), (ib, pb) = on.gather(index), off.gather(index)
    assert ib.shape == (5, 3, S, S) and pb.shape == (5, S, S)
    assert torch.equal(ia, ib) and torch.equal(pa, pb)
    assert not torch.equal(ia[0], ia[1])


def test_loaders_reusing_one_dataset_yield_the_samples_of_a_fresh_one(meta):
    """bench_feed's pattern: a DataLoader per worker count and batch size on one dataset
    (wrapping its transform twice made the second one fail in its workers)."""
    cache = VolumeCache(meta, S, None, progress=False)

    def dataset():
        return SliceDataset(meta, S, (-2, 0, 2), build_transforms(S, True), cache=cache)

    def samples(ds, workers, batch):
        sampler = EpochSampler(ds.meta["empty"].to_numpy(), 3, 0.5)
        dl = DataLoader(SeededSamples(ds, 3), batch_size=batch, sampler=sampler, num_workers=workers)
        return torch.cat([images for images, _ in dl])

    expected = samples(dataset(), 0, 4)
    shared = dataset()
    for workers, batch in ((0, 4), (2, 8), (0, 2)):
        assert torch.equal(samples(shared, workers, batch), expected), (workers, batch)


def test_the_host_store_asks_the_pinned_allocator_for_batches_only(meta, monkeypatch):
    """A cache too large for a GPU stays in host memory: in ordinary memory, exactly its
    bytes (PyTorch's pinned allocator rounds each block up to a power of two: 6.26 GB of
    slices took 8 GiB pinned, more than a Colab host holds beside the rest), and only the
    buffers of each batch are pinned, exactly their bytes (a mock CUDA device)."""
    asked: list[int] = []

    def pinned(shape, dtype, pin):
        if pin:
            asked.append(math.prod(shape) * dtype.itemsize)
        return torch.empty(shape, dtype=dtype)

    monkeypatch.setattr(device_batches_mod, "pinned_empty", pinned)
    cache = VolumeCache(meta, S, None, progress=False, dtype="float16")
    data = DeviceBatches(meta, cache, (-2, 0, 2), torch.device("cuda"), resident=False)
    assert asked == [] and data.images.nbytes + data.packed.nbytes == data.nbytes
    images, packed = data.stage(np.array([5, 0, 17, 5]))
    assert asked == [4 * 3 * S * S * 2, 4 * S * S]
    cpu = DeviceBatches(meta, cache, (-2, 0, 2), "cpu")
    want_images, want_packed = cpu.raw(np.array([5, 0, 17, 5]))
    assert torch.equal(images, want_images) and torch.equal(packed, want_packed)


def test_ahead_yields_in_order_computing_the_next_one_beside():
    where: list[str] = []

    def square(x):
        where.append(threading.current_thread().name)
        return x * x

    assert list(ahead(square, range(5))) == [0, 1, 4, 9, 16]
    assert all(name.startswith("stage") for name in where)
    first = ahead(square, range(100))
    assert next(first) == 0
    first.close()  # stopping early: the one computed ahead is waited for, nothing more
    assert len(where) == 5 + 2


def test_a_host_store_loader_yields_the_resident_batches_in_order(meta):
    """With the slices in host memory the loader gathers one batch ahead on a side
    thread: the same batches, augmented alike, in the same order."""
    cache = VolumeCache(meta, S, None, progress=False, dtype="uint8")
    empty = SliceDataset(meta, S, (-2, 0, 2), None, cache=cache).meta["empty"].to_numpy()
    loaders = [DeviceLoader(DeviceBatches(meta, cache, (-2, 0, 2), "cpu", resident=r), EpochSampler(empty, 3, 0.5),
                            4, GpuAugment(S), 3) for r in (True, False)]  # fmt: skip
    assert [loader.data.prefetch for loader in loaders] == [False, True]
    for loader in loaders:
        loader.set_epoch(1)
    on, off = (list(loader) for loader in loaders)
    assert len(on) == len(off) > 2
    for k, ((ia, ma), (ib, mb)) in enumerate(zip(on, off, strict=True)):
        assert torch.equal(ia, ib) and torch.equal(ma, mb), f"batch {k}"


# --------------------------------------------------------------------------- statistics
def _albumentations_params(n: int) -> dict[str, list]:
    """Applied parameters of the worker path's pipeline (seeded per sample as there)."""
    compose = A.Compose([make_transform(name, kw) for name, kw in default_train_specs(S)], save_applied_params=True)
    rng = np.random.default_rng(0)
    out: dict[str, list] = {k: [] for k in ("flip", "affine", "grid", "elastic", "bc", "dropout", "rotate", "scale",
                                            "translate", "contrast", "brightness", "n_holes", "hole_h")}  # fmt: skip
    names = {"HorizontalFlip": "flip", "Affine": "affine", "GridDistortion": "grid", "ElasticTransform": "elastic",
             "RandomBrightnessContrast": "bc", "CoarseDropout": "dropout"}  # fmt: skip
    c = (S - 1) / 2
    for i in range(n):
        seq = np.random.SeedSequence((7, 0, i))
        compose.set_random_state(np.random.default_rng(seq), random.Random(int(seq.generate_state(1)[0])))
        res = compose(image=rng.random((S, S, 3), dtype=np.float32), mask=np.zeros((S, S), np.uint8))
        applied = {name: prm for name, prm in res["applied_transforms"]}
        for name, key in names.items():
            out[key].append(name in applied)
        if "Affine" in applied:
            prm = applied["Affine"]
            m = np.asarray(prm["matrix"])
            out["rotate"].append(abs(prm["rotate"]))
            out["scale"] += [prm["scale"]["x"], prm["scale"]["y"]]
            out["translate"] += list((m[:2, 2] - c + m[:2, :2] @ [c, c]) / S)  # shift of the centre
        if "RandomBrightnessContrast" in applied:
            out["contrast"].append(applied["RandomBrightnessContrast"]["alpha"])
            out["brightness"].append(applied["RandomBrightnessContrast"]["beta"])
        if "CoarseDropout" in applied:
            holes = np.asarray(applied["CoarseDropout"]["holes"])
            out["n_holes"].append(len(holes))
            out["hole_h"] += list(holes[:, 3] - holes[:, 1])
    return out


def _device_params(n: int) -> dict[str, list]:
    aug, out = GpuAugment(S), {}
    draws = [aug.draw(250, torch.Generator().manual_seed(b)) for b in range(n // 250)]
    cat = {k: torch.cat([d[k] for d in draws]) for k in draws[0]}
    for key in ("flip", "affine", "grid", "elastic", "bc", "dropout"):
        out[key] = cat[key].tolist()
    a, bc, dr = cat["affine"], cat["bc"], cat["dropout"]
    out["rotate"] = cat["rotate"][a].abs().tolist()
    out["scale"] = cat["scale"][a].flatten().tolist()
    out["translate"] = cat["translate"][a].flatten().tolist()
    out["contrast"], out["brightness"] = cat["contrast"][bc].tolist(), cat["brightness"][bc].tolist()
    out["n_holes"] = cat["n_holes"][dr].tolist()
    active = torch.arange(cat["holes"].shape[1])[None] < cat["n_holes"][:, None]
    out["hole_h"] = cat["holes"][dr][..., 2][active[dr]].tolist()
    return out


def test_augmentation_statistics_match_the_worker_path():
    """(b) rates of each transform and the distributions of its parameters, from 1500
    worker samples (albumentations' recorded parameters) and 5000 device draws."""
    alb, dev = _albumentations_params(1500), _device_params(5000)
    spec = {name: kw["p"] for name, kw in default_train_specs(S)}
    for key, name in (("flip", "HorizontalFlip"), ("affine", "Affine"), ("grid", "GridDistortion"),
                      ("elastic", "ElasticTransform"), ("bc", "RandomBrightnessContrast"), ("dropout", "CoarseDropout")):  # fmt: skip
        p, pa, pd_ = spec[name], np.mean(alb[key]), np.mean(dev[key])
        se = np.sqrt(p * (1 - p) * (1 / len(alb[key]) + 1 / len(dev[key])))
        assert abs(pa - pd_) < 4.5 * se, f"{name}: applied in {pa:.3f} (worker) vs {pd_:.3f} (device) of samples"
    for key in ("rotate", "scale", "translate", "contrast", "brightness"):
        a, d = np.asarray(alb[key]), np.asarray(dev[key])
        pval = ks_2samp(a, d).pvalue
        assert pval > 1e-3, f"{key}: distributions differ (KS p={pval:.2g}; worker {a.min():.3f}..{a.max():.3f}, " \
                            f"device {d.min():.3f}..{d.max():.3f})"  # fmt: skip
        span = a.max() - a.min()
        assert abs(a.min() - d.min()) < 0.05 * span and abs(a.max() - d.max()) < 0.05 * span, key
    for key in ("n_holes", "hole_h"):
        a, d = np.asarray(alb[key], float), np.asarray(dev[key], float)
        assert (a.min(), a.max()) == (d.min(), d.max()), f"{key}: range {a.min()}..{a.max()} vs {d.min()}..{d.max()}"
        assert abs(a.mean() - d.mean()) < 4.5 * np.sqrt(a.var() / len(a) + d.var() / len(d)), key


def _rms_displacement(out: np.ndarray, border: int = 6) -> float:
    """RMS distance a ramp image (channel 0 = x, 1 = y, scaled to [0, 1]) was moved by,
    away from the border: the source coordinate of each pixel read back from its value."""
    yy, xx = np.mgrid[:S, :S]
    dx, dy = out[..., 0] * (S - 1) - xx, out[..., 1] * (S - 1) - yy
    inner = (slice(border, -border),) * 2
    return float(np.sqrt((dx[inner] ** 2 + dy[inner] ** 2).mean()))


@pytest.mark.parametrize("name", ["ElasticTransform", "GridDistortion"])
def test_distortions_move_pixels_as_far_as_the_worker_path(name):
    """(b) the distortions, estimated from images: 200 warps of a coordinate ramp per path,
    the per-image RMS displacement has the same distribution."""
    spec = dict(default_train_specs(S))
    yy, xx = np.mgrid[:S, :S]
    ramp = np.stack([xx / (S - 1), yy / (S - 1), np.zeros((S, S))], -1).astype(np.float32)
    compose = A.Compose([make_transform(name, {**spec[name], "p": 1.0})])
    alb = []
    for i in range(200):
        seq = np.random.SeedSequence((1, i))
        compose.set_random_state(np.random.default_rng(seq), random.Random(i))
        alb.append(_rms_displacement(compose(image=ramp)["image"]))
    aug = GpuAugment(S, {**NO_AUGMENT, name: {"p": 1.0}})
    x = torch.from_numpy(ramp).permute(2, 0, 1)[None].repeat(200, 1, 1, 1)
    out, _, _ = aug(x, torch.zeros(200, S, S, dtype=torch.uint8), torch.Generator().manual_seed(0))
    dev = [_rms_displacement(o.permute(1, 2, 0).numpy()) for o in out]
    a, d = np.asarray(alb), np.asarray(dev)
    assert min(a.mean(), d.mean()) > 0.5  # both move pixels
    assert abs(a.mean() - d.mean()) < 4.5 * np.sqrt(a.var() / len(a) + d.var() / len(d)), \
        f"{name}: RMS displacement {a.mean():.3f} px (worker) vs {d.mean():.3f} px (device)"  # fmt: skip
    assert ks_2samp(a, d).pvalue > 1e-3, name


def test_brightness_contrast_is_applied_as_drawn():
    """The recorded parameters are the applied ones: a constant image v becomes
    clip(v * contrast + brightness) exactly where the transform was drawn."""
    only_bc = {**NO_AUGMENT, "RandomBrightnessContrast": {"p": 0.5}}
    images = torch.full((64, 3, 16, 16), 0.5)
    out, _, prm = GpuAugment(16, only_bc)(images, torch.zeros(64, 16, 16, dtype=torch.uint8),
                                          torch.Generator().manual_seed(0))  # fmt: skip
    want = torch.where(prm["bc"], (0.5 * prm["contrast"] + prm["brightness"]).clamp(0, 1), torch.tensor(0.5))
    assert 10 < int(prm["bc"].sum()) < 54
    torch.testing.assert_close(out[:, 0, 0, 0], want)


# --------------------------------------------------------------------------- geometry
def _organs(n: int, s: int = 96) -> tuple[torch.Tensor, torch.Tensor, tuple[float, ...]]:
    """Three disjoint organs per image (ellipses at random places, a later one not over
    an earlier one) painted 0.3 / 0.6 / 0.9 on a 0.1 background; packed masks (bit c =
    organ c)."""
    values = (0.3, 0.6, 0.9)
    g = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.arange(s).float(), torch.arange(s).float(), indexing="ij")
    images, packed = torch.full((n, 3, s, s), 0.1), torch.zeros(n, s, s, dtype=torch.uint8)
    centres = ((0.3, 0.3), (0.3, 0.72), (0.72, 0.5))
    for i in range(n):
        for c, (cy, cx) in enumerate(centres):
            jit = (torch.rand(4, generator=g) - 0.5) * 0.1
            inside = ((((yy - (cy + jit[0]) * s) / (s * (0.12 + jit[2]))) ** 2
                      + ((xx - (cx + jit[1]) * s) / (s * (0.15 + jit[3]))) ** 2) <= 1) & (packed[i] == 0)  # fmt: skip
            images[i][:, inside] = values[c]
            packed[i][inside] |= 1 << c
    return images, packed, values


def _core(packed: torch.Tensor) -> torch.Tensor:
    """The masks eroded by one pixel (3 x 3), packed: where bilinear sampling around the
    nearest pixel reads only that organ."""
    out = torch.zeros_like(packed)
    for c in range(3):
        m = ((packed >> c) & 1).float()[:, None]
        out |= ((-F.max_pool2d(-m, 3, 1, 1)[:, 0] > 0).to(torch.uint8) << c)
    return out


def _off_organ(images: torch.Tensor, packed: torch.Tensor, values: tuple[float, ...]) -> tuple[int, int]:
    """(mask pixels whose image value is not their organ's, mask pixels in all)."""
    bad = total = 0
    for c, v in enumerate(values):
        m = ((packed >> c) & 1).bool()
        bad += int((m & ((images[:, 0] - v).abs() > 1e-4)).sum())
        total += int(m.sum())
    return bad, total


def test_masks_stay_on_their_organs():
    """(c) every geometric transform drawn (flip half the time), masks by nearest neighbour,
    images bilinear: the masks' cores (each organ eroded by one pixel before the warp, the
    same draws) lie on image pixels of exactly their organ's value, and the whole masks
    follow (cores inside them, on the organ where the image is not a mix); masks left
    where they were (the control) fail the check."""
    images, packed, values = _organs(48)
    geo = {**NO_AUGMENT, "HorizontalFlip": {"p": 0.5}, "Affine": {"p": 1.0}, "GridDistortion": {"p": 1.0},
           "ElasticTransform": {"p": 1.0}}  # fmt: skip
    aug = GpuAugment(96, geo)
    out, moved, prm = aug(images, packed, torch.Generator().manual_seed(5))
    out2, core, _ = aug(images, _core(packed), torch.Generator().manual_seed(5))  # the same draws
    assert torch.equal(out, out2)
    assert prm["flip"].any() and not prm["flip"].all()
    assert (out != images).flatten(1).any(1).all() and (moved != packed).flatten(1).any(1).all()
    bad, total = _off_organ(out, core, values)
    assert total > 0.6 * int(sum(((moved >> c) & 1).sum() for c in range(3))) and bad == 0, \
        f"{bad} of {total} mask core pixels are off their organ"  # fmt: skip
    assert torch.equal(core & moved, core)
    bad, total = _off_organ(out, moved, values)  # whole masks: only their rims may read a mix
    assert bad < 0.15 * total
    bad, total = _off_organ(out, _core(packed), values)  # the control: masks left where they were
    assert bad > 0.05 * total


def test_dropout_leaves_the_masks():
    images, packed, _ = _organs(16)
    drop = {**NO_AUGMENT, "CoarseDropout": {"p": 1.0}}
    out, masks, _ = GpuAugment(96, drop)(images, packed, torch.Generator().manual_seed(0))
    assert torch.equal(masks, packed)
    assert ((out == 0) & (images != 0)).flatten(1).any(1).all()  # holes filled with 0 in every image


def test_a_number_reads_as_in_albumentations():
    """Affine: a number is a fixed value; the limits: a number v is (-v, v)."""
    aug = GpuAugment(S, {"Affine": {"scale": 1.2, "rotate": 10, "translate_percent": 0.0},
                         "GridDistortion": {"distort_limit": 0.2}, "RandomBrightnessContrast": {"contrast_limit": 0.3}})  # fmt: skip
    assert (aug.scale, aug.rotate, aug.translate) == ((1.2, 1.2), (10.0, 10.0), (0.0, 0.0))
    assert aug.distort == (-0.2, 0.2) and aug.contrast == (-0.3, 0.3) and aug.brightness == (-0.1, 0.1)
    prm = aug.draw(8, torch.Generator().manual_seed(0))
    assert torch.equal(prm["rotate"], torch.full((8,), 10.0)) and torch.allclose(prm["scale"], torch.tensor(1.2))


def test_unknown_transform_or_argument_is_named():
    with pytest.raises(KeyError, match="'Flip'.*valid names"):
        GpuAugment(S, {"Flip": {"p": 0.1}})
    with pytest.raises(ValueError, match=r"GridDistortion: argument\(s\) \['interpolation'\]"):
        GpuAugment(S, {"GridDistortion": {"interpolation": 0}})
    with pytest.raises(ValueError, match=r"Affine: scale=\{'x': 1.0\}: the device pipeline takes a number or a"):
        GpuAugment(S, {"Affine": {"scale": {"x": 1.0}}})
    with pytest.raises(ValueError, match="augment_kwargs \\(data_path='device'\\).*GridDistortion"):
        TrainConfig(data_path="device", augment_kwargs={"GridDistortion": {"interpolation": 0}})


# --------------------------------------------------------------------------- resuming
def test_draws_after_a_restart_equal_an_uninterrupted_epoch(meta):
    """(d) a new loader at (epoch, batch 2) yields the batches 2.. of the whole epoch."""
    cache = VolumeCache(meta, S, None, progress=False)
    _, device = _loaders(meta, cache, None)
    full = list(device)
    _, again = _loaders(meta, cache, None)
    again.sampler.skip = 2 * again.batch_size
    rest = list(again)
    assert len(rest) == len(full) - 2
    for (ia, ma), (ib, mb) in zip(full[2:], rest, strict=True):
        assert torch.equal(ia, ib) and torch.equal(ma, mb)
    again.sampler.skip = 0
    again.set_epoch(2)  # another epoch: other samples or other draws
    assert not torch.equal(next(iter(again))[0], full[0][0])


# --------------------------------------------------------------------------- choosing
def test_config_names_a_bad_data_path():
    with pytest.raises(ValueError, match="data_path='gpu' is not valid; choose one of auto, device, workers"):
        TrainConfig(data_path="gpu")
    with pytest.raises(ValueError, match="data_path='device' needs a cache"):
        TrainConfig(data_path="device", cache="none")
    assert TrainConfig().data_path == "auto"


# --------------------------------------------------------------------------- training
@pytest.mark.parametrize("model", [{}, {"arch": "segresnet3d", "img_size": 32, "patch_depth": 8, "batch_size": 2}],
                         ids=["2.5d", "3d"])  # fmt: skip
def test_training_on_the_device_path_runs_and_resumes(synth, tmp_path, tiny_config, monkeypatch, capsys, model):
    """A run on the device path (the CPU here) trains; one interrupted in the middle of its
    second epoch and resumed ends with the losses and weights of an uninterrupted run (a
    2.5D UNet, and a 3-D SegResNet whose patches are cut on the device)."""
    data = synth
    kw = {"data_path": "device", "epochs": 2, "max_steps_per_epoch": 3, "save_every_steps": 1, "amp": "no", **model}
    full = train(tiny_config(data, tmp_path / "full", **kw))
    assert "feed plan: device path" in capsys.readouterr().out
    assert np.isfinite(full["train_loss"]).all() and len(full) == 2
    real = session_mod.TrainingRun._on_step

    def interrupt(self, tally, n_batches):
        real(self, tally, n_batches)
        if self.state["epoch"] == 1 and n_batches == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(session_mod.TrainingRun, "_on_step", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(data, tmp_path / "cut", **kw))
    monkeypatch.undo()
    resumed = train(tiny_config(data, tmp_path / "cut", **kw))
    assert "resuming" in capsys.readouterr().out
    np.testing.assert_array_equal(full["train_loss"].to_numpy(), resumed["train_loss"].to_numpy())
    a, b = load_state(tmp_path / "full" / "last.pt"), load_state(tmp_path / "cut" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
