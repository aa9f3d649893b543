"""Data layer: id and file-name parsing, the metadata table, images and masks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from gi_utils.constants import CLASSES, REAL_SIZES
from gi_utils.data import (
    DataError,
    ImageReadError,
    build_metadata,
    iter_volumes,
    make_id,
    parse_id,
    parse_slice_filename,
    read_image,
    read_train_csv,
    read_volume,
    read_volume_mask,
    slice_mask,
)


def test_parse_id_round_trip():
    assert parse_id("case123_day20_slice_0001") == (123, 20, 1)
    assert make_id(123, 20, 1) == "case123_day20_slice_0001"


@pytest.mark.parametrize("bad", ["case1_day2_slice_", "case1_slice_0001", "", "Case1_day0_slice_0001"])
def test_parse_id_rejects(bad):
    with pytest.raises(DataError, match="is not of the form"):
        parse_id(bad)


@pytest.mark.parametrize(("width", "height", "spacing", "_n"), REAL_SIZES)
def test_parse_filename_all_real_sizes(width, height, spacing, _n):
    info = parse_slice_filename(f"slice_0067_{width}_{height}_{spacing:.2f}_{spacing:.2f}.png")
    assert info == {
        "slice": 67, "width": width, "height": height,
        "spacing_w": spacing, "spacing_h": spacing,
    }  # fmt: skip


def test_parse_filename_width_then_height():
    info = parse_slice_filename("train/case1/case1_day0/scans/slice_0067_360_310_1.50_1.50.png")
    assert (info["width"], info["height"]) == (360, 310)


@pytest.mark.parametrize("bad", ["slice_0067_360_310.png", "slice_67_a_310_1.5_1.5.png", "img.png"])
def test_parse_filename_rejects(bad):
    with pytest.raises(DataError, match="does not follow"):
        parse_slice_filename(bad)


def test_metadata_table(tiny_tree):
    root, _ = tiny_tree
    meta = build_metadata(root)
    assert len(meta) == 7
    assert list(meta.columns[:10]) == [
        "id", "case", "day", "slice", "case_day", "width", "height",
        "spacing_w", "spacing_h", "path",
    ]  # fmt: skip
    assert list(meta.columns[10:13]) == list(CLASSES)
    assert meta["id"].tolist()[:3] == [f"case1_day0_slice_000{i}" for i in (1, 2, 3)]
    row = meta.set_index("id").loc["case2_day5_slice_0001"]
    assert (row["width"], row["height"]) == (360, 310)
    assert meta["empty"].sum() == 4  # slices 2, 3, 4 of case2_day5 carry labels


def test_read_image_keeps_16_bits(tmp_path):
    img = (np.arange(310 * 360, dtype=np.uint32) % 65536).astype(np.uint16).reshape(310, 360)
    path = tmp_path / "slice_0001_360_310_1.50_1.50.png"
    cv2.imwrite(str(path), img)
    out = read_image(path)
    assert out.dtype == np.uint16 and out.shape == (310, 360)
    np.testing.assert_array_equal(out, img)


def test_masks_line_up(tiny_tree):
    root, mask = tiny_tree
    meta = build_metadata(root)
    vols = dict(iter_volumes(meta))
    assert list(vols) == ["case1_day0", "case2_day5"]
    rows = vols["case2_day5"]
    got = read_volume_mask(rows)
    assert got.shape == (4, 310, 360, 3)
    np.testing.assert_array_equal(got, mask)
    vol = read_volume(rows)
    assert vol.shape == (4, 310, 360) and vol.dtype == np.uint16
    assert [int(v[0, 0]) for v in vol] == [100, 200, 300, 400]  # slice order
    assert slice_mask(rows.iloc[2])[0, 0, 2]  # first pixel of stomach


@pytest.mark.filterwarnings("ignore:scan .* has gaps")
def test_missing_image_for_csv_id_is_reported(tiny_tree):
    root, _ = tiny_tree
    victim = next((root / "train/case1/case1_day0/scans").glob("slice_0002_*.png"))
    victim.unlink()
    with pytest.raises(DataError, match=r"case1_day0_slice_0002.*case1/case1_day0/scans"):
        build_metadata(root)


def test_undecodable_png_is_reported(tmp_path):
    path = tmp_path / "slice_0001_4_4_1.50_1.50.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ImageReadError, match=str(path)):
        read_image(path)


def test_missing_image_is_reported(tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "nope.png")


def test_rgb_rejected_and_8bit_widened(tmp_path):
    rgb = tmp_path / "slice_0001_4_4_1.50_1.50.png"
    cv2.imwrite(str(rgb), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ImageReadError, match="grayscale"):
        read_image(rgb)
    gray8 = tmp_path / "slice_0002_4_4_1.50_1.50.png"
    cv2.imwrite(str(gray8), np.full((4, 4), 7, np.uint8))
    with pytest.warns(UserWarning, match="8-bit"):
        out = read_image(gray8)
    assert out.dtype == np.uint16 and out[0, 0] == 7


def test_size_mismatch_with_name(tmp_path):
    path = tmp_path / "slice_0001_360_310_1.50_1.50.png"
    cv2.imwrite(str(path), np.zeros((360, 310), np.uint16))  # transposed
    with pytest.raises(ImageReadError, match=r"\(360, 310\).*\(310, 360\)"):
        read_image(path)


def _csv(tmp_path: Path, rows, columns=("id", "class", "segmentation")) -> Path:
    path = tmp_path / "train.csv"
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return path


def test_train_csv_validation(tmp_path):
    ok = [("case1_day0_slice_0001", c, "") for c in CLASSES]
    wide = read_train_csv(_csv(tmp_path, ok))
    assert list(wide.columns) == list(CLASSES) and (wide == "").all().all()
    with pytest.raises(DataError, match="columns"):
        read_train_csv(_csv(tmp_path, ok, columns=("id", "klass", "segmentation")))
    with pytest.raises(DataError, match="duplicate.*case1_day0_slice_0001.*stomach"):
        read_train_csv(_csv(tmp_path, [*ok, ok[2]]))
    with pytest.raises(DataError, match="unknown class 'liver'"):
        read_train_csv(_csv(tmp_path, [*ok, ("case1_day0_slice_0002", "liver", "")]))
    with pytest.raises(DataError, match="id 'case1_slice_0001'"):
        read_train_csv(_csv(tmp_path, [("case1_slice_0001", "stomach", "")]))
    with pytest.raises(DataError, match="not found"):
        read_train_csv(tmp_path / "absent.csv")


def test_bad_mask_names_id_and_class(tiny_tree):
    root, _ = tiny_tree
    df = pd.read_csv(root / "train.csv")
    df.loc[0, "segmentation"] = "1 2 3"
    df.to_csv(root / "train.csv", index=False)
    meta = build_metadata(root)
    with pytest.raises(DataError, match=r"case1_day0_slice_0001.*large_bowel.*odd"):
        slice_mask(meta.iloc[0])


def test_gap_in_slices_warns(tiny_tree):
    root, _ = tiny_tree
    victim = next((root / "train/case1/case1_day0/scans").glob("slice_0002_*.png"))
    victim.unlink()
    df = pd.read_csv(root / "train.csv")
    df[~df["id"].eq("case1_day0_slice_0002")].to_csv(root / "train.csv", index=False)
    with pytest.warns(UserWarning, match=r"case1_day0.*gaps.*\[2\]"):
        build_metadata(root)


def test_bad_file_name_in_tree(tiny_tree):
    root, _ = tiny_tree
    (root / "train/case1/case1_day0/scans/slice_x.png").write_bytes(b"")
    with pytest.raises(DataError, match="slice_x.png"):
        build_metadata(root)


def test_test_split_without_labels(tiny_tree):
    root, _ = tiny_tree
    (root / "train").rename(root / "test")
    meta = build_metadata(root, split="test")
    assert "empty" not in meta.columns and len(meta) == 7
    with pytest.raises(DataError, match="no 'train' folder"):
        build_metadata(root, split="train")
