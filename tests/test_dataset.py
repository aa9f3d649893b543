"""Tests of folds, preprocessing, the volume cache and the 2.5D slice dataset (tiny data)."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from gi_utils.constants import BAD_CASE_DAYS, CLASSES
from gi_utils.data import (
    FoldsError,
    SliceDataset,
    VolumeCache,
    assign_folds,
    build_metadata,
    build_transforms,
    encode_rle,
    intensity_clip,
    normalize_volume,
    pack_masks,
    preprocess_mask,
    preprocess_volume,
    restore_size,
    split_fold,
    unpack_masks,
)


# --------------------------------------------------------------------------- fixtures
def write_kaggle(
    root: Path, volumes: dict[str, np.ndarray], masks: dict[str, np.ndarray] | None = None
) -> Path:
    """Write uint16 (D, H, W) volumes (keyed ``caseN_dayD``) and bool (D, H, W, 3) masks
    as 16-bit PNGs + train.csv in the Kaggle layout."""
    rows = []
    for case_day, vol in volumes.items():
        case = case_day.split("_")[0]
        scans = root / "train" / case / case_day / "scans"
        scans.mkdir(parents=True)
        d, h, w = vol.shape
        for k in range(d):
            assert cv2.imwrite(str(scans / f"slice_{k + 1:04d}_{w}_{h}_1.50_1.50.png"), vol[k])
            m = masks[case_day][k] if masks else np.zeros((h, w, 3), bool)
            for c, name in enumerate(CLASSES):
                rows.append((f"{case_day}_slice_{k + 1:04d}", name, encode_rle(m[..., c])))
    pd.DataFrame(rows, columns=["id", "class", "segmentation"]).to_csv(
        root / "train.csv", index=False
    )
    return root


def index_volume(d: int, h: int, w: int) -> np.ndarray:
    """Each slice constant, equal to (its index + 1) * 100."""
    return np.broadcast_to(
        (np.arange(d, dtype=np.uint16)[:, None, None] + 1) * 100, (d, h, w)
    ).copy()


def organ_masks(d: int, h: int, w: int) -> np.ndarray:
    """Large bowel top-left block, small bowel centre, stomach bottom-right, on odd slices."""
    m = np.zeros((d, h, w, 3), bool)
    m[1::2, :3, :4, 0] = True
    m[1::2, 4:6, 5:7, 1] = True
    m[1::2, -3:, -2:, 2] = True
    return m


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    vols = {
        "case1_day0": index_volume(8, 10, 12),  # non-square (H, W) = (10, 12)
        "case2_day3": rng.integers(0, 4000, (6, 10, 12), dtype=np.uint16),
    }
    masks = {cd: organ_masks(*v.shape) for cd, v in vols.items()}
    return write_kaggle(root, vols, masks)


@pytest.fixture(scope="module")
def meta(data_dir) -> pd.DataFrame:
    return build_metadata(data_dir)


def samples(ds) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [ds[i] for i in range(len(ds))]


# --------------------------------------------------------------------------- preprocessing
def test_intensity_clip_and_normalisation_by_hand():
    vol = np.array([[[0, 100], [200, 1000]]], np.uint16)  # 4 voxels
    assert intensity_clip(vol, 50) == 100  # 2 of 4 voxels <= 100
    assert intensity_clip(vol, 75) == 200
    assert intensity_clip(vol, 99.5) == 1000
    np.testing.assert_allclose(normalize_volume(vol, hi=200), [[[0, 0.5], [1, 1]]])
    assert normalize_volume(np.zeros((2, 3, 3), np.uint16)).max() == 0  # all-zero scan
    out = preprocess_volume(index_volume(8, 10, 12), 16)
    assert out.shape == (8, 16, 16) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 5, 5], np.arange(1, 9) / 8, atol=1e-3)


def test_pad_mode_centres_and_restore_inverts():
    vol = index_volume(3, 10, 12)
    out = preprocess_volume(vol, 16, mode="pad")
    assert out.shape == (3, 16, 16)
    assert (out[:, :3] == 0).all() and (out[:, :, :2] == 0).all()  # top 3 rows, left 2 cols
    want = normalize_volume(vol).astype(np.float16).astype(np.float32)  # cache precision
    np.testing.assert_array_equal(restore_size(out, (10, 12), mode="pad"), want)
    with pytest.raises(ValueError, match="img_size >= 12"):
        preprocess_volume(vol, 8, mode="pad")


def test_mask_resize_is_nearest_and_restores():
    m = organ_masks(4, 10, 12)
    up = preprocess_mask(m, 20)  # (D, 3, S, S) bool
    assert up.shape == (4, 3, 20, 20) and up.dtype == bool
    back = restore_size(up.transpose(0, 2, 3, 1), (10, 12))
    assert back.shape == (4, 10, 12, 3) and back.dtype == bool
    np.testing.assert_array_equal(back, m)
    packed = pack_masks(m)  # (D, H, W), bit c = class c
    assert packed.shape == (4, 10, 12) and packed.dtype == np.uint8
    np.testing.assert_array_equal(unpack_masks(packed), m)
    np.testing.assert_array_equal(unpack_masks(packed, axis=1), m.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(pack_masks(m.transpose(0, 3, 1, 2), axis=1), packed)
    t = torch.from_numpy(m.transpose(0, 3, 1, 2).copy())  # the same layout in torch
    np.testing.assert_array_equal(pack_masks(t, axis=1).numpy(), packed)
    np.testing.assert_array_equal(unpack_masks(pack_masks(t, axis=1), axis=1).numpy(), t.numpy())
    probs = restore_size(np.full((2, 16, 16), 0.25, np.float32), (10, 12))
    np.testing.assert_allclose(probs, 0.25)


# --------------------------------------------------------------------------- dataset
def test_channels_are_neighbours_with_edge_clamp(meta):
    scan = meta[meta["case_day"] == "case1_day0"]
    ds = SliceDataset(scan, img_size=16, slice_offsets=(-2, 0, 2))
    assert len(ds) == 8
    for i in range(8):
        image, mask = ds[i]
        assert image.shape == (3, 16, 16) and image.dtype == torch.float32
        assert mask.shape == (3, 16, 16) and mask.dtype == torch.float32
        got = torch.round(image[:, 8, 8] * 8).long() - 1  # slice k holds (k + 1) / 8
        want = [min(max(i + o, 0), 7) for o in (-2, 0, 2)]
        assert got.tolist() == want, f"sample {i}"
    assert ds.neighbours(0).tolist() == [0, 0, 2] and ds.neighbours(7).tolist() == [5, 7, 7]
    one = SliceDataset(scan, img_size=16, slice_offsets=(0,))
    assert one[3][0].shape == (1, 16, 16)


def test_mask_channel_order_is_classes(meta):
    ds = SliceDataset(meta, img_size=16, mode="pad")  # pad: masks land unchanged at (3, 2)
    want = organ_masks(8, 10, 12)[1]
    _, mask = ds[1]
    for c, name in enumerate(CLASSES):
        np.testing.assert_array_equal(mask[c, 3:13, 2:14].numpy(), want[..., c], err_msg=name)
    assert mask[:, :3].sum() == 0
    assert ds[0][1].sum() == 0  # even slices are empty
    no_mask = SliceDataset(meta, img_size=16, with_masks=False)
    assert no_mask[1][1].sum() == 0


@pytest.mark.parametrize("mode", ["resize", "pad"])
def test_cache_equals_uncached(meta, tmp_path, mode):
    plain = samples(SliceDataset(meta, 16, mode=mode))
    mem = VolumeCache(meta, 16, mode=mode, progress=False)
    disk = VolumeCache(meta, 16, tmp_path, mode=mode, progress=False)
    assert isinstance(disk.images, np.memmap) and disk.images.dtype == np.float16
    for cache in (mem, disk):
        got = samples(SliceDataset(meta, 16, cache=cache, mode=mode))
        for i, ((a, am), (b, bm)) in enumerate(zip(plain, got, strict=True)):
            assert torch.equal(a, b) and torch.equal(am, bm), f"sample {i}"
    compact = SliceDataset(meta, 16, cache=mem, mode=mode, compact=True)[5]
    assert compact[0].dtype == torch.float16 and compact[1].dtype == torch.uint8
    assert torch.equal(compact[0].float(), plain[5][0]) and torch.equal(
        compact[1].float(), plain[5][1]
    )
    vol = np.stack([cv2.imread(p, cv2.IMREAD_UNCHANGED) for p in meta["path"][:8]])
    np.testing.assert_array_equal(mem.image("case1_day0"), preprocess_volume(vol, 16, mode))
    assert mem.mask("case1_day0").shape == (8, 3, 16, 16)


def test_disk_cache_is_reused_and_keyed(meta, tmp_path):
    first = VolumeCache(meta, 16, tmp_path, progress=False)
    assert not first.reused and (first.path / "index.json").is_file()
    again = VolumeCache(meta, 16, tmp_path, progress=False)
    assert again.reused and again.path == first.path
    np.testing.assert_array_equal(again.images, first.images)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp left
    other = VolumeCache(meta, 20, tmp_path, progress=False)
    assert not other.reused and other.path != first.path
    sub = meta[meta["case_day"] == "case1_day0"]  # different data files -> different key
    assert VolumeCache(sub, 16, tmp_path, progress=False).path != first.path
    assert len(pickle.dumps(again)) < again.images.nbytes  # workers re-open the memmap


def test_in_memory_cache_refuses_large_data(meta):
    with pytest.raises(MemoryError, match="cache_dir"):
        VolumeCache(meta, 16, max_memory_bytes=100, progress=False)


def test_dataset_rejects_mismatched_cache(meta):
    cache = VolumeCache(meta, 16, progress=False)
    with pytest.raises(ValueError, match="img_size=16"):
        SliceDataset(meta, 20, cache=cache)
    sub = VolumeCache(meta[meta["case_day"] == "case2_day3"], 16, progress=False)
    with pytest.raises(KeyError, match="case1_day0_slice_0001"):
        SliceDataset(meta, 16, cache=sub)


def test_dataloader_two_workers_with_disk_cache(meta, tmp_path):
    cache = VolumeCache(meta, 16, tmp_path, progress=False)
    ds = SliceDataset(meta, 16, cache=cache, transform=build_transforms(16, train=True))
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=7, num_workers=2, multiprocessing_context="fork"
    )
    batches = list(loader)
    images = torch.cat([b[0] for b in batches])
    masks = torch.cat([b[1] for b in batches])
    assert images.shape == (14, 3, 16, 16) and masks.shape == (14, 3, 16, 16)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    # each worker reseeds the augmentation: the same sample differs between workers
    same = torch.utils.data.Subset(ds, [3] * 4)
    loader = torch.utils.data.DataLoader(
        same, batch_size=2, num_workers=2, multiprocessing_context="fork"
    )
    first, second = (b[0] for b in loader)
    assert not torch.equal(first, second)


# --------------------------------------------------------------------------- transforms
def test_transforms_strict_and_shapes(meta):
    assert build_transforms(16, train=False) is None
    with pytest.raises(ValueError, match="max_holes"):
        build_transforms(16, train=True, overrides={"CoarseDropout": {"max_holes": 8}})
    with pytest.raises(KeyError, match="Affine"):
        build_transforms(16, train=True, overrides={"ShiftScaleRotate": {"p": 1.0}})
    flip_only = {name: {"p": 0.0} for name in
                 ("Affine", "GridDistortion", "ElasticTransform", "RandomBrightnessContrast", "CoarseDropout")}  # fmt: skip
    flip_only["HorizontalFlip"] = {"p": 1.0}
    tf = build_transforms(16, train=True, overrides=flip_only, seed=0)
    plain = SliceDataset(meta, 16, mode="pad")
    flipped = SliceDataset(meta, 16, mode="pad", transform=tf)
    (a, am), (b, bm) = plain[1], flipped[1]
    assert torch.equal(b, a.flip(-1)) and torch.equal(bm, am.flip(-1))
    full = SliceDataset(meta, 16, transform=build_transforms(16, train=True, seed=1))
    for image, mask in samples(full):
        assert image.shape == (3, 16, 16) and image.dtype == torch.float32
        assert set(mask.unique().tolist()) <= {0.0, 1.0}


# --------------------------------------------------------------------------- folds
def fold_meta(n_cases: int = 12, seed: int = 0) -> pd.DataFrame:
    """Table shaped like build_metadata: 1-2 days per case, 20 slices, varying empties."""
    rng = np.random.default_rng(seed)
    rows = []
    for case in range(1, n_cases + 1):
        for day in range(int(rng.integers(1, 3))):
            k = int(rng.integers(4, 16))
            for s in range(1, 21):
                rows.append((case, day, s, f"case{case}_day{day}", s > k))
    meta = pd.DataFrame(rows, columns=["case", "day", "slice", "case_day", "empty"])
    meta["id"] = meta["case_day"] + "_slice_" + meta["slice"].map("{:04d}".format)
    return meta


def test_folds_grouped_stratified_deterministic(tmp_path):
    meta = fold_meta()
    a = assign_folds(meta, n_splits=3, seed=7, path=tmp_path / "a.json")
    assert a.groupby("case")["fold"].nunique().max() == 1  # no case in two folds
    assert sorted(a["fold"].unique()) == [0, 1, 2]
    share = a.groupby("fold")["empty"].mean()
    assert (share - a["empty"].mean()).abs().max() < 0.15
    b = assign_folds(meta, n_splits=3, seed=7, path=tmp_path / "b.json")
    pd.testing.assert_series_equal(a["fold"], b["fold"])
    c = assign_folds(meta, n_splits=3, seed=8, path=tmp_path / "c.json")
    assert not a["fold"].equals(c["fold"])
    train, valid = split_fold(a, 1)
    assert set(train["case"]).isdisjoint(valid["case"]) and len(train) + len(valid) == len(a)


def test_folds_json_round_trip_and_mismatch(tmp_path):
    meta = fold_meta()
    path = tmp_path / "folds.json"
    first = assign_folds(meta, n_splits=3, seed=1, path=path)
    obj = json.loads(path.read_text())
    assert obj["n_splits"] == 3 and obj["folds"]["case1"] == first.loc[0, "fold"]
    obj["folds"]["case1"] = (obj["folds"]["case1"] + 1) % 3  # the file wins over recomputing
    path.write_text(json.dumps(obj))
    again = assign_folds(meta, n_splits=3, seed=1, path=path)
    assert (again.loc[again["case"] == 1, "fold"] == obj["folds"]["case1"]).all()
    with pytest.raises(FoldsError, match="n_splits=3"):
        assign_folds(meta, n_splits=4, seed=1, path=path)
    bigger = pd.concat([meta, fold_meta(13).query("case == 13")])
    with pytest.raises(FoldsError, match="case13"):
        assign_folds(bigger, n_splits=3, seed=1, path=path)


def test_folds_live_in_the_runs_folder_keyed_by_the_cases(tmp_path):
    meta = fold_meta()
    folds_dir = tmp_path / "runs" / "folds"
    first = assign_folds(meta, 3, 2, folds_dir)
    files = list(folds_dir.glob("folds_3fold_seed2_*.json"))
    assert len(files) == 1 and "fold" in first
    again = assign_folds(meta, 3, 2, folds_dir)  # read back, not made again
    assert again["fold"].tolist() == first["fold"].tolist() and len(list(folds_dir.iterdir())) == 1
    other = fold_meta(13)  # other data in the same runs folder: folds of their own
    assign_folds(other, 3, 2, folds_dir)
    assert len(list(folds_dir.glob("folds_3fold_seed2_*.json"))) == 2
    with pytest.raises(FoldsError, match="folds_dir"):
        assign_folds(meta, 3, 2)
    blocked = tmp_path / "file"  # a file where the folder should be: not writable
    blocked.write_text("")
    with pytest.raises(FoldsError, match="could not write the folds file"):
        assign_folds(meta, 3, 2, blocked)


def test_fold_errors_and_bad_case_days(tmp_path):
    meta = fold_meta(n_cases=3)
    with pytest.raises(FoldsError, match="fold 3"):
        assign_folds(meta, n_splits=4, path=tmp_path / "x.json")
    folds = assign_folds(meta, n_splits=3, path=tmp_path / "y.json")
    only = folds[folds["fold"] != 2]
    with pytest.raises(FoldsError, match="fold 2"):
        split_fold(only, 2)
    bad_case, bad_day = BAD_CASE_DAYS[0].split("_")
    bad = fold_meta(n_cases=8)
    bad.loc[bad["case"] == 7, "case_day"] = BAD_CASE_DAYS[0]
    kept = assign_folds(bad, 3, path=tmp_path / "z.json", drop_bad=True)
    assert BAD_CASE_DAYS[0] not in set(kept["case_day"]) and len(kept) < len(bad)
    assert os.path.isfile(tmp_path / "z.json")


def test_uint8_cache_without_masks_serves_the_same_samples(tmp_path, synth_factory):
    """The compact mode for large sizes: images as round(255 x), masks decoded from the RLE
    per sample instead of stored; half the disk, the same masks, images within 1/255."""
    data = synth_factory(n_cases=2, seed=4, slices_per_scan=6, size=(80, 72))
    meta = build_metadata(data)
    full = VolumeCache(meta, 64, tmp_path / "c", progress=False)
    small = VolumeCache(meta, 64, tmp_path / "c", progress=False, dtype="uint8", with_masks=False)
    assert small.path != full.path and small.nbytes * 3 == full.nbytes  # 1 byte a pixel instead of 3
    a = SliceDataset(meta, 64, cache=full)
    b = SliceDataset(meta, 64, cache=small)
    for i in range(0, len(a), 5):
        (ia, ma), (ib, mb) = a[i], b[i]
        assert torch.equal(ma, mb)
        assert float((ia - ib).abs().max()) <= 0.5 / 255 + 1e-3
    with pytest.raises(ValueError, match="cache dtype='int8' is not valid"):
        VolumeCache(meta, 64, tmp_path / "c", dtype="int8")
