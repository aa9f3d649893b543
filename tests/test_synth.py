"""Tests of the synthetic dataset generator (tiny configurations: a few seconds in all)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import gi_utils.synthetic.generate as synth
from gi_utils.constants import BAD_CASE_DAYS, CLASSES, REAL_SIZES
from gi_utils.data import build_metadata, iter_volumes, read_volume, read_volume_mask
from gi_utils.synthetic import MARKER, ScanSpec, generate_dataset, plan_dataset, render_scan

PNG_RE = re.compile(
    r"^(?P<split>train|test)/case(?P<case>\d+)/case(?P=case)_day(?P<day>\d+)/scans/"
    r"slice_(?P<slice>\d{4})_(?P<w>\d+)_(?P<h>\d+)_(?P<sw>\d\.\d\d)_(?P<sh>\d\.\d\d)\.png$"
)
REAL = {(w, h): f"{s:.2f}" for w, h, s, _ in REAL_SIZES}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """2 train cases + 1 test case at real sizes, 24 slices per scan."""
    out = tmp_path_factory.mktemp("synth") / "small"
    return generate_dataset(out, n_cases=2, n_test_cases=1, seed=0, slices_per_scan=24)


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> Path:
    """One case forced to the non-square 360x310 size."""
    out = tmp_path_factory.mktemp("synth") / "wide"
    return generate_dataset(out, 1, 0, seed=1, slices_per_scan=12, size=(360, 310))


@pytest.fixture(scope="module")
def full_scan() -> tuple[ScanSpec, np.ndarray, np.ndarray]:
    """One real-length scan (144 slices) of the smallest real size, rendered in memory."""
    spec = ScanSpec(case=3, day=0, width=234, height=234, spacing=1.5, n_slices=144)
    return (spec, *render_scan(spec))


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- planning
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plan_follows_real_data(seed):
    plan = plan_dataset(20, 2, seed)
    train, test = plan["train"], plan["test"]
    sizes = Counter((s.width, s.height) for s in train)
    assert set(sizes) <= set(REAL)
    assert sizes.most_common(1)[0][0] == (266, 266)
    assert sizes[(360, 310)] >= 1 and sizes[(276, 276)] + sizes[(234, 234)] >= 1
    for s in train + test:
        assert s.spacing == float(REAL[(s.width, s.height)])
        assert s.n_slices == (80 if (s.width, s.height) == (276, 276) else 144)
        assert 1 <= s.case <= 156 and 0 <= s.day <= 40 and s.case_day not in BAD_CASE_DAYS
    days = Counter(s.case for s in train + test)
    assert len(days) == 22 and set(days.values()) <= {1, 2, 3}
    assert not {s.case for s in train} & {s.case for s in test}
    assert plan == plan_dataset(20, 2, seed)


def test_filename_uses_width_then_height():
    spec = ScanSpec(case=123, day=20, width=360, height=310, spacing=1.5, n_slices=2)
    assert spec.filename(1) == "slice_0001_360_310_1.50_1.50.png"
    assert ScanSpec(1, 0, 276, 276, 1.63, 2).filename(67) == "slice_0067_276_276_1.63_1.63.png"
    assert spec.folder("train").as_posix() == "train/case123/case123_day20/scans"


@pytest.mark.parametrize(
    "kwargs, name",
    [({"n_cases": 0}, "n_cases"), ({"n_test_cases": -1}, "n_test_cases"), ({"seed": -3}, "seed"),
     ({"slices_per_scan": 0}, "slices_per_scan"), ({"slices_per_scan": 24.5}, "slices_per_scan"),
     ({"size": (20, 300)}, "size"), ({"size": (64,)}, "size")],
)  # fmt: skip
def test_bad_parameters_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        plan_dataset(**kwargs)


# --------------------------------------------------------------------------- layout
def test_layout_is_kaggle(small):
    files = _files(small)
    pngs = [f for f in files if f.endswith(".png")]
    assert set(files) - set(pngs) == {"train.csv", "sample_submission.csv", MARKER}
    splits = Counter()
    for f in pngs:
        m = PNG_RE.match(f)
        assert m, f
        assert REAL[(int(m["w"]), int(m["h"]))] == m["sw"] == m["sh"], f
        splits[m["split"]] += 1
    assert splits["train"] > 0 and splits["test"] > 0
    assert (small / "sample_submission.csv").read_text() == "id,class,predicted\n"
    assert not list(small.parent.glob("*.tmp-*"))


def test_train_csv_rows(small):
    lines = (small / "train.csv").read_text().splitlines()
    assert lines[0] == "id,class,segmentation"
    df = pd.read_csv(small / "train.csv")
    matches = [PNG_RE.match(f) for f in _files(small) if f.startswith("train/")]
    ids = {f"case{m['case']}_day{m['day']}_slice_{m['slice']}" for m in matches}
    assert len(df) == 3 * len(ids) and set(df["id"]) == ids
    assert all(re.fullmatch(r"case\d+_day\d+_slice_\d{4}", i) for i in df["id"])
    assert (df["class"].to_numpy().reshape(-1, 3) == np.array(CLASSES)).all()
    assert (df["id"].to_numpy().reshape(-1, 3) == df["id"].to_numpy()[::3, None]).all()
    assert df["segmentation"].isna().any() and df["segmentation"].notna().any()
    assert any(line.endswith(",") for line in lines)  # empty field, not ""


def test_test_split_has_no_labels(small):
    test = build_metadata(small, "test")
    train = build_metadata(small, "train")
    assert len(test) > 0 and "large_bowel" not in test.columns
    assert not set(test["case"]) & set(train["case"])


def test_png_is_16bit_with_height_width_order(wide):
    pngs = sorted(wide.rglob("*.png"))
    assert len(pngs) > 0 and len(pngs) % 12 == 0  # 1-3 scans of 12 slices
    for p in pngs:
        assert p.name.endswith("_360_310_1.50_1.50.png")
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert img.dtype == np.uint16 and img.shape == (310, 360)
    assert img.max() > 255  # uses the 16-bit range


# --------------------------------------------------------------------------- content
def test_read_back_equals_render(small):
    meta = build_metadata(small)
    scans = 0
    for case_day, rows in iter_volumes(meta):
        spec = next(s for s in plan_dataset(2, 1, 0, 24)["train"] if s.case_day == case_day)
        image, masks = render_scan(spec)
        np.testing.assert_array_equal(read_volume(rows), image)
        np.testing.assert_array_equal(read_volume_mask(rows), masks)
        assert (rows["empty"].to_numpy() == ~masks.any(axis=(1, 2, 3))).all()
        scans += 1
    assert scans == len(plan_dataset(2, 1, 0, 24)["train"])


def test_masks_line_up_with_drawn_organs(full_scan):
    _, image, masks = full_scan
    kernel = np.ones((7, 7), np.uint8)
    for c, name in enumerate(CLASSES):
        inside, ring = [], []
        for k in np.flatnonzero(masks[..., c].sum(axis=(1, 2)) > 30):
            m = masks[k, :, :, c]
            around = cv2.dilate(m.astype(np.uint8), kernel).astype(bool) & ~m
            inside.append(image[k][m].mean())
            ring.append(image[k][around].mean())
        assert len(inside) > 5, name
        contrast = abs(np.mean(inside) - np.mean(ring)) / np.mean(ring)
        assert contrast > 0.08, (name, contrast)


def test_organs_are_coherent_in_3d(full_scan):
    spec, _, masks = full_scan
    ranges = {}
    for c, name in enumerate(CLASSES):
        present = np.flatnonzero(masks[..., c].any(axis=(1, 2)))
        assert len(present) > 10, name
        lo, hi = present[0], present[-1]
        assert (np.diff(present) == 1).all(), f"{name} has gaps along z"
        assert 0.1 * spec.n_slices < lo and hi < 0.9 * spec.n_slices, name
        a, b = masks[lo:hi, :, :, c], masks[lo + 1 : hi + 1, :, :, c]
        inter = (a & b).sum(axis=(1, 2))
        iou = inter / (a | b).sum(axis=(1, 2))
        # overlap coefficient: an organ's tip lies inside the next slice's section
        overlap = inter / np.minimum(a.sum(axis=(1, 2)), b.sum(axis=(1, 2)))
        assert np.median(iou) > 0.7 and overlap.min() > 0.35, (name, np.median(iou), overlap.min())
        ranges[name] = (lo + hi) / 2
    assert ranges["stomach"] > ranges["large_bowel"]  # stomach higher up (towards slice D)


def test_about_half_of_slices_are_empty():
    plan = plan_dataset(4, 0, seed=3, slices_per_scan=72, size=(96, 96))
    empty = [~render_scan(s)[1].any(axis=(1, 2, 3)) for s in plan["train"]]
    fraction = np.concatenate(empty).mean()
    assert 0.45 <= fraction <= 0.60, fraction


def test_same_seed_gives_identical_files(tmp_path):
    kw = dict(n_cases=1, n_test_cases=1, slices_per_scan=6, size=(64, 64))
    a = generate_dataset(tmp_path / "a", seed=5, **kw)
    b = generate_dataset(tmp_path / "b", seed=5, **kw)
    c = generate_dataset(tmp_path / "c", seed=6, **kw)
    assert _files(a) == _files(b)
    for f in _files(a):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert (a / "train.csv").read_bytes() != (c / "train.csv").read_bytes()


# --------------------------------------------------------------------------- writing, CLI
def test_refuses_foreign_folder_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=re.escape(str(foreign))):
        generate_dataset(foreign, 1, 0, slices_per_scan=4, size=(48, 48))
    assert (foreign / "notes.txt").read_text() == "mine"

    out = generate_dataset(tmp_path / "data", 1, 0, slices_per_scan=4, size=(48, 48))
    before = (out / "train.csv").read_bytes()

    def boom(spec):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synth, "render_label_map", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_dataset(out, 2, 0, seed=9, slices_per_scan=4, size=(48, 48))
    assert (out / "train.csv").read_bytes() == before  # previous dataset untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "data_solution.csv", "foreign"]


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--cases", "1", "--test-cases", "1", "--slices", "5", "--size", "64x64", "--quiet"]
    proc = subprocess.run(
        [sys.executable, "-m", "gi_utils.synthetic", str(out), *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1 and proc.stdout.startswith(f"wrote {out}:")
    assert len(build_metadata(out)) == 5 * len(plan_dataset(1, 1, 0, 5, (64, 64))["train"])

    assert synth.main([str(out), *args, "--seed", "1"]) == 0  # a synth output: replaced
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("keep")
    with pytest.raises(SystemExit) as exc:
        synth.main([str(tmp_path / "other"), *args])
    assert exc.value.code == 2 and str(tmp_path / "other") in capsys.readouterr().err
    assert synth.main([str(tmp_path / "other"), *args, "--force"]) == 0
    assert not (tmp_path / "other" / "x.txt").exists()
    with pytest.raises(SystemExit):
        synth.main([str(out), "--size", "64by64"])
