"""The 3-D path: MONAI networks in the registry, patches from the cache, sliding-window
prediction, training through the same loop, submission, and a blend with a 2.5D model
chosen on out-of-fold scores. Tiny volumes (12 slices of 64x64, patches of 16)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from gi_utils.data import (
    PatchDataset,
    VolumeCache,
    VolumeDataset,
    build_metadata,
    build_transforms_3d,
    read_volume,
)
from gi_utils.inference import (
    SlidingWindow,
    load_models,
    make_submission,
    predict_probs_3d,
    predict_volume,
)
from gi_utils.models import ARCHITECTURES_3D, build_model, load_model
from gi_utils.pipeline import submission_plan
from gi_utils.report import BEST_CONFIG_NAME, find_runs, results_table, select, write_best_config
from gi_utils.training import TrainConfig, preset_config, train

TINY_3D = {"img_size": 64, "epochs": 1, "batch_size": 2, "patch_depth": 16, "n_folds": 2, "progress": False,
           "device": "cpu", "cache": "memory", "max_steps_per_epoch": 4}  # fmt: skip


@pytest.mark.parametrize("arch", list(ARCHITECTURES_3D))
def test_3d_architectures_build_and_train(arch):
    torch.manual_seed(0)
    model = build_model(arch, in_channels=1, classes=3)
    y = model(torch.randn(1, 1, 16, 64, 64))
    assert y.shape == (1, 3, 16, 64, 64)
    y.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_unknown_arch_lists_2d_and_3d_names():
    with pytest.raises(KeyError, match="unet.*deeplabv3plus.*segresnet3d.*unet3d"):
        build_model("segresnet")
    with pytest.raises(ValueError, match="no encoder weights"):
        build_model("segresnet3d", weights="imagenet")


@pytest.mark.parametrize("values, message", [
    ({"patch_depth": 20}, "patch_depth must be a positive multiple of 8"),
    ({"gate": True}, "gate=True does not apply to the 3-D segresnet3d"),
    ({"cache": "none"}, "cache='none' does not apply"),
    ({"sw_overlap": 1.0}, "sw_overlap must be in"),
])  # fmt: skip
def test_3d_config_errors_name_the_field(values, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(arch="segresnet3d", **values)
    TrainConfig(arch="unet", **{k: v for k, v in values.items() if k != "cache"})  # 2.5D: ignored or valid


@pytest.fixture(scope="module")
def synth_dir(synth_factory):
    """4 cases x 2-3 scans x 12 slices of 80x72 (the data of test_train)."""
    return synth_factory(n_cases=4, seed=0, slices_per_scan=12, size=(80, 72))


@pytest.fixture(scope="module")
def scans(synth_dir):
    meta = build_metadata(synth_dir, "train")
    return meta, VolumeCache(meta, 64, None, progress=False)


def test_patches_are_seeded_padded_and_biased_to_organs(scans):
    meta, cache = scans
    ds = PatchDataset(meta, cache, 16, build_transforms_3d(), patches_per_volume=2, foreground=1.0)
    assert len(ds) == 2 * meta["case_day"].nunique()
    ds.seed_sample((1, 0, 3))
    a = ds[3]
    ds.seed_sample((1, 0, 3))
    b = ds[3]
    ds.seed_sample((1, 1, 3))
    c = ds[3]
    assert a[0].shape == (1, 16, 64, 64) and a[1].shape == (3, 16, 64, 64)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    assert set(a[1].unique().tolist()) <= {0.0, 1.0}
    plain = PatchDataset(meta, cache, 16, None, foreground=1.0)
    for i in range(len(plain)):  # 12-slice scans in 16-slice patches: zeros at the end
        image, mask = plain[i]
        assert (image[0, 12:] == 0).all() and (mask[:, 12:] == 0).all()
        case_day = plain.scans.scans[i // plain.per_volume][0]
        assert torch.equal(image[0, :12], torch.from_numpy(cache.image(case_day).astype(np.float32)))
        if (~meta.loc[meta["case_day"] == case_day, "empty"]).any():
            assert mask.any()  # foreground=1: an organ is in every patch of a scan that has one


def test_volume_dataset_serves_whole_scans_with_their_rows(scans):
    meta, cache = scans
    ds = VolumeDataset(meta, cache)
    image, mask, rows = ds[1]
    case_day = ds.meta["case_day"].iloc[int(rows[0])]
    assert image.shape == (1, len(rows), 64, 64) and mask.shape == (3, len(rows), 64, 64)
    assert (ds.meta["case_day"].iloc[rows.numpy()] == case_day).all()
    assert np.array_equal(mask.numpy().transpose(1, 0, 2, 3).astype(bool), cache.mask(case_day))


def test_one_window_equals_the_model_and_longer_scans_are_covered():
    torch.manual_seed(0)
    model = build_model("segresnet3d", in_channels=1, classes=3).eval()
    vol = np.random.default_rng(0).random((16, 64, 64), dtype=np.float32)
    whole = predict_probs_3d(model, vol, 16, sw=SlidingWindow(mode="constant"))
    with torch.no_grad():
        direct = model(torch.from_numpy(vol)[None, None]).sigmoid()[0].transpose(0, 1).numpy()
    np.testing.assert_allclose(whole, direct, atol=1e-5)
    long = np.random.default_rng(1).random((37, 64, 64), dtype=np.float32)
    probs = predict_probs_3d(model, long, 16, tta=[(-1,)], sw=SlidingWindow(overlap=0.5))
    assert probs.shape == (37, 3, 64, 64) and np.isfinite(probs).all() and 0 <= probs.min() <= probs.max() <= 1


@pytest.mark.slow
def test_3d_run_validates_submits_and_blends_with_a_2d_run(synth_dir, tmp_path):
    runs = tmp_path / "runs"
    seg = train(preset_config("smoke", arch="segresnet3d", data_dir=str(synth_dir),
                              out_dir=str(runs / "segresnet3d_64px_fold0"), **{**TINY_3D, "amp": "no"}))  # fmt: skip
    assert np.isfinite(seg["val_score"]).all()
    train(preset_config("smoke", arch="unet", data_dir=str(synth_dir), out_dir=str(runs / "unet_resnet18_64px_fold0"),
                        img_size=64, n_folds=2, progress=False, device="cpu", cache="memory"))  # fmt: skip
    model, config = load_model(runs / "segresnet3d_64px_fold0" / "best.safetensors")
    assert config.patch_depth == 16 and config.in_channels == 1
    # the OOF set has the 2.5D layout: one row per validation slice, scored like any model
    runs_table = results_table(find_runs(runs)).set_index("Model")  # 03_compare's table of runs
    assert runs_table.loc["segresnet3d_64px_fold0", "Encoder"] == "" and runs_table["Score"].notna().all()
    table, cands = select(find_runs(runs))
    names = set(table["Model"])
    assert {"segresnet3d_64px", "unet_resnet18_64px", "segresnet3d_64px + unet_resnet18_64px"} <= names
    blend = next(c for c in cands if len(c.model_paths) == 2)
    assert len(blend.weights) == 2 and abs(sum(blend.weights) - 1) < 1e-9
    write_best_config(runs / BEST_CONFIG_NAME, blend)
    plan = submission_plan(runs)
    assert len(plan.model_paths) == 2 and list(plan.weights) == list(blend.path_weights)
    df = make_submission(plan.model_paths, synth_dir, "test", tmp_path / "submission.csv", post=plan.post,
                         weights=plan.weights, tta=True, progress=False, device="cpu")  # fmt: skip
    meta = build_metadata(synth_dir, "test", labels=False)
    assert len(df) == 3 * len(meta)
    # the blend's probabilities are the weighted mean of its members'
    members = load_models(plan.model_paths, "cpu")
    rows = meta[meta["case_day"] == meta["case_day"].iloc[0]]
    vol = read_volume(rows)
    each = [predict_volume([m], vol)[0] for m in members]
    both, _ = predict_volume(members, vol, weights=plan.weights)
    w = np.asarray(plan.weights) / np.sum(plan.weights)
    np.testing.assert_allclose(both, w[0] * each[0] + w[1] * each[1], atol=1e-5)
    assert isinstance(pd.read_csv(tmp_path / "submission.csv"), pd.DataFrame)
