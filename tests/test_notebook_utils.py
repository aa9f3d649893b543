"""Parameter checking and JSON records used by the notebooks; EDA tables and plots."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pandas as pd
import pytest

from gi_utils.atomic import atomic_write_json, read_json
from gi_utils.constants import CLASSES
from gi_utils.data import build_metadata
from gi_utils.pipeline import ParameterError, check_params, new_names
from gi_utils.report import (
    dataset_summary,
    empty_share,
    organ_area_by_position,
    overlay_rgb,
    plot_history,
    plot_overlays,
    save_figure,
    size_table,
)

SPEC = {"arch": str, "epochs": int, "lr": float, "slices": tuple, "data_dir": str, "amp": bool}
GIVEN = {"arch": "unet", "epochs": 1, "lr": 1e-3, "slices": (-2, 0, 2), "data_dir": "", "amp": False}


def test_check_params_defaults_and_coercion():
    out = check_params({**GIVEN, "lr": 1, "slices": [-1, 0, 1]}, SPEC)
    assert out["lr"] == 1.0 and isinstance(out["lr"], float)
    assert out["slices"] == (-1, 0, 1)
    assert out["arch"] == "unet"


def test_check_params_unknown_name_lists_valid():
    with pytest.raises(ParameterError, match=r"\['archh'\].*valid parameters.*'arch'"):
        check_params({**GIVEN, "archh": "unet"}, SPEC)


@pytest.mark.parametrize(("name", "value"), [("epochs", "3"), ("epochs", 2.5), ("amp", 1), ("arch", 3)])
def test_check_params_wrong_type(name, value):
    with pytest.raises(ParameterError, match=f"parameter '{name}'"):
        check_params({**GIVEN, name: value}, SPEC)


def test_check_params_missing():
    given = dict(GIVEN)
    del given["lr"]
    with pytest.raises(ParameterError, match="'lr' is missing"):
        check_params(given, SPEC)


def test_new_names():
    before = {"a"}
    assert new_names({"a": 1, "b": 2, "_c": 3}, before) == {"b": 2}


def test_json_round_trip_atomic(tmp_path):
    path = atomic_write_json(tmp_path / "sub" / "m.json", {"x": np.float32(0.5), "t": (1, 2)})
    assert read_json(path) == {"t": [1, 2], "x": 0.5}
    assert not list(path.parent.glob(".*tmp"))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        read_json(tmp_path / "bad.json")
    assert json.loads(path.read_text())


def test_eda_tables(tiny_tree):
    root, _ = tiny_tree
    meta = build_metadata(root)
    summary = dataset_summary(meta)
    assert summary["cases"] == 2 and summary["slices"] == 7 and summary["train.csv rows"] == 21
    sizes = size_table(meta)
    assert sizes.iloc[0][["width", "height", "slices"]].tolist() == [360, 310, 4]
    share = empty_share(meta)
    assert share["stomach"] == pytest.approx(5 / 7) and share["all"] == pytest.approx(4 / 7)
    area = organ_area_by_position(meta, bins=4)
    assert list(area.columns) == list(CLASSES)
    assert area["large_bowel"].sum() > 0


def test_overlay_and_figures(tmp_path):
    img = np.arange(16, dtype=np.uint16).reshape(4, 4) * 1000
    mask = np.zeros((4, 4, 3), bool)
    mask[0, 0, 2] = True
    rgb = overlay_rgb(img, mask, alpha=1.0)
    assert rgb.shape == (4, 4, 3) and np.allclose(rgb[0, 0], (0.9, 0.1, 0.1))
    assert np.allclose(rgb[1, 1], rgb[1, 1, 0])  # unmasked pixels stay gray
    with pytest.raises(ValueError, match="mask shape"):
        overlay_rgb(img, np.zeros((3, 3, 3), bool))
    fig = plot_overlays([img, img], [mask, None], titles=["a", "b"])
    assert isinstance(fig, matplotlib.figure.Figure)
    path = save_figure(fig, tmp_path / "x.png")
    assert path.stat().st_size > 0
    hist = pd.DataFrame({"epoch": [1, 2], "train_loss": [1.0, 0.5], "val_dice": [0.2, 0.4]})
    fig = plot_history({"unet": hist, "fpn": hist})
    assert len(fig.axes) == 2


def test_a_given_out_dir_is_refused_not_dropped(tmp_path):
    """`-p out_dir DIR` used to pass the check and be overwritten by runs_dir/run_name."""
    from gi_utils.pipeline import ParameterError, train_setup

    with pytest.raises(ParameterError, match="out_dir='/somewhere' is not taken.*runs_dir"):
        train_setup({"preset": "smoke", "out_dir": "/somewhere"}, {"preset": str})
