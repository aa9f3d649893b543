"""The disk budget of a run: the cache, the out-of-fold set and the checkpoints are checked
against the free space before they are written, and the error names the setting that fits.
Free space is faked by monkeypatching ``shutil.disk_usage`` (the probe of gi_utils.atomic)."""

from __future__ import annotations

import json
import re
from collections import namedtuple
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import write_kaggle_tree
from gi_utils import atomic
from gi_utils.atomic import NotEnoughSpaceError
from gi_utils.checkpoint import state_nbytes
from gi_utils.data import VolumeCache, build_metadata, cache_nbytes, cache_that_fits, pack_masks
from gi_utils.evaluation import OOFSet, OOFWriter, oof_bytes_per_slice
from gi_utils.models import build_model
from gi_utils.training import train

Usage = namedtuple("Usage", "total used free")


def set_free(monkeypatch, free: int) -> None:
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda p: Usage(10**12, 10**12 - free, free))


@pytest.fixture(scope="module")
def synth_dir(synth_factory) -> Path:
    return synth_factory(n_cases=4, seed=0, slices_per_scan=12, size=(80, 72))


def three_slices(tmp_path: Path) -> pd.DataFrame:
    return build_metadata(write_kaggle_tree(tmp_path / "data", {"case1_day0": (3, 32, 24)}))


# --------------------------------------------------------------------------- cache
def test_competition_cache_sizes_and_the_setting_that_fits_on_kaggle():
    n = 38_496  # training slices of the competition
    assert cache_nbytes(n, 320) == 11_825_971_200  # float16 images + packed masks: 11.8 GB
    assert cache_nbytes(n, 320, "uint8", with_masks=False) == 3_941_990_400  # compact: 3.9 GB
    hint = cache_that_fits(n, 320, "float16", True, free=10 * 10**9)
    assert hint == "the compact cache, cache_dtype='uint8' and cache_masks=False (3.7 GiB at 320 px)"
    hint = cache_that_fits(n, 320, "uint8", False, free=3 * 10**9)  # compact already: a smaller size
    assert hint == "img_size=256 with these settings (2.3 GiB)"


