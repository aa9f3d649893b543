"""Shared fixtures: synthetic datasets and tiny configs. The offline, hermetic environment
of every session (a temporary runs folder, the nbval sanitizer) is the repository's root
``conftest.py``, which pytest loads for ``pytest notebooks`` alone too."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from standin.image import base_layer
from standin.image import kaggle_image as build_kaggle_image

from gi_utils.constants import CLASSES
from gi_utils.data import encode_rle
from gi_utils.synthetic import generate_dataset
from gi_utils.training import TrainConfig


@pytest.fixture(scope="session")
def synth_factory(tmp_path_factory):
    """``make(n_cases=4, n_test_cases=1, seed=0, slices_per_scan=12, size=None)``: a
    synthetic dataset in the Kaggle layout, written once per set of parameters."""
    made: dict[tuple, Path] = {}

    def make(n_cases: int = 4, n_test_cases: int = 1, seed: int = 0, slices_per_scan: int = 12,
             size: tuple[int, int] | None = None) -> Path:  # fmt: skip
        key = (n_cases, n_test_cases, seed, slices_per_scan, size)
        if key not in made:
            made[key] = generate_dataset(tmp_path_factory.mktemp("synth") / "data", n_cases, n_test_cases,
                                         seed, slices_per_scan=slices_per_scan, size=size)  # fmt: skip
        return made[key]

    return make


@pytest.fixture(scope="session")
def kaggle_image() -> Path:
    """The prefix of the Kaggle image stand-in (tests/standin/image.py): built once from
    tests/standin/kaggle_image.txt, cached between runs; sessions are layered over it."""
    return build_kaggle_image()


@pytest.fixture(scope="session")
def old_albumentations_image() -> Path:
    """The Kaggle image stand-in with albumentations 1.4.20, older than gi_utils needs (1.4.21)."""
    return build_kaggle_image({"albumentations": "1.4.20"})


@pytest.fixture(scope="session")
def base_image() -> Path:
    """A layer with only the base dependencies of gi_utils (no extras), cached."""
    return base_layer()


@pytest.fixture(scope="session")
def bundle_wheels(tmp_path_factory) -> Path:
    """A folder with the wheels of this checkout's gi_utils, smp and MONAI (built once)."""
    from gi_utils.pipeline import build_wheels

    out = tmp_path_factory.mktemp("wheels")
    build_wheels(out)
    return out


@pytest.fixture(scope="session")
def tiny_config():
    """``make(data_dir, out_dir, **fields)``: a TrainConfig for seconds-long CPU runs."""

    def make(data_dir: Path, out_dir: Path, **kw) -> TrainConfig:
        base = {"data_dir": str(data_dir), "out_dir": str(out_dir), "img_size": 64, "epochs": 1,
                "batch_size": 4, "n_folds": 2, "progress": False, "device": "cpu"}  # fmt: skip
        return TrainConfig(**{**base, **kw})

    return make


def write_kaggle_tree(
    root: Path,
    scans: dict[str, tuple[int, int, int]],
    masks: dict[str, np.ndarray] | None = None,
    spacing: float = 1.5,
) -> Path:
    """Write a hand-made dataset in the Kaggle layout.

    Args:
        root: data root to create.
        scans: ``{"case1_day0": (n_slices, width, height)}``.
        masks: optional ``{"case1_day0": bool (D, H, W, 3)}``; others get empty masks.
        spacing: pixel spacing written in the file names.

    Each slice s of a scan has constant intensity ``100 * s`` so tests can tell slices apart.
    """
    rows = []
    for case_day, (n, w, h) in scans.items():
        case = case_day.split("_")[0]
        folder = root / "train" / case / case_day / "scans"
        folder.mkdir(parents=True, exist_ok=True)
        vol_mask = (masks or {}).get(case_day)
        for s in range(1, n + 1):
            img = np.full((h, w), 100 * s, dtype=np.uint16)
            cv2.imwrite(str(folder / f"slice_{s:04d}_{w}_{h}_{spacing:.2f}_{spacing:.2f}.png"), img)
            for c, name in enumerate(CLASSES):
                rle = encode_rle(vol_mask[s - 1, ..., c]) if vol_mask is not None else ""
                rows.append((f"{case_day}_slice_{s:04d}", name, rle))
    pd.DataFrame(rows, columns=["id", "class", "segmentation"]).to_csv(root / "train.csv", index=False)
    return root


@pytest.fixture
def tiny_tree(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """Two scans: a square 266x266 one with masks, a non-square 360x310 one without."""
    h, w = 310, 360
    mask = np.zeros((4, h, w, 3), dtype=bool)
    mask[1, 10:20, 300:340, 0] = True  # large bowel, slice 2, right side
    mask[2, 100:150, 50:60, 1] = True  # small bowel, slice 3
    mask[2, 0, 0, 2] = True  # stomach: the very first pixel
    mask[3, -1, -1, 2] = True  # stomach: the very last pixel
    root = write_kaggle_tree(
        tmp_path / "data",
        {"case1_day0": (3, 266, 266), "case2_day5": (4, w, h)},
        masks={"case2_day5": mask},
    )
    return root, mask
