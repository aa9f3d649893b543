"""Several processes: LR scaling, CUDA left untouched, data sharding, launch() and resume.

The end-to-end check that 2-process validation equals scoring the saved model on whole
volumes lives in tests/test_train.py; here the 2-process runs go through
:func:`gi_utils.distributed.launch` (both methods) and a killed torchrun run is resumed.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import torch
from accelerate.data_loader import prepare_data_loader
from safetensors.torch import load_file

import gi_utils.training.launcher as dist_mod
from gi_utils.checkpoint import load_state
from gi_utils.training import (
    TrainConfig,
    describe_processes,
    effective_batch_size,
    effective_lr,
    launch,
    load_train_data,
    read_history,
    resolve_config,
    resolve_num_processes,
    train,
)
from gi_utils.training.cli import parse_args

torch.set_num_threads(1)
METRIC_COLUMNS = ["epoch", "step", "lr", "train_loss", "val_loss", "val_dice", "val_hausdorff",
                  "val_score", "dice_large_bowel", "dice_small_bowel", "dice_stomach"]  # fmt: skip
RUN_FILES = ["best.json", "best.safetensors", "config.json", "history.csv", "last.pt",
             "metrics.json", "oof", "split.json"]  # fmt: skip


@pytest.fixture(scope="module")
def synth_dir(synth_factory) -> Path:
    """4 cases x 2-3 scans x 16 slices (the issue's tiny dataset)."""
    return synth_factory(n_cases=4, seed=2, slices_per_scan=16)


@pytest.fixture
def tiny(tiny_config):
    """The shared tiny config with 2 samples per batch (two processes share 4 cases)."""
    return lambda data_dir, out_dir, **kw: tiny_config(data_dir, out_dir, **{"batch_size": 2, **kw})


# --------------------------------------------------------------------------- batch and lr
@pytest.mark.parametrize(
    ("processes", "accum", "rule", "expected"),
    [
        (1, 1, "none", 1e-3),
        (1, 1, "linear", 1e-3),
        (1, 1, "sqrt", 1e-3),
        (2, 1, "none", 1e-3),
        (2, 1, "linear", 2e-3),
        (2, 2, "linear", 4e-3),
        (4, 1, "sqrt", 2e-3),
        (2, 8, "sqrt", 4e-3),
        (8, 1, "none", 1e-3),
    ],
)
def test_effective_lr_by_hand(processes, accum, rule, expected):
    assert effective_lr(1e-3, processes, accum, rule) == pytest.approx(expected, rel=1e-12)


def test_effective_batch_and_lr_reject_bad_values():
    assert effective_batch_size(16, 2, 4) == 128
    with pytest.raises(ValueError, match=r"scale_lr='cubic'.*none, linear, sqrt"):
        effective_lr(1e-3, 2, 1, "cubic")
    with pytest.raises(ValueError, match=r"num_processes must be >= 1, got 0"):
        effective_lr(1e-3, 0, 1, "linear")


def test_scale_lr_is_a_validated_config_field():
    assert TrainConfig().scale_lr == "none"
    assert parse_args(["--scale-lr", "sqrt"]).scale_lr == "sqrt"
    with pytest.raises(ValueError, match=r"scale_lr='square'.*none, linear, sqrt"):
        TrainConfig(scale_lr="square")


# --------------------------------------------------------------------------- CUDA untouched
_PROBE = textwrap.dedent("""
    import importlib, json, pkgutil
    import torch
    calls = []
    for name in ("_cuda_getDeviceCount", "_cuda_init"):  # what any CUDA query ends in
        original = getattr(torch._C, name)
        def record(*a, _original=original, _name=name, **k):
            calls.append(_name)
            return _original(*a, **k)
        setattr(torch._C, name, record)
    import gi_utils
    import gi_utils.training.launcher
    from gi_utils.training import TrainConfig
    TrainConfig(arch="unetplusplus", amp="fp16", device="auto")
    modules = [m.name for m in pkgutil.walk_packages(gi_utils.__path__, "gi_utils.")
               if not m.name.endswith("__main__")]
    for m in modules:
        importlib.import_module(m)
    TrainConfig.from_dict({"epochs": 2})
    before = {"calls": list(calls), "initialized": torch.cuda.is_initialized()}
    gi_utils.training.launcher.gpu_count()  # NVML count: may query, must not initialise
    print(json.dumps({**before, "after_count": torch.cuda.is_initialized(), "modules": modules}))
""")


def test_importing_gi_utils_and_building_a_config_leaves_cuda_alone():
    """No CUDA query at import or config time, so notebook_launcher can still fork."""
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"gi_utils.training.loop", "gi_utils.training.launcher", "gi_utils.inference.predict"} <= set(out["modules"])
    assert out["calls"] == [] and out["initialized"] is False
    assert out["after_count"] is False


