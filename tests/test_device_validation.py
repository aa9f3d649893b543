"""Validation on the device path (data_path="device"): the batches of the worker path's
validation DataLoader gathered from the slices on the device, shared out between processes
without loss or repeat, and runs (one process and two) whose out-of-fold files and metrics equal the worker
path's bit for bit; the Hausdorff scored in torch equals the CPU's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gi_utils.data import DeviceBatches, VolumeCache, build_metadata
from gi_utils.evaluation import OOFSet, score_oof
from gi_utils.inference import PostProcess
from gi_utils.training import DeviceValLoader, launch, load_train_data, train
from gi_utils.training import session as session_mod
from gi_utils.training import validation as validation_mod

torch.set_num_threads(1)
S = 64


@pytest.fixture(scope="module")
def synth(synth_factory):
    return synth_factory(n_cases=4, seed=0, slices_per_scan=12, size=(80, 72))


@pytest.mark.parametrize("masks", [True, False], ids=["packed", "rle"])
def test_device_validation_batches_equal_the_worker_batches(synth, tmp_path, tiny_config, masks):
    """The same slices in the same batches and order: float16 images and uint8 masks of the
    worker path widened to float32 equal the device path's, rows included."""
    kw = {"fold": 0, "cache_masks": masks}
    worker = load_train_data(tiny_config(synth, tmp_path / "w" / "run", data_path="workers", **kw))
    device = load_train_data(tiny_config(synth, tmp_path / "d" / "run", data_path="device", **kw))
    assert isinstance(device.val_loader, DeviceValLoader) and device.data_path == "device"
    a, b = list(worker.val_loader), list(device.val_loader)
    assert len(a) == len(b) == len(device.val_loader) > 1
    for k, ((ia, ma, ra), (ib, mb, rb)) in enumerate(zip(a, b, strict=True)):
        assert ib.dtype == mb.dtype == torch.float32
        assert torch.equal(ia.float(), ib), f"images of batch {k}"
        assert torch.equal(ma.float(), mb), f"masks of batch {k}"
        assert torch.equal(ra, rb), f"rows of batch {k}"
    assert sum(float(m.sum()) for _, m, _ in b) > 0  # organs are in the batches
    assert device.val_volumes.keys() == worker.val_volumes.keys()


@pytest.mark.parametrize("world", [2, 3])
def test_processes_share_the_validation_rows_once(synth, world):
    """Every row on exactly one process; every process as many batches (padding rows -1)."""
    meta = build_metadata(synth)
    meta = meta[meta["case_day"].isin(meta["case_day"].unique()[:3])]  # 3 scans: 36 slices
    data = DeviceBatches(meta, VolumeCache(meta, S, None, progress=False), (-1, 0, 1), "cpu")
    loaders = [DeviceValLoader(data, 5, r, world) for r in range(world)]  # 8 batches of 5 (the last 1)
    assert len({len(ld) for ld in loaders}) == 1 and len(loaders[0]) == -(-8 // world)
    rows = torch.cat([r for ld in loaders for _, _, r in ld])
    kept = rows[rows >= 0]
    assert sorted(kept.tolist()) == list(range(len(data)))
    assert int((rows < 0).sum()) == (len(loaders[0]) * world - 8) * 5  # a repeated first batch of 5


def test_a_run_validates_alike_on_both_paths(synth, tmp_path, tiny_config, capsys, monkeypatch):
    """Without augmentation the two paths train on the same batches: their out-of-fold files
    are equal byte for byte and so are the validation metrics. A CPU run scores on the CPU;
    handed a device for the Hausdorff (as a GPU run is, here the CPU), validation scores it
    in torch there, to the same values; so does the set scored in torch afterwards."""
    kw = {"fold": 0, "augment": False, "epochs": 1, "max_steps_per_epoch": 2, "amp": "no"}
    scoring, real_score, real_validate = [], validation_mod.score_oof, session_mod.validate

    def record(*args, **metric):
        scoring.append(metric)
        return real_score(*args, **metric)

    def on_device(*args, **kwargs):
        assert kwargs["hausdorff_device"] is None  # a CPU run
        return real_validate(*args, **{**kwargs, "hausdorff_device": torch.device("cpu")})

    monkeypatch.setattr(validation_mod, "score_oof", record)
    runs = {"workers": train(tiny_config(synth, tmp_path / "workers" / "run", data_path="workers", **kw))}
    monkeypatch.setattr(session_mod, "validate", on_device)
    runs["device"] = train(tiny_config(synth, tmp_path / "device" / "run", data_path="device", **kw))
    out = capsys.readouterr().out
    assert "feed plan: workers path" in out and "feed plan: device path" in out
    assert scoring == [{}, {"method": "torch", "device": torch.device("cpu")}]
    w, d = (tmp_path / p / "run" / "oof" for p in ("workers", "device"))
    for name in ("probs.npy", "truth.npy", "index.json"):
        assert (w / name).read_bytes() == (d / name).read_bytes(), name
    exact = [c for c in runs["workers"].columns if c.startswith(("val_", "dice_")) and c not in
             ("val_hausdorff", "val_score")]  # fmt: skip
    assert {"val_loss", "val_dice", "dice_stomach"} <= set(exact)
    np.testing.assert_array_equal(runs["workers"][exact].to_numpy(), runs["device"][exact].to_numpy())
    hd = ["val_hausdorff", "val_score"]
    np.testing.assert_allclose(runs["workers"][hd].to_numpy(), runs["device"][hd].to_numpy(), rtol=0, atol=1e-9)
    post = PostProcess((0.5,) * 3, (0,) * 3, size_ref=S)
    cpu, torch_cpu = score_oof(OOFSet(d), post), score_oof(OOFSet(d), post, method="torch", device="cpu")
    assert np.isfinite(cpu.hausdorff)
    for key in ("score", "dice", "hausdorff"):
        assert abs(getattr(cpu, key) - getattr(torch_cpu, key)) <= 1e-9, key


@pytest.mark.slow
def test_two_processes_validate_alike_on_both_paths(synth, tmp_path, tiny_config):
    """Two processes (gloo, the CPU): each path shares its training batches out alike, so the
    gathered out-of-fold files are equal byte for byte, and so are the metrics scored from
    them (the loss is not compared: the worker path's DataLoader repeats samples to even
    out the processes and counts them)."""
    kw = {"fold": 0, "augment": False, "epochs": 1, "max_steps_per_epoch": 2, "amp": "no", "batch_size": 2}
    runs = {p: launch(tiny_config(synth, tmp_path / p / "run", data_path=p, **kw), 2, method="notebook")
            for p in ("workers", "device")}  # fmt: skip
    for p in ("workers", "device"):
        assert json.loads((tmp_path / p / "run" / "metrics.json").read_text())["num_processes"] == 2
    w, d = (tmp_path / p / "run" / "oof" for p in ("workers", "device"))
    for name in ("probs.npy", "truth.npy", "index.json"):
        assert (w / name).read_bytes() == (d / name).read_bytes(), name
    cols = ["val_dice", "val_hausdorff", "val_score", "dice_stomach"]
    np.testing.assert_array_equal(runs["workers"][cols].to_numpy(), runs["device"][cols].to_numpy())
    assert np.isfinite(runs["device"]["val_loss"]).all()
