"""04's projection of the hidden test's time against the 9-hour limit: by hand, and the
measurement on the first scan."""

from __future__ import annotations

import shutil

import pytest
import torch

from gi_utils.inference import (
    HIDDEN_TEST_SLICES,
    MemberSpeed,
    PostProcess,
    measure_speed,
    project_submission_time,
    tta_passes,
)
from gi_utils.models import build_model, model_config, save_model
from gi_utils.pipeline import SubmissionPlan, submission_time

HOURS = HIDDEN_TEST_SLICES / 3600  # hours per second of work per slice: 22,645 slices


def test_the_hidden_test_is_fifty_cases_at_the_training_sets_slices_per_case():
    assert HIDDEN_TEST_SLICES == round(50 * 38_496 / 85) == 22_645
    assert (tta_passes(False), tta_passes(True), tta_passes(["hflip", "vflip"])) == (1, 2, 3)


def test_a_blend_that_fits():
    t = project_submission_time([MemberSpeed("a", 0.1, 2), MemberSpeed("b", 0.2, 2)], 0.01)
    assert t.hours == pytest.approx(0.31 * HOURS) and t.fits and t.advice == []
    assert "against the 9 h limit: fits" in str(t)
    total = t.table().iloc[-1]  # 04 showed NaN ms per slice on its total row
    assert total["ms per slice"] == pytest.approx(310.0) and total["hours"] == pytest.approx(round(t.hours, 3))


def test_over_the_limit_tta_off_first():
    t = project_submission_time([MemberSpeed("a", 0.9, 2), MemberSpeed("b", 1.0, 2)], 0.05)  # 12.3 h
    assert not t.fits and t.advice == [f"tta=False: {1.0 * HOURS:.2f} h"]  # 0.45 + 0.5 + 0.05


def test_over_the_limit_the_slowest_member_left_out():
    t = project_submission_time([MemberSpeed("a", 0.5), MemberSpeed("b", 1.0, is_3d=True)], 0.05)  # no TTA
    assert t.advice == [f"only a (runs=... or model_paths=...): {0.55 * HOURS:.2f} h"]
    assert "b (3-D windows)" in t.table().index
    t = project_submission_time([MemberSpeed("a", 0.6, 2), MemberSpeed("b", 3.0, 2)], 0.05)  # no TTA: 11.6 h
    assert t.advice == [f"only a (runs=... or model_paths=...): {0.65 * HOURS:.2f} h"]  # with TTA still


def test_nothing_fits_says_so():
    t = project_submission_time([MemberSpeed("a", 2.0)], 0.05)
    assert t.advice == [f"none of these settings: a single member without TTA takes {2.05 * HOURS:.2f} h; a smaller "
                        "img_size"]  # fmt: skip


@pytest.fixture
def model_and_data(tmp_path, synth_factory):
    torch.manual_seed(0)
    small = {"decoder_channels": [8, 8, 8, 8, 8]}
    cfg = model_config("unet", "resnet18", model_kwargs=small, img_size=32, slice_offsets=[-2, 0, 2])
    path = save_model(tmp_path / "runs" / "unet_resnet18_32px_fold0" / "best.safetensors",
                      build_model("unet", "resnet18", **small), cfg)  # fmt: skip
    return path, synth_factory(n_cases=2, n_test_cases=1, seed=1, slices_per_scan=6, size=(80, 72))


def test_measured_on_the_first_scan_also_when_the_test_is_hidden(model_and_data, tmp_path):
    path, data = model_and_data
    members, overhead, scan = measure_speed([path], data, "test", PostProcess(size_ref=32), tta=True, device="cpu")
    assert [(m.name, m.passes, m.is_3d) for m in members] == [("unet_resnet18_32px_fold0", 2, False)]
    assert members[0].seconds_per_slice > 0 and overhead > 0 and scan.startswith("case")
    hidden = tmp_path / "hidden"  # Kaggle's test/ while a notebook is saved: no images
    shutil.copytree(data, hidden, ignore=shutil.ignore_patterns("test"))
    (hidden / "test").mkdir()
    _, _, scan = measure_speed([path], hidden, "test", PostProcess(size_ref=32), device="cpu")
    assert scan.startswith("case")  # the first scan of train
    plan = SubmissionPlan([path], None, PostProcess(size_ref=32), PostProcess(size_ref=32), "given")
    text = str(submission_time(plan, data, "test", tta=False, batch_size=4))
    assert "unet_resnet18_32px_fold0" in text and "against the 9 h limit" in text