# --------------------------------------------------------------------------- data sharding
def _shard_batches(data, rank: int, epoch: int, skip: int = 0) -> list[list[int]]:
    """Index batches rank ``rank`` of 2 gets, sharded as Accelerator.prepare shards them."""
    shard = prepare_data_loader(data.train_loader, torch.device("cpu"), num_processes=2,
                                process_index=rank, put_on_device=False, rng_types=["generator"])  # fmt: skip
    shard.set_epoch(epoch)  # must reach gi_utils' EpochSampler through accelerate's wrappers
    assert data.sampler.epoch == epoch
    data.sampler.skip = skip
    try:
        return [list(b) for b in shard.batch_sampler]
    finally:
        data.sampler.skip = 0


@pytest.mark.parametrize("max_steps", [0, 3])
def test_two_processes_see_disjoint_shards_covering_the_epoch(synth_dir, tmp_path, max_steps, tiny):
    cfg = tiny(synth_dir, tmp_path / "run", batch_size=3, cache="none",
                      max_steps_per_epoch=max_steps)  # fmt: skip
    data = load_train_data(cfg, num_processes=2)
    n, per_round = len(data.train_ds), cfg.batch_size * 2
    for epoch in (0, 1):
        order = data.sampler.indices(epoch)  # the epoch's sample order, all processes
        full = (len(order) // per_round) * per_round  # a last partial round is dropped
        if max_steps:
            assert full == len(order) == max_steps * per_round
        rank0, rank1 = _shard_batches(data, 0, epoch), _shard_batches(data, 1, epoch)
        assert len(rank0) == len(rank1) == full // per_round
        assert all(len(b) == cfg.batch_size for b in rank0 + rank1)
        seen0 = [j for b in rank0 for j in b]
        seen1 = [j for b in rank1 for j in b]
        assert not set(seen0) & set(seen1)
        assert {j // n for j in seen0 + seen1} == {epoch}  # the epoch is encoded in the index
        # batch k of the epoch goes to rank k % 2: together they are the epoch, in order
        interleaved = [j for b0, b1 in zip(rank0, rank1, strict=True) for j in (*b0, *b1)]
        assert interleaved == (epoch * n + order[:full]).tolist()
        # resuming after 2 rounds (skip = batches done x batch_size x processes, as train()
        # sets it): every rank continues exactly where it stopped
        assert _shard_batches(data, 0, epoch, skip=2 * per_round) == rank0[2:]
        assert _shard_batches(data, 1, epoch, skip=2 * per_round) == rank1[2:]


# --------------------------------------------------------------------------- launch()
def test_launch_with_one_process_trains_here(synth_dir, tmp_path, tiny):
    out = tmp_path / "one"
    history = launch(tiny(synth_dir, out, max_steps_per_epoch=1, scale_lr="linear"), 1)
    pd.testing.assert_frame_equal(read_history(out), history, check_exact=True)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 1 and metrics["effective_batch_size"] == 2
    assert metrics["peak_lr"] == pytest.approx(2e-3)  # one process: the rule changes nothing
    assert read_history(tmp_path / "nothing") is None


def test_launch_rejects_bad_requests(synth_dir, tmp_path, monkeypatch, tiny):
    cfg = tiny(synth_dir, tmp_path / "x")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"num_processes must be an int >= 1"):
            launch(cfg, bad)
    with pytest.raises(ValueError, match=r"method='mpi' is not valid.*auto, notebook, torchrun"):
        launch(cfg, 2, method="mpi")
    monkeypatch.setattr(dist_mod, "gpu_count", lambda: 1)
    with pytest.raises(ValueError, match=r"num_processes=2 but 1 GPU\(s\) are visible"):
        launch(TrainConfig.from_dict({**cfg.to_dict(), "device": "auto"}), 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match=r"inside a launched process \(WORLD_SIZE=2\)"):
        launch(cfg, 2)
    assert not (tmp_path / "x").exists()


def test_launch_on_gpus_hands_train_to_the_notebook_launcher(synth_dir, tmp_path, monkeypatch, tiny):
    """GPU path without GPUs: the launcher is replaced by a recorder that writes a history."""
    cfg = TrainConfig.from_dict({**tiny(synth_dir, tmp_path / "gpu").to_dict(),
                                 "device": "auto", "amp": "bf16"})  # fmt: skip
    calls = []

    def fake_launcher(function, args=(), num_processes=None, mixed_precision="no", **kw):
        calls.append((function, args, num_processes, mixed_precision))
        Path(cfg.out_dir).mkdir(parents=True)
        pd.DataFrame({"epoch": [1], "val_score": [0.5]}).to_csv(
            Path(cfg.out_dir) / "history.csv", index=False
        )

    monkeypatch.setattr(dist_mod, "gpu_count", lambda: 2)
    monkeypatch.setattr(dist_mod, "notebook_launcher", fake_launcher)
    history = launch(cfg, 2)
    assert calls == [(train, (resolve_config(cfg),), 2, "bf16")]  # time_limit resolved once, here
    assert history.to_dict("list") == {"epoch": [1], "val_score": [0.5]}
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(RuntimeError, match=r"CUDA is already initialised.*method='torchrun'"):
        launch(cfg, 2)


def _torchrun_cmd(data_dir: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "gi_utils.training", "--data-dir", str(data_dir), "--out-dir", str(out),
            "--img-size", "64", "--epochs", "2", "--batch-size", "2", "--n-folds", "2",
            "--max-steps-per-epoch", "3", "--save-every-steps", "2", "--device", "cpu",
            "--no-progress"]  # fmt: skip


@pytest.mark.slow
def test_two_process_launch_kill_and_resume_equals_uninterrupted_run(synth_dir, tmp_path, capfd, tiny):
    """notebook launcher (the GPU code path, here on CPU with gloo) vs a torchrun run killed in
    epoch 2 and resumed through launch(method="torchrun"): the same numbers and weights."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    common = {"epochs": 2, "max_steps_per_epoch": 3, "save_every_steps": 2}
    history = launch(tiny(synth_dir, full, **common), 2, method="notebook")
    printed = capfd.readouterr().out
    assert printed.count("epoch 1/2 train_loss") == 1  # only the main process prints
    assert sorted(p.name for p in full.iterdir()) == RUN_FILES  # one set of files
    metrics = json.loads((full / "metrics.json").read_text())
    assert (metrics["num_processes"], metrics["effective_batch_size"]) == (2, 4)
    assert list(history["step"]) == [3, 6]  # 3 steps per epoch per process, 4 samples each

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_torchrun_cmd(synth_dir, cut), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    killed_after = None
    try:
        for line in proc.stdout:  # blocks on the workers' output: no sleeping
            if line.startswith("saved checkpoint") and "epoch 2, batch 2" in line:
                killed_after = line
                break
    finally:  # torchrun starts each worker in a session of its own: kill each one
        for worker in psutil.Process(proc.pid).children(recursive=True):
            worker.send_signal(signal.SIGKILL)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert killed_after, "the run never saved its mid-epoch-2 checkpoint"
    state = load_state(cut / "last.pt")
    assert not state["finished"] and state["num_processes"] == 2 and state["n_batches"] == 2
    with pytest.raises(ValueError, match=r"written by 2 process\(es\), this run has 1"):
        train(tiny(synth_dir, cut, **common))  # resuming needs the same process count

    capfd.readouterr()
    resumed = launch(tiny(synth_dir, cut, **common), 2, method="torchrun")
    printed = capfd.readouterr().out
    assert "resuming" in printed, printed
    pd.testing.assert_frame_equal(history[METRIC_COLUMNS], resumed[METRIC_COLUMNS],
                                  check_exact=True)  # fmt: skip
    wa, wb = load_file(full / "best.safetensors"), load_file(cut / "best.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert math.isfinite(resumed["val_score"].iloc[-1])
    assert np.array_equal(resumed["epoch"], [1, 2])


# --------------------------------------------------------------------------- num_processes="auto"
def test_auto_processes_is_every_visible_gpu_while_cuda_is_untouched(synth_dir, tmp_path, monkeypatch, capsys, tiny):
    cfg = TrainConfig.from_dict({**tiny(synth_dir, tmp_path / "x").to_dict(), "device": "auto"})
    for gpus, want in ((0, 1), (1, 1), (2, 2), (4, 4)):
        monkeypatch.setattr(dist_mod, "gpu_count", lambda g=gpus: g)
        assert resolve_num_processes("auto", cfg) == want
    assert resolve_num_processes("auto", cfg.replace(device="cpu")) == 1
    assert resolve_num_processes(3, cfg) == 3
    with pytest.raises(ValueError, match=r"num_processes must be an int >= 1 or 'auto', got 'all'"):
        resolve_num_processes("all", cfg)
    assert describe_processes(cfg.replace(batch_size=16, scale_lr="sqrt"), 4) == (
        "4 processes (one per GPU); effective batch 64 = batch_size 16 x 4 processes x grad_accum 1; "
        "peak lr 0.004 (scale_lr='sqrt': lr 0.002 scaled by the sqrt rule)")  # fmt: skip
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)  # a cell put a tensor on the GPU
    assert resolve_num_processes("auto", cfg) == 1
    assert "CUDA is already initialised in this kernel" in capsys.readouterr().out


@pytest.mark.slow
def test_02_trains_on_both_gpus_of_a_t4_x2_by_default(synth_dir, tmp_path, monkeypatch, capfd):
    """Kaggle's T4 x2 stood in: two visible GPUs (the count mocked) and CUDA untouched, so
    02's default num_processes="auto" launches two processes through accelerate's notebook
    launcher, the GPU path; here they are CPU processes (gloo)."""
    from gi_utils.pipeline import notebook_annotations, train_folds, train_setup
    from gi_utils.pipeline.notebook_files import NOTEBOOKS_DIR

    types = notebook_annotations(NOTEBOOKS_DIR / "02_train.ipynb")
    given = {"preset": "smoke", "folds": "", "data_dir": str(synth_dir), "run_name": "", "runs_dir": str(tmp_path),
             "pictures_dir": "", "synthetic_if_missing": False, "n_overlays": 1, "img_size": 64, "batch_size": 2,
             "n_folds": 2, "max_steps_per_epoch": 2, "model_kwargs": {"decoder_channels": [8, 8, 8, 8, 8]},
             "num_processes": "auto"}  # fmt: skip
    monkeypatch.setattr(dist_mod, "gpu_count", lambda: 2)
    real_launcher = dist_mod.notebook_launcher

    def on_cpus(function, args, num_processes, **kw):  # each GPU process stood in by a CPU one
        return real_launcher(function, (args[0].replace(device="cpu"),), num_processes=num_processes, **kw)

    monkeypatch.setattr(dist_mod, "notebook_launcher", on_cpus)
    cfg, nb = train_setup(given, types)
    assert nb["num_processes"] == 2
    histories = train_folds(cfg, cfg.fold, nb["num_processes"])
    printed = capfd.readouterr().out
    assert "2 processes (one per GPU); effective batch 4 = batch_size 2 x 2 processes" in printed
    assert "launching 2 processes (notebook, GPU)" in printed
    metrics = json.loads((Path(cfg.out_dir) / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and metrics["effective_batch_size"] == 4
    assert list(histories) == [Path(cfg.out_dir).name]