def test_cache_that_does_not_fit_names_the_compact_settings_or_a_smaller_size(tmp_path, monkeypatch):
    meta = three_slices(tmp_path)
    set_free(monkeypatch, 20_000)
    with pytest.raises(NotEnoughSpaceError) as err:
        VolumeCache(meta, 64, tmp_path / "cache", progress=False)
    msg = str(err.value)
    assert re.search(rf"not enough disk space for a cache of 3 slices at 64x64 in {re.escape(str(tmp_path / 'cache'))}: "
                     r"36.0 KiB \(36864 bytes\) needed, 19.5 KiB \(20000 bytes\) free, and 5% of it kept free", msg)
    assert "what fits: the compact cache, cache_dtype='uint8' and cache_masks=False (12.0 KiB at 64 px)" in msg
    set_free(monkeypatch, 10_000)  # not even compact at 64 px: a smaller image size
    with pytest.raises(NotEnoughSpaceError, match=r"what fits: not the compact cache \(cache_dtype='uint8', "
                                                  r"cache_masks=False: 12.0 KiB at 64 px\); img_size=32 with these "
                                                  r"settings \(9.0 KiB\)"):
        VolumeCache(meta, 64, tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()


def test_a_cache_already_built_needs_no_space(tmp_path, monkeypatch):
    meta = three_slices(tmp_path)
    built = VolumeCache(meta, 64, tmp_path / "cache", progress=False)
    set_free(monkeypatch, 0)
    again = VolumeCache(meta, 64, tmp_path / "cache", progress=False)
    assert again.reused and np.array_equal(again.images, built.images)


# --------------------------------------------------------------------------- out-of-fold set
def oof_rows(n: int) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    return pd.DataFrame({"id": [f"case1_day0_slice_{k + 1:04d}" for k in range(n)]}), {"case1_day0": np.arange(n)}


def test_oof_set_that_does_not_fit_names_the_bytes_per_slice(tmp_path, monkeypatch):
    meta, spans = oof_rows(4)
    per_slice = oof_bytes_per_slice(320, gate=True)
    assert oof_bytes_per_slice(320) == 3 * 320 * 320 + 3 * 320 * 320 // 8 == 345_600
    set_free(monkeypatch, 10**6)
    with pytest.raises(NotEnoughSpaceError) as err:
        OOFWriter(tmp_path / "oof", meta, spans, 320)
    msg = str(err.value)
    assert f"the out-of-fold set (4 validation slices at 320 px) in {tmp_path}: " in msg
    assert f"({4 * per_slice} bytes) needed, 976.6 KiB (1000000 bytes) free" in msg
    assert f"what fits: {per_slice:,} bytes per slice" in msg and "another out_dir" in msg
    assert not (tmp_path / "oof").exists()


def test_oof_truth_is_bit_packed_and_read_back_exactly(tmp_path):
    rng = np.random.default_rng(0)
    s, n = 20, 5
    meta, spans = oof_rows(n)
    truth = rng.random((n, s, s, 3)) < 0.3
    probs = rng.integers(0, 256, (n, 3, s, s), dtype=np.uint8)
    w = OOFWriter(tmp_path / "oof", meta, spans, s)
    w.write(np.arange(n), probs, pack_masks(truth))
    w.close()
    assert np.load(tmp_path / "oof" / "truth.npy").shape == (n, 3 * s * s // 8)  # 3 bits per pixel
    v = OOFSet(tmp_path / "oof").volume("case1_day0")
    assert np.array_equal(v.truth, truth) and np.array_equal(v.probs, np.moveaxis(probs, 1, -1))
    # a set of the first format (truth one byte per pixel, bit c = class c) reads the same
    np.save(tmp_path / "oof" / "truth.npy", pack_masks(truth))
    index = json.loads((tmp_path / "oof" / "index.json").read_text())
    (tmp_path / "oof" / "index.json").write_text(json.dumps({**index, "format": "gi-oof-v1"}))
    assert np.array_equal(OOFSet(tmp_path / "oof").volume("case1_day0").truth, truth)


# --------------------------------------------------------------------------- a run
def test_a_small_run_is_not_blocked(synth_dir, tmp_path, tiny_config, monkeypatch):
    set_free(monkeypatch, 2**30)  # 1 GiB free: cache, out-of-fold set and checkpoints fit
    history = train(tiny_config(synth_dir, tmp_path / "runs" / "run", max_steps_per_epoch=1, cache="disk"))
    assert len(history) == 1 and (tmp_path / "runs" / "run" / "last.pt").is_file()


def test_checkpoints_that_do_not_fit_are_refused_naming_the_folder(synth_dir, tmp_path, tiny_config, monkeypatch):
    weights = state_nbytes(build_model("unet", "resnet18", 3, 3).state_dict())  # best.safetensors, about
    set_free(monkeypatch, 2 * weights)  # the weights fit; last.pt (weights, average, AdamW moments) does not
    out = tmp_path / "run"
    with pytest.raises(NotEnoughSpaceError) as err:
        train(tiny_config(synth_dir, out, max_steps_per_epoch=1))
    msg = str(err.value)
    assert f"not enough disk space for the training state last.pt in {out}: " in msg
    assert f"what fits: the run in a folder with room (out_dir), not {out} (no last.pt was written)" in msg
    assert (out / "best.safetensors").is_file() and not (out / "last.pt").exists()
    set_free(monkeypatch, weights // 2)
    other = tmp_path / "other"
    with pytest.raises(NotEnoughSpaceError, match=rf"the best weights best.safetensors in {re.escape(str(other))}: "):
        train(tiny_config(synth_dir, other, max_steps_per_epoch=1))
