"""What each data lever does (docs/levers.md), on hand-made cases: the 1st place's tail
filter drops exactly the slices its rule drops, 5-slice stacks hold the right neighbours
at a scan's edges on both data paths."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import write_kaggle_tree
from gi_utils.data import (
    TAIL_SLICES,
    BatchMix,
    DeviceBatches,
    DevicePatches,
    PatchDataset,
    SliceDataset,
    VolumeCache,
    body_box,
    build_metadata,
    cut_box,
    intensity_clip,
    mix_generator,
    neighbour_rows,
    preprocess_mask,
    restore_size,
    scan_box,
    tail_slices,
)
from gi_utils.inference import predict_volume
from gi_utils.models import ModelConfig
from gi_utils.training import EpochSampler


# --------------------------------------------------------------------------- tail filter
def _first_place_tails(train_csv: pd.DataFrame) -> set[str]:
    """The 1st place's rule as its data_preprocess.py states it, on a train.csv table:
    rows sorted by id and class, per case-day the slice of the last row with a
    segmentation is ``end``; the tail is the slices numbered end+1 .. end+5."""
    df = train_csv.sort_values(["id", "class"]).reset_index(drop=True)
    df["days"] = df["id"].str.split("_").str[:2].str.join("_")
    df["slice"] = df["id"].str.split("_").str[-1].astype(int)
    tails = set()
    for _, group in df.groupby("days"):
        end = group["slice"].iloc[np.where(~group["segmentation"].isna())[0][-1]]
        tail = group[group["slice"].isin(np.arange(end + 1, end + 6))]
        tails.update(tail["id"])
    return tails


def test_tail_filter_drops_exactly_the_first_places_slices(tmp_path):
    # three scans: annotations ending at slice 7 of 16, at the last-but-two slice (the tail
    # runs off the end), and with a gap (slices 3-4 annotated, 5-6 empty, 8 annotated)
    d, h, w = 16, 24, 20
    masks = {cd: np.zeros((d, h, w, 3), bool) for cd in ("case1_day0", "case1_day1", "case2_day0")}
    masks["case1_day0"][2:7, 5:9, 5:9, 0] = True  # slices 3..7, large bowel
    masks["case1_day1"][5:14, 5:9, 5:9, 2] = True  # slices 6..14, stomach: tail 15, 16
    masks["case2_day0"][2:4, 5:9, 5:9, 1] = True  # slices 3, 4 ...
    masks["case2_day0"][7, 2:4, 2:4, 0] = True  # ... and 8: the tail follows slice 8
    root = write_kaggle_tree(tmp_path / "data", {cd: (d, w, h) for cd in masks}, masks)
    meta = build_metadata(root, "train")
    drop = tail_slices(meta, TAIL_SLICES)
    train_csv = pd.read_csv(root / "train.csv")  # NaN where empty, as pandas reads it
    assert set(meta.loc[drop, "id"]) == _first_place_tails(train_csv)
    got = {cd: meta.loc[drop & (meta["case_day"] == cd), "slice"].tolist() for cd in masks}
    assert got == {"case1_day0": [8, 9, 10, 11, 12], "case1_day1": [15, 16], "case2_day0": [9, 10, 11, 12, 13]}
    assert not (drop & ~meta["empty"]).any()  # a tail slice is never an annotated one
    assert not tail_slices(meta, 0).any()


def test_a_scan_without_annotation_has_no_tail():
    meta = pd.DataFrame({"case_day": ["case1_day0"] * 3 + ["case2_day0"] * 3, "slice": [1, 2, 3] * 2,
                         "empty": [True, True, True, False, True, True]})  # fmt: skip
    assert tail_slices(meta, 5).tolist() == [False, False, False, False, True, True]


def test_sampler_never_draws_excluded_samples_and_is_unchanged_without():
    empty = np.array([False, True, True, False, True, True, True, False])
    exclude = np.zeros(8, bool)
    exclude[[4, 5]] = True
    plain = EpochSampler(empty, seed=3, empty_fraction=1.0)
    same = EpochSampler(empty, seed=3, empty_fraction=1.0, exclude=np.zeros(8, bool))
    cut = EpochSampler(empty, seed=3, empty_fraction=1.0, exclude=exclude)
    for epoch in range(4):
        np.testing.assert_array_equal(plain.indices(epoch), same.indices(epoch))
        drawn = cut.indices(epoch)
        assert sorted(drawn.tolist()) == [0, 1, 2, 3, 6, 7]
    with pytest.raises(ValueError, match="exclude has 3 entries for 8 samples"):
        EpochSampler(empty, seed=3, exclude=np.zeros(3, bool))


# --------------------------------------------------------------------------- 5-slice stacks
FIVE = (-2, -1, 0, 1, 2)


def test_neighbour_table_of_five_slices_at_the_edges():
    # two scans of 6 and 4 slices, one after the other: no stack reaches into the other
    table = neighbour_rows(np.array(["a"] * 6 + ["b"] * 4), FIVE)
    assert table[0].tolist() == [0, 0, 0, 1, 2]
    assert table[1].tolist() == [0, 0, 1, 2, 3]
    assert table[5].tolist() == [3, 4, 5, 5, 5]
    assert table[6].tolist() == [6, 6, 6, 7, 8]
    assert table[9].tolist() == [7, 8, 9, 9, 9]


@pytest.fixture(scope="module")
def two_scans(tmp_path_factory):
    """case1_day0: 6 slices, case2_day0: 4 slices; slice s has intensity 100 s."""
    root = write_kaggle_tree(tmp_path_factory.mktemp("five") / "data",
                             {"case1_day0": (6, 32, 32), "case2_day0": (4, 32, 32)})  # fmt: skip
    return build_metadata(root, "train")


def _slice_numbers(images: torch.Tensor, depth: int) -> list[int]:
    """Slice s of a scan of ``depth`` slices is constant s / depth after normalisation
    (its 99.5th percentile is the top slice, 100 * depth)."""
    return torch.round(images[:, 16, 16].float() * depth).long().tolist()


@pytest.mark.parametrize("path", ["workers-cached", "workers-uncached", "device"])
def test_five_slice_stacks_hold_the_right_neighbours_at_the_edges(two_scans, path):
    meta = two_scans
    cache = None if path == "workers-uncached" else VolumeCache(meta, 32, progress=False)
    depth = meta.groupby("case_day")["slice"].transform("size").to_numpy()
    if path == "device":
        data = DeviceBatches(meta, cache, FIVE, "cpu")
        images, _ = data.gather(np.arange(len(meta)))
    else:
        ds = SliceDataset(meta, 32, FIVE, cache=cache)
        images = torch.stack([ds[i][0] for i in range(len(ds))])
    assert images.shape == (10, 5, 32, 32)
    got = [_slice_numbers(images[i], int(depth[i])) for i in range(10)]
    assert got[0] == [1, 1, 1, 2, 3] and got[1] == [1, 1, 2, 3, 4] and got[5] == [4, 5, 6, 6, 6]
    assert got[6] == [1, 1, 1, 2, 3] and got[9] == [2, 3, 4, 4, 4]  # the second scan, its own edges


# --------------------------------------------------------------------------- CutMix / MixUp
def _batch(n: int = 4, s: int = 16, depth: int | None = None):
    """Sample k: image k + 1 in every channel, its own mask (class k % 3 in a corner block)."""
    lead = (n, 3) if depth is None else (n, 1, depth)
    images = torch.arange(1, n + 1, dtype=torch.float32).reshape(n, *[1] * (len(lead) + 1)) * torch.ones(*lead, s, s)
    masks = torch.zeros(n, 3, *([] if depth is None else [depth]), s, s)
    for k in range(n):
        masks[k, k % 3, ..., : 4 + 2 * k, : 4 + 2 * k] = 1
    return images, masks


@pytest.mark.parametrize("depth", [None, 4], ids=["2.5d", "3d"])
def test_a_cutmix_box_carries_the_mask_of_its_source(depth):
    images, masks = _batch(depth=depth)
    mixed, mixed_masks, d = BatchMix("cutmix", p=1.0)(images, masks, mix_generator(7, 2, 5))
    assert d["apply"] and d["method"] == "cutmix"
    y0, x0, y1, x1 = d["box"]
    assert (y1 - y0) * (x1 - x0) > 0
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[y0:y1, x0:x1] = True
    for i, j in enumerate(d["perm"].tolist()):
        assert torch.equal(mixed[i][..., inside], images[j][..., inside])
        assert torch.equal(mixed_masks[i][..., inside], masks[j][..., inside])  # the source's mask
        assert torch.equal(mixed[i][..., ~inside], images[i][..., ~inside])
        assert torch.equal(mixed_masks[i][..., ~inside], masks[i][..., ~inside])
    assert torch.equal(images, _batch(depth=depth)[0])  # the input is left as it was


def test_cut_box_area_is_one_minus_lambda():
    assert cut_box((32, 32), 0.75, (0.5, 0.5)) == (8, 8, 24, 24)  # (1 - 0.75) * 32 * 32 = 16 x 16
    assert cut_box((32, 32), 0.75, (0.0, 1.0)) == (0, 24, 8, 32)  # clipped at the border


def test_mixup_targets_are_the_same_mix_as_its_inputs():
    images, masks = _batch()
    mixed, mixed_masks, d = BatchMix("mixup", p=1.0)(images, masks, mix_generator(1, 0, 0))
    lam, perm = d["lam"], d["perm"]
    assert d["method"] == "mixup" and 0 < lam < 1
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images[perm])
    torch.testing.assert_close(mixed_masks, lam * masks + (1 - lam) * masks[perm])
    for i, j in enumerate(perm.tolist()):  # the weight read off the image is the masks' weight
        w = ((mixed[i, 0, 0, 0] - (j + 1)) / ((i + 1) - (j + 1))).item() if i != j else lam
        torch.testing.assert_close(mixed_masks[i], w * masks[i] + (1 - w) * masks[j])


def test_mixing_is_a_function_of_seed_epoch_batch_and_p():
    images, masks = _batch()
    mix = BatchMix("cutmix_mixup", p=0.33)
    draws = [mix.draw(4, mix_generator(3, e, b)) for e in range(3) for b in range(20)]
    again = [mix.draw(4, mix_generator(3, e, b)) for e in range(3) for b in range(20)]
    assert [(d["apply"], d["method"], d["perm"].tolist()) for d in draws] == [
        (d["apply"], d["method"], d["perm"].tolist()) for d in again]
    share = np.mean([d["apply"] for d in draws])
    assert 0.15 < share < 0.55 and {d["method"] for d in draws} == {"cutmix", "mixup"}
    same = BatchMix("mixup", p=0.0)(images, masks, mix_generator(3, 0, 0))
    assert same[0] is images and same[1] is masks
    with pytest.raises(ValueError, match="mix='blend'"):
        BatchMix("blend", 0.5)


# --------------------------------------------------------------------------- 3-D small crops
def test_3d_crops_are_windows_of_the_patches_on_both_paths(synth_factory):
    meta = build_metadata(synth_factory(n_cases=4, seed=0, slices_per_scan=12, size=(80, 72)))
    cache = VolumeCache(meta, 32, None, progress=False)
    whole = PatchDataset(meta, cache, 8, None, patches_per_volume=2)
    cropped = PatchDataset(meta, cache, 8, None, patches_per_volume=2, crop=16)
    on_device = DevicePatches(cropped, cache, "cpu", seed=5)
    key = (5, 1)
    corners = set()
    for i in range(len(whole)):
        whole.seed_sample((*key, i))
        cropped.seed_sample((*key, i))
        (wi, wm), (ci, cm) = whole[i], cropped[i]
        y, x = cropped.crop_of((*key, i), i)
        corners.add((y, x))
        assert ci.shape == (1, 8, 16, 16) and cm.shape == (3, 8, 16, 16)
        assert torch.equal(ci, wi[..., y : y + 16, x : x + 16]) and torch.equal(cm, wm[..., y : y + 16, x : x + 16])
    assert len(corners) > 1  # placed at random
    index = np.arange(len(cropped))
    images, packed = on_device.gather(index, epoch=1)
    for i in index:
        cropped.seed_sample((5, 1, int(i)))
        ci, cm = cropped[int(i)]
        assert torch.equal(images[i], ci) and torch.equal(on_device.unpack(packed[i : i + 1])[0], cm)
    with pytest.raises(ValueError, match="crop=40 must be in 0..img_size"):
        PatchDataset(meta, cache, 8, None, crop=40)


# --------------------------------------------------------------------------- body crop
def _body_scan(d: int = 3, h: int = 70, w: int = 80):
    """Air (0) around a body (200) at rows 13:39, columns 23:49, an organ (1000) inside it:
    the body box, 3 pixels of margin on each side, is 32 x 32 at (10, 42, 20, 52)."""
    vol = np.zeros((d, h, w), np.uint16)
    vol[:, 13:39, 23:49] = 200
    mask = np.zeros((d, h, w, 3), bool)
    mask[:, 18:30, 27:41] = True  # every class: the organ
    mask[1, 20:25, 30:33, 1] = False
    vol[mask[..., 0]] = 1000
    return vol, mask


def test_body_box_of_a_scan():
    vol, _ = _body_scan()
    assert body_box(vol, intensity_clip(vol)) == (10, 42, 20, 52)
    assert body_box(np.zeros((2, 40, 50), np.uint16), 0.0) == (0, 40, 0, 50)  # an empty scan: all of it
    thin = np.zeros((1, 100, 100), np.uint16)
    thin[0, 49:52, 10:90] = 500  # a thin bright band: the box keeps a quarter of the side
    top, bottom, left, right = body_box(thin, 500.0)
    assert bottom - top == 25 and top <= 50 < bottom and (left, right) == (6, 94)


def test_body_crop_round_trip_returns_the_original_mask():
    """Crop, resize, predict the truth, uncrop: the original mask (the box is 32 px, the
    model's input 64: every pixel maps to a 2 x 2 block and back)."""
    vol, mask = _body_scan()
    box = scan_box(vol, "crop")
    truth = preprocess_mask(mask, 64, "crop", box)  # (D, 3, 64, 64): what the cache holds
    pred = np.moveaxis(truth, 1, -1)  # a model that predicts the truth
    np.testing.assert_array_equal(restore_size(pred, vol.shape[1:], "crop", box), mask)
    probs = restore_size(pred.astype(np.float32), vol.shape[1:], "crop", box)
    np.testing.assert_array_equal(probs > 0.5, mask)
    with pytest.raises(ValueError, match="needs the scan's body box"):
        restore_size(pred, vol.shape[1:], "crop")


class _Thresholds(torch.nn.Module):
    """A stand-in model that predicts the truth of _body_scan: the organ is the bright part."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(1000.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.gain * (x[:, :1] - 0.6)).expand(-1, 3, -1, -1)


def test_predict_volume_maps_the_body_crop_back_exactly(tmp_path):
    vol, mask = _body_scan()
    organ = mask[..., 0]
    config = ModelConfig(arch="unet", encoder="resnet18", in_channels=1, img_size=64, resize_mode="crop",
                         slice_offsets=[0])  # fmt: skip
    probs, _ = predict_volume([(_Thresholds(), config)], vol)
    assert probs.shape == (*vol.shape, 3)
    np.testing.assert_array_equal(probs[..., 0] > 0.5, organ)
    assert (probs[:, :10] == 0).all() and (probs[:, :, 52:] == 0).all()  # outside the box: no organ


def test_a_crop_cache_keeps_each_scans_box_and_cuts_its_masks(tmp_path):
    vol, mask = _body_scan()
    root = tmp_path / "data"
    for case_day, flip in (("case1_day0", False), ("case2_day0", True)):
        v, m = (vol[:, :, ::-1].copy(), mask[:, :, ::-1].copy()) if flip else (vol, mask)
        _write_scan(root, case_day, v, m)
    meta = build_metadata(root, "train")
    cache = VolumeCache(meta, 64, tmp_path / "cache", mode="crop", progress=False)
    assert cache.boxes == {"case1_day0": (10, 42, 20, 52), "case2_day0": (10, 42, 28, 60)}
    again = VolumeCache(meta, 64, tmp_path / "cache", mode="crop", progress=False)
    assert again.reused and again.boxes == cache.boxes  # read back from the folder's index
    np.testing.assert_array_equal(cache.mask("case1_day0"), preprocess_mask(mask, 64, "crop", cache.boxes["case1_day0"]))
    ds = SliceDataset(meta, 64, (0,), cache=cache, mode="crop")
    assert ds[1][1].shape == (3, 64, 64) and ds[1][1].sum() > 0
    with pytest.raises(ValueError, match="mode='crop' reads the cache"):
        SliceDataset(meta, 64, (0,), mode="crop")


def _write_scan(root, case_day: str, vol: np.ndarray, mask: np.ndarray) -> None:
    """One scan in the Kaggle layout (train.csv appended)."""
    import cv2

    from gi_utils.data import encode_rle

    case = case_day.split("_")[0]
    folder = root / "train" / case / case_day / "scans"
    folder.mkdir(parents=True)
    d, h, w = vol.shape
    rows = []
    for k in range(d):
        assert cv2.imwrite(str(folder / f"slice_{k + 1:04d}_{w}_{h}_1.50_1.50.png"), vol[k])
        rows += [(f"{case_day}_slice_{k + 1:04d}", name, encode_rle(mask[k, ..., c])) for c, name in
                 enumerate(("large_bowel", "small_bowel", "stomach"))]  # fmt: skip
    csv = root / "train.csv"
    table = pd.DataFrame(rows, columns=["id", "class", "segmentation"])
    table.to_csv(csv, mode="a", header=not csv.exists(), index=False)
