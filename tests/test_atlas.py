"""The error atlas on a hand-made volume whose offending slice and point are known, the
slice viewer's static fallback, TensorBoard logs read back."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from gi_utils.evaluation import hausdorff_3d, volume_atlas
from gi_utils.report import slice_viewer


def test_atlas_names_the_false_positive_past_the_organ_end():
    true = np.zeros((10, 20, 20, 3), bool)
    true[2:6, 8:12, 8:12, 0] = True  # large bowel on slices 2-5
    pred = true.copy()
    pred[8, 15, 3, 0] = True  # one false pixel on slice 8, past the organ's end
    rows = {r["class"]: r for r in volume_atlas("case1_day0", pred, true)}
    lb = rows["large_bowel"]
    assert (lb["hd_side"], lb["hd_slice"], lb["hd_row"], lb["hd_col"]) == ("pred", 8, 15, 3)
    assert lb["nearest_slice"] == 5 and lb["fp_slices"] == 1 and lb["fn_slices"] == 0
    assert lb["hausdorff"] == pytest.approx(hausdorff_3d(pred[..., 0], true[..., 0]))
    assert lb["pred_pixels"] == 65 and lb["true_pixels"] == 64
    assert rows["small_bowel"]["hd_side"] == ""  # both empty: nothing to score


def test_atlas_names_a_missed_slice():
    true = np.zeros((6, 10, 10, 3), bool)
    true[1:5, 2:5, 2:5, 2] = True
    pred = true.copy()
    pred[4, ..., 2] = False  # the last true slice of the stomach missed
    st = {r["class"]: r for r in volume_atlas("c", pred, true)}["stomach"]
    assert st["hd_side"] == "true" and st["hd_slice"] == 4 and st["fn_slices"] == 1
    gone = {r["class"]: r for r in volume_atlas("c", np.zeros_like(true), true)}["stomach"]
    assert gone["hausdorff"] == 1.0 and gone["hd_side"] == "true"


def test_viewer_falls_back_to_a_static_grid_headless():
    images = np.random.default_rng(0).random((6, 16, 16)).astype(np.float32)
    truth = np.zeros((6, 16, 16, 3), bool)
    truth[2:4, 4:8, 4:8, 1] = True
    fig = slice_viewer(images, truth, truth, np.full((6, 3), 0.9), "case1_day0", interactive=False)
    assert isinstance(fig, Figure) and len(fig.axes) == 4  # the two slices with an organ, truth and prediction
    # closed: the notebook displays it once; an open figure was shown a second time by the inline backend
    assert fig.number not in plt.get_fignums()


def test_viewer_is_a_widget_in_a_live_notebook():
    widgets = pytest.importorskip("ipywidgets")
    images = np.zeros((3, 8, 8), np.float32)
    masks = np.zeros((3, 8, 8, 3), bool)
    view = slice_viewer(images, masks, masks, interactive=True)
    assert isinstance(view, widgets.VBox)
    slider = view.children[1]
    slider.value = 2  # redraws without error


@pytest.mark.slow
def test_tensorboard_logs_are_read_back(synth_dir_tb, tmp_path, tiny_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gi_utils.training import train

    out = tmp_path / "run"
    history = train(tiny_config(synth_dir_tb, out, epochs=2, max_steps_per_epoch=2, log_with="tensorboard"))
    files = list((out / "logs").rglob("events.out.tfevents.*"))
    assert files, list(out.rglob("*"))
    scalars = {}
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0}).Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [e.value for e in acc.Scalars(tag)]
    assert scalars["val_score"] == pytest.approx(history["val_score"].tolist(), rel=1e-6)
    assert len(scalars["train_loss"]) == 2


@pytest.fixture(scope="module")
def synth_dir_tb(synth_factory):
    return synth_factory(n_cases=4, seed=0, slices_per_scan=12, size=(80, 72))
