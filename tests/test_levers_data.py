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
    DeviceBatches,
    SliceDataset,
    VolumeCache,
    build_metadata,
    neighbour_rows,
    tail_slices,
)
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
