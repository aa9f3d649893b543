"""Parameter checking and JSON records used by the notebooks; EDA tables, notes and plots;
the tables and sentences a notebook shows; progress bars in an executed notebook; what a
reader meets first in a notebook."""

from __future__ import annotations

import json

import matplotlib
import nbformat
import numpy as np
import pandas as pd
import pytest

from gi_utils.atomic import atomic_write_json, read_json
from gi_utils.constants import CLASSES
from gi_utils.data import build_metadata
from gi_utils.pipeline import (
    ParameterError,
    check_params,
    injected_names,
    lines_before_first_output,
    notebook_parameters,
    notebook_params,
    output_problems,
)
from gi_utils.report import (
    config_against_preset,
    dataset_summary,
    decode_column_major,
    empty_share,
    organ_area_by_position,
    organ_range,
    organ_range_note,
    overlay_rgb,
    plot_history,
    plot_overlays,
    postprocess_table,
    save_figure,
    size_table,
    verdict,
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


INJECTED = '# Parameters\narch = "fpn"\nepoch = 3\n'


def test_notebook_parameters_reads_the_annotated_and_the_injected_names():
    """The notebook's parameters without a snapshot of its globals: the names its parameters
    cell annotates, and those papermill injected (read from the kernel's input history)."""
    namespace = {"__annotations__": {"arch": str, "epochs": int}, "arch": "fpn", "epochs": 1, "epoch": 3,
                 "np": object(), "In": ["", "import numpy as np", "arch: str = 'unet'\nepochs: int = 1", INJECTED]}
    assert injected_names(namespace["In"]) == ["arch", "epoch"]
    given, annotations = notebook_parameters(namespace)
    assert given == {"arch": "fpn", "epochs": 1, "epoch": 3} and annotations == {"arch": str, "epochs": int}
    with pytest.raises(ParameterError, match=r"unknown notebook parameter\(s\) \['epoch'\]"):
        notebook_params(namespace)
    namespace["In"] = namespace["In"][:3]  # run by hand: nothing injected
    assert notebook_params(namespace) == {"arch": "fpn", "epochs": 1}


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


def test_config_against_preset_says_where_each_value_came_from():
    from gi_utils.training import preset_config

    config = preset_config("smoke", arch="unet", epochs=3)
    table = config_against_preset(config, "smoke")
    assert table.loc["epochs"].tolist() == ["3", "given", "1", "10"]  # value, from, preset smoke, default
    assert table.loc["img_size"].tolist() == ["64", "preset smoke", "64", "128"]
    assert table.loc["loss"].tolist() == ["bce_dice", "default", "·", "bce_dice"]


def test_config_against_preset_writes_keyword_settings_as_keywords():
    """The demo's 02 showed the model's keyword settings as Python prints a dict
    (``{'encoder_depth': 4, ...}``), a raw dict make docs reported in every 02."""
    from gi_utils.training import preset_config

    config = preset_config("demo", arch="unet")
    table = config_against_preset(config, "demo")
    assert table.loc["model_kwargs", "value"] == ", ".join(f"{k}={v}" for k, v in config.model_kwargs.items())
    assert table.loc["model_kwargs", "default"] == "none"
    assert output_problems(_nb(("config_against_preset(config, 'demo')", [table.to_string()]))) == []


def test_postprocess_table_is_one_row_per_organ():
    from gi_utils.inference import PostProcess

    table = postprocess_table(PostProcess((0.5, 0.4, 0.7), (10, 0, 25), gate_max=(0.0, 0.9, 0.0)))
    assert list(table.index) == ["large bowel", "small bowel", "stomach"]
    assert table["threshold"].tolist() == [0.5, 0.4, 0.7] and table["slice gate"].tolist() == [0.0, 0.9, 0.0]


def test_organ_range_is_the_span_where_the_organs_are():
    area = pd.DataFrame({c: [0.0, 0.0, 5.0, 10.0, 8.0, 0.5, 0.0, 0.0, 0.0, 0.0] for c in CLASSES},
                        index=pd.Index(np.arange(0.05, 1.0, 0.1), name="relative position"))  # fmt: skip
    lo, hi = organ_range(area)  # bins 2-4 reach 10% of the peak: edges 0.2 and 0.5
    assert (lo, hi) == pytest.approx((0.2, 0.5))
    note = organ_range_note(area, synthetic=True)
    assert "In these synthetic data the organs lie between 20% and 50%" in note


def test_column_major_decoding_is_the_wrong_one():
    """Pixels 2-3 (1-indexed) of a 2x3 image: row-major they are row 0, columns 1-2; read
    column by column (the competition's text) they are rows 1 and 0 of columns 0 and 1."""
    from gi_utils.data import decode_rle

    right, wrong = decode_rle("2 2", (2, 3)), decode_column_major("2 2", (2, 3))
    assert right.tolist() == [[False, True, True], [False, False, False]]
    assert wrong.tolist() == [[False, True, False], [True, False, False]]


def _candidate(name, members, common, vs_chosen, keep=True, case_days=("a", "b", "c")):
    from types import SimpleNamespace

    return SimpleNamespace(name=name, members=[[None]] * len(members), member_names=tuple(members),
                           weights=(1 / len(members),) * len(members), case_days=list(case_days),
                           keep_tuned=keep, figures={"common": common, "vs_chosen": vs_chosen})  # fmt: skip


def test_verdict_says_what_is_submitted_its_score_and_its_gain_over_the_simpler_option():
    blend = _candidate("unet + fpn", ["unet", "fpn"], [0.915, 0.909, 0.921], [float("nan")] * 3)
    single = _candidate("fpn", ["fpn"], [0.908, 0.903, 0.912], [-0.007, -0.010, -0.005], keep=False)
    text = verdict([blend, single], holdout=0.911, synthetic=True)
    assert text.startswith("**We submit the blend unet + fpn (weights 0.5/0.5)** with the post-processing searched")
    assert "On the 3 case-days every candidate was validated on" in text and "**0.915**" in text
    assert "Against the simpler option, fpn, it gains +0.007 [+0.005, +0.010]: beyond the noise" in text
    assert "it scores 0.911" in text and "SYNTHETIC DATA" in text
    alone = verdict([single], synthetic=False)
    assert "It is the only candidate" in alone and "SYNTHETIC" not in alone


def _nb(*cells):
    nb = nbformat.v4.new_notebook()
    for source, outputs in cells:
        cell = nbformat.v4.new_code_cell(source)
        cell.outputs = [nbformat.v4.new_output("stream", text=t) if isinstance(t, str) else t for t in outputs]
        nb.cells.append(cell)
    return nb


def test_what_a_reader_meets_first_and_what_outputs_must_not_show():
    nb = _nb(("a = 1\n\n# two more lines", []), ("print(a)", ["1\n"]), ("x", ["later\n"]))
    assert lines_before_first_output(nb) == 4  # blank lines and comments count, the first output's cell too
    png = nbformat.v4.new_output("display_data", data={"image/png": "AAAA", "text/plain": "<Figure>"})
    bad = _nb(("x", ["saved /tmp/runs/unet/last.pt\n", "{'val_dice': 0.05626373602984812}\n", png, png]))
    assert [p.split(": ")[1] for p in output_problems(bad)] == ["absolute path", "raw dict", "unrounded float",
                                                                 "a figure shown twice"]  # fmt: skip
    good = _nb(("x", ["saved runs/unet/last.pt, 3920/3920 [00:12], val_dice 0.0563, see https://wandb.ai/a/b\n"]))
    assert output_problems(good) == []


def test_headless_progress_prints_the_final_state_once(monkeypatch, capsys):
    """In an executed notebook a bar prints one line, its final state, and an epoch's bar
    (leave=False) nothing: they printed a line every 10 s and each epoch's final state."""
    import gi_utils.progress as progress_mod

    monkeypatch.setenv("GI_PROGRESS", "text")
    progress_mod.headless_kernel.cache_clear()
    monkeypatch.setitem(__import__("sys").modules, "ipykernel", object())  # as inside a kernel
    bar = progress_mod.progress_bar(None, "caching volumes", total=10, unit="slice", mininterval=0)
    for _ in range(10):
        bar.update(1)
    bar.close()
    for _ in progress_mod.progress_bar(range(5), "epoch 1/1", leave=False):
        pass
    out = capsys.readouterr().out
    assert out.count("caching volumes") == 1 and "caching volumes: 100%" in out and "10/10" in out
    assert "0%" not in out.replace("100%", "") and "epoch" not in out
    progress_mod.headless_kernel.cache_clear()
