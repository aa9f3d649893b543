"""TrainConfig validation, the schedule and sampler, and training runs on tiny synthetic data."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import gi_utils.training.session as session_mod
from gi_utils.checkpoint import load_state
from gi_utils.models import load_model
from gi_utils.training import (
    EpochSampler,
    LossTally,
    NonFiniteLossError,
    SeededSamples,
    TrainConfig,
    WarmupCosine,
    train,
    train_one_epoch,
)
from gi_utils.training.cli import parse_args

torch.set_num_threads(1)
METRIC_COLUMNS = ["epoch", "step", "lr", "train_loss", "val_loss", "val_dice", "val_hausdorff",
                  "val_score", "dice_large_bowel", "dice_small_bowel", "dice_stomach"]  # fmt: skip


@pytest.fixture(scope="module")
def synth_dir(synth_factory) -> Path:
    """4 cases x 2-3 scans x 12 slices of 80x72 (non-square), half the slices empty."""
    return synth_factory(n_cases=4, seed=0, slices_per_scan=12, size=(80, 72))


# --------------------------------------------------------------------------- config
def test_defaults_are_valid_and_round_trip_through_json():
    cfg = TrainConfig()
    back = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.slice_offsets == (-2, 0, 2)


def test_arch_is_normalised_and_its_entry_looked_up_once():
    cfg = TrainConfig(arch="SegResNet3D")
    assert cfg.arch == "segresnet3d" and cfg.spec.is_3d and cfg.in_channels == 1
    assert "spec" not in cfg.to_dict() and cfg == TrainConfig.from_dict(cfg.to_dict())  # not a field
    assert TrainConfig().spec.kind == "2.5d" and TrainConfig().in_channels == 3


def test_unknown_parameter_is_rejected_with_a_suggestion():
    with pytest.raises(
        ValueError, match=r"unknown TrainConfig parameter.*'lrr'.*did you mean 'lr'"
    ):
        TrainConfig.from_dict({"lrr": 0.1})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("arch", "unett", r"arch='unett'.*unet, unetplusplus"),
        ("encoder", "resnet19", r"encoder.*resnet19"),
        ("loss", "focal_nope", r"loss='focal_nope'.*bce_dice"),
        ("img_size", 100, r"img_size=100 is not divisible by the encoder's stride 32"),
        ("amp", "fp8", r"amp='fp8'"),
        ("cache", "ssd", r"cache='ssd'"),
        ("fold", 5, r"fold must be in 0..4"),
        ("epochs", 0, r"epochs must be >= 1"),
        ("lr", -1e-3, r"lr must be a positive"),
        ("lr", float("nan"), r"lr must be a positive"),
        ("sample_empty_fraction", 1.5, r"sample_empty_fraction"),
        ("threshold", 1.0, r"threshold"),
        ("epochs", "3", r"epochs must be int"),
        ("augment", "yes", r"augment must be bool"),
        ("slice_offsets", (), r"slice_offsets"),
        ("slice_offsets", (0.5,), r"slice_offsets must be"),
        ("ema_decay", 1.0, r"ema_decay must be in \[0, 1\)"),
        ("augment_kwargs", {"Flip": {"p": 0.0}}, r"augment_kwargs: override for unknown transform 'Flip'"),
        ("augment_kwargs", {"Affine": {"rotation": 5}}, r"augment_kwargs: Affine: .*rotation"),
        ("augment_kwargs", {"Affine": 0.5}, r"augment_kwargs: override for Affine must be a dict"),
    ],
)
def test_bad_values_name_the_parameter(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_command_line_parsing():
    cfg = parse_args(["--arch", "fpn", "--img-size", "64", "--slice-offsets", "-1", "0", "1",
                      "--no-augment", "--weights", "none", "--lr", "0.003",
                      "--model-kwargs", '{"decoder_dropout": 0.1}'])  # fmt: skip
    assert (cfg.arch, cfg.img_size, cfg.slice_offsets, cfg.augment) == (
        "fpn",
        64,
        (-1, 0, 1),
        False,
    )
    assert cfg.weights is None and cfg.lr == 0.003 and cfg.model_kwargs == {"decoder_dropout": 0.1}
    with pytest.raises(SystemExit):
        parse_args(["--no-such-flag", "1"])
    with pytest.raises(SystemExit):  # a bad value is an argparse error too
        parse_args(["--img-size", "100"])


def test_config_file_with_flag_override(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"arch": "manet", "epochs": 7}))
    cfg = parse_args(["--config", str(path), "--epochs", "2"])
    assert (cfg.arch, cfg.epochs) == ("manet", 2)


# --------------------------------------------------------------------------- schedule, sampler
def test_warmup_cosine_by_hand():
    f = WarmupCosine(warmup=2, total=6, floor=0.0)
    # warm-up: (step + 1) / (warmup + 1); then cosine over the remaining 4 steps
    expected = [
        1 / 3,
        2 / 3,
        1.0,
        0.5 * (1 + math.cos(math.pi / 4)),
        0.5,
        0.5 * (1 + math.cos(3 * math.pi / 4)),
        0.0,
    ]
    assert [f(s) for s in range(7)] == pytest.approx(expected)
    assert WarmupCosine(0, 10, floor=0.1)(10) == pytest.approx(0.1)


def test_epoch_sampler_keeps_organs_and_draws_empties():
    empty = np.array([True] * 10 + [False] * 6)
    s = EpochSampler(empty, seed=1, empty_fraction=0.3)
    e0, e1 = s.indices(0), s.indices(1)
    assert len(s) == len(e0) == 6 + 3
    assert set(range(10, 16)) <= set(e0.tolist())  # every organ slice, every epoch
    assert len(set(e0.tolist())) == len(e0)
    assert not np.array_equal(e0, e1)
    assert np.array_equal(e0, EpochSampler(empty, seed=1, empty_fraction=0.3).indices(0))
    s.set_epoch(1)
    assert list(s) == (16 + e1).tolist()  # epoch encoded in the index
    s.skip = 4
    assert list(s) == (16 + e1[4:]).tolist() and len(s) == 5
    assert len(EpochSampler(empty, seed=1, max_samples=5)) == 5


class _Recorder:
    """A dataset whose 'augmentation' draws one number from the transform's generator."""

    class _Compose:
        def set_random_state(self, rng, py_rng):
            self.rng = rng

        def __call__(self, **data):
            return {"value": float(self.rng.random())}

    def __init__(self):
        self.transform = self._Compose()

    def __len__(self):
        return 5

    def __getitem__(self, i):
        return self.transform(image=i)["value"]


def test_augmentation_seed_depends_on_seed_epoch_and_sample_only():
    ds = SeededSamples(_Recorder(), seed=7)
    forward = [ds[j] for j in range(10)]  # epochs 0 and 1
    backward = [ds[j] for j in reversed(range(10))][::-1]
    assert forward == backward
    assert forward[:5] != forward[5:]
    ds.base.transform.set_random_seed(123)  # SliceDataset's per-worker reseed: ignored
    assert ds[3] == forward[3]


def test_views_sharing_a_dataset_draw_the_samples_of_a_fresh_one():
    """A benchmark makes one view per worker count and batch size on one dataset: the
    transform is wrapped once and every view draws what a view of a fresh dataset draws."""
    fresh = SeededSamples(_Recorder(), seed=7)
    expected = [fresh[j] for j in range(10)]
    shared = _Recorder()
    first, second = SeededSamples(shared, seed=7), SeededSamples(shared, seed=7)
    assert [second[j] for j in range(10)] == expected
    assert [first[j] for j in range(10)] == expected
    assert SeededSamples(shared, seed=8)[3] != expected[3]  # the view's own seed


# --------------------------------------------------------------------------- training runs
def test_one_epoch_writes_all_files(synth_dir, tmp_path, tiny_config):
    out = tmp_path / "run"
    history = train(tiny_config(synth_dir, out, epochs=1, max_steps_per_epoch=3))
    assert list(history.columns) == [*METRIC_COLUMNS, "epoch_time_s"] and len(history) == 1
    assert history["step"].iloc[0] == 3
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "last.pt",
        "best.safetensors",
        "best.json",
        "history.csv",
        "metrics.json",
    } <= names
    assert not [n for n in names if n.endswith(".tmp")]
    assert TrainConfig.from_dict(json.loads((out / "config.json").read_text())) == tiny_config(
        synth_dir, out, epochs=1, max_steps_per_epoch=3, time_limit=0.0  # resolved where it starts: none here
    )
    model, cfg = load_model(out / "best.safetensors")
    assert (cfg.arch, cfg.img_size, cfg.slice_offsets) == ("unet", 64, [-2, 0, 2])
    state = load_state(out / "last.pt")  # weights_only=True
    assert state["finished"] and state["epoch"] == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_epoch"] == 1 and metrics["device"] == "cpu"
    # a finished run called again returns its history without training
    again = train(tiny_config(synth_dir, out, epochs=1, max_steps_per_epoch=3))
    pd.testing.assert_frame_equal(again, history)


def test_resume_with_another_config_is_refused(synth_dir, tmp_path, tiny_config):
    out = tmp_path / "run"
    train(tiny_config(synth_dir, out, max_steps_per_epoch=1))
    with pytest.raises(ValueError, match=r"another run \(lr: saved 0.002 != now 0.001\)"):
        train(tiny_config(synth_dir, out, max_steps_per_epoch=1, lr=1e-3))


class _NanOnSecondCall(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, logits, target):
        self.calls += 1
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        return loss * float("nan") if self.calls == 2 else loss


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(synth_dir, tmp_path, monkeypatch, tiny_config):
    monkeypatch.setattr(session_mod, "build_loss", lambda name, **kw: _NanOnSecondCall())
    out = tmp_path / "run"
    with pytest.raises(
        NonFiniteLossError, match=r"loss is nan at batch 2.*last good checkpoint kept.*last.pt"
    ):
        train(tiny_config(synth_dir, out, save_every_steps=1, max_steps_per_epoch=3))
    state = load_state(out / "last.pt")
    assert state["n_batches"] == 1 and not state["finished"]
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_a_nan_is_caught_when_the_losses_are_read_back_naming_its_batch():
    """The losses are read back every ``check_every`` batches (not every step, which makes
    the host wait for the device): a NaN at batch 2 stops the epoch after batch 4."""
    from accelerate import Accelerator

    acc, model, loss = Accelerator(cpu=True), torch.nn.Conv2d(1, 1, 1), _NanOnSecondCall()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    batches = [(torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4))] * 8
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at batch 2 \(batches 1-4 read back together\)"):
        train_one_epoch(acc, model, batches, opt, sched, loss, progress=False, check_every=4)
    assert loss.calls == 4


def test_the_tally_sums_as_reading_each_loss_at_once():
    """Read back together or one by one, the running sum is the same to the bit (resuming
    from a checkpoint's sum stays exact)."""
    losses = torch.rand(11, generator=torch.Generator().manual_seed(0)) * 3
    at_once = 0.25
    for value in losses:
        at_once += float(value)
    tally = LossTally(0.25, 7, every=4)
    for k, value in enumerate(losses):
        assert tally.add(value) == ((k + 1) % 4 == 0) and tally.n_batches == 8 + k
    assert tally.loss_sum == at_once and tally.n_batches == 18


@pytest.mark.slow
def test_two_epochs_improve_validation_dice(synth_dir, tmp_path, tiny_config):
    history = train(tiny_config(synth_dir, tmp_path / "run", epochs=2, lr=3e-3, augment=False,
                                warmup_epochs=0.0, batch_size=4))  # fmt: skip
    assert history["val_dice"].iloc[1] > history["val_dice"].iloc[0]
    assert history["train_loss"].iloc[1] < history["train_loss"].iloc[0]


def _train_cmd(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gi_utils.training", "--data-dir", str(data_dir), "--out-dir", str(out),
            "--img-size", "64", "--epochs", "3", "--batch-size", "4", "--n-folds", "2", "--device", "cpu",
            "--save-every-steps", "3", "--no-progress", "--ema-decay", "0.9", "--amp", "bf16", *extra]  # fmt: skip


#: The 3-D run: SegResNet on patches of 16 slices (float32: see make_accelerator), with
#: MONAI's augmentation and sliding-window validation.
_3D = ("--arch", "segresnet3d", "--patch-depth", "16", "--batch-size", "2", "--amp", "no", "--max-steps-per-epoch", "8")


@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), _3D, ("--data-path", "device")], ids=["2.5d", "3d", "2.5d-device"])
def test_sigkill_then_resume_equals_uninterrupted_run(synth_dir, tmp_path, extra):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    full, cut = tmp_path / "full", tmp_path / "cut"
    subprocess.run(_train_cmd(synth_dir, full, *extra), env=env, check=True, capture_output=True)
    proc = subprocess.Popen(_train_cmd(synth_dir, cut, *extra), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    killed_after = None
    for line in proc.stdout:  # blocks on the child's output: no sleeping
        if line.startswith("saved checkpoint") and "epoch 2, batch" in line:
            proc.send_signal(signal.SIGKILL)
            killed_after = line
            break
    proc.wait()
    assert killed_after and proc.returncode == -signal.SIGKILL
    assert not load_state(cut / "last.pt")["finished"]
    resumed = subprocess.run(
        _train_cmd(synth_dir, cut, *extra), env=env, check=True, capture_output=True, text=True
    )
    assert "resuming" in resumed.stdout
    a = pd.read_csv(full / "history.csv")[METRIC_COLUMNS]
    b = pd.read_csv(cut / "history.csv")[METRIC_COLUMNS]
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    wa, wb = load_file(full / "best.safetensors"), load_file(cut / "best.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = load_state(full / "last.pt"), load_state(cut / "last.pt")
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
    assert all(torch.equal(sa["ema"][k], sb["ema"][k]) for k in sa["ema"])  # the EMA resumes too


def test_ema_weights_are_validated_and_kept_as_best(synth_dir, tmp_path, tiny_config):
    out = tmp_path / "run"
    train(tiny_config(synth_dir, out, max_steps_per_epoch=3, ema_decay=0.9))
    state = load_state(out / "last.pt")
    best = load_file(out / "best.safetensors")  # epoch 1 of 1: best = last
    ema = {k.removeprefix("module."): v for k, v in state["ema"].items()}
    assert best.keys() == ema.keys() == state["model"].keys()
    assert all(torch.equal(best[k], ema[k]) for k in best)
    moved = [k for k in best if best[k].is_floating_point() and not torch.equal(best[k], state["model"][k])]
    assert moved, "the kept weights are the raw weights, not their average"


def test_channels_last_is_a_layout_not_a_result(synth_dir, tmp_path, tiny_config):
    # Full precision (amp="no"): no number here depends on a CPU's bf16 rounding, and the
    # two layouts differ only in the fp32 summation order of their kernels. A small lr:
    # AdamW's first steps move each weight by about lr * sign(gradient), so a summation-order
    # difference that flips the sign of a near-zero gradient moves that weight by ~2 lr; at
    # lr=2e-3 that gave val_loss 0.730036 vs 0.731379 (NHWC vs NCHW). At 1e-5 the losses
    # agree to ~1e-7 here, while a layout bug (a wrong permutation) changes them at once.
    kw = {"max_steps_per_epoch": 2, "amp": "no", "lr": 1e-5}
    a = train(tiny_config(synth_dir, tmp_path / "a", channels_last=True, **kw))
    b = train(tiny_config(synth_dir, tmp_path / "b", channels_last=False, **kw))
    losses = ["train_loss", "val_loss"]
    pd.testing.assert_frame_equal(a[losses], b[losses], rtol=1e-5)
    model, _ = load_model(tmp_path / "a" / "best.safetensors")  # saved contiguous, loads anywhere
    assert all(p.is_contiguous() for p in model.parameters())


@pytest.mark.parametrize(
    ("amp", "cuda", "bf16_gpu", "bf16_cpu", "want"),  # GPUs by compute capability: tests/test_device.py
    [
        ("auto", False, False, True, "bf16"),  # CPU with AVX512-BF16/AMX
        ("auto", False, False, False, "no"),  # bf16 would be emulated: slower
        ("bf16", False, False, False, "bf16"),  # asked for: allowed
        ("fp16", False, False, False, "fp16"),  # the T4 path on a CPU (with a warning)
        ("no", True, True, True, "no"),
    ],
)
def test_resolve_amp(monkeypatch, amp, cuda, bf16_gpu, bf16_cpu, want):
    from gi_utils.device import resolve_amp

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_gpu)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16_cpu, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert resolve_amp(amp, cuda) == want


def test_switching_amp_between_runs_in_one_process(synth_dir, tmp_path, tiny_config):
    # a notebook trains several models one after the other with other settings
    train(tiny_config(synth_dir, tmp_path / "a", max_steps_per_epoch=1))
    history = train(tiny_config(synth_dir, tmp_path / "b", max_steps_per_epoch=1, amp="bf16"))
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["mixed_precision"] == "bf16"
    assert np.isfinite(history["train_loss"]).all()
    with pytest.warns(UserWarning, match="amp='fp16' on the CPU: fp16 autocast and a gradient scaler"):
        train(tiny_config(synth_dir, tmp_path / "c", max_steps_per_epoch=1, amp="fp16"))
    assert json.loads((tmp_path / "c" / "metrics.json").read_text())["mixed_precision"] == "fp16"


@pytest.mark.slow
def test_two_processes_gather_validation_and_only_main_writes(synth_dir, tmp_path):
    """torchrun with 2 CPU processes (gloo): one set of files, metrics on whole volumes."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "gi_utils.training", "--data-dir", str(synth_dir), "--out-dir", str(out), "--img-size", "64",
           "--epochs", "1", "--batch-size", "2", "--n-folds", "2", "--device", "cpu", "--no-progress",
           "--amp", "no"]  # fmt: skip  (full precision, as the check below predicts)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("epoch 1/1 train_loss") == 1  # only the main process prints
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["best.json", "best.safetensors", "config.json", "history.csv", "last.pt", "metrics.json", "oof", "split.json"]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 2
    row = pd.read_csv(out / "history.csv").iloc[0]
    # validation gathered from both processes equals scoring the saved model on whole volumes
    from gi_utils.data import (
        build_metadata,
        preprocess_mask,
        preprocess_volume,
        read_volume,
        read_volume_mask,
    )
    from gi_utils.evaluation import competition_score
    from gi_utils.inference import predict_probs, stack_slices

    model, cfg = load_model(out / "best.safetensors")
    split = json.loads((out / "split.json").read_text())  # the run records its split
    meta = build_metadata(synth_dir)
    val = meta[meta["case_day"].isin(split["val_case_days"])]
    assert split["fold"] == 0 and set(split["train_case_days"]).isdisjoint(split["val_case_days"])
    pred, true = {}, {}
    for case_day, rows in val.groupby("case_day", sort=False):
        images = stack_slices(preprocess_volume(read_volume(rows), 64), cfg.slice_offsets)
        pred[case_day] = np.moveaxis(predict_probs(model, images, batch_size=4)[0], 1, -1) > 0.5
        true[case_day] = np.moveaxis(preprocess_mask(read_volume_mask(rows), 64), 1, -1)
    res = competition_score(pred, true)
    assert row["val_score"] == pytest.approx(res.score, abs=1e-3)
    assert row["val_dice"] == pytest.approx(res.dice, abs=1e-3)


def test_ctrl_c_during_training_keeps_last_pt_and_the_next_run_resumes(synth_dir, tmp_path, monkeypatch, tiny_config, capsys):
    """KeyboardInterrupt (Ctrl-C in a notebook) between steps: last.pt stays whole, the run
    lock is released, and running the same config again resumes and finishes."""
    out = tmp_path / "run"
    cfg = tiny_config(synth_dir, out, save_every_steps=1, max_steps_per_epoch=4)
    real = session_mod.TrainingRun._on_step

    def interrupt_at_third(self, tally, n_batches):
        real(self, tally, n_batches)
        if n_batches == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(session_mod.TrainingRun, "_on_step", interrupt_at_third)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.undo()
    assert load_state(out / "last.pt")["n_batches"] == 3 and not (out / ".lock").exists()
    capsys.readouterr()
    history = train(cfg)
    assert "resuming" in capsys.readouterr().out and len(history) == 1


def test_a_resumed_run_reports_the_time_of_every_session(synth_dir, tmp_path, monkeypatch, tiny_config):
    """metrics.json's train_time_s (03's and the README's "Train time") counted the last
    session only: the demo's fold 1, resumed after its second epoch, said 0.5 min for 0.9."""
    import time as time_mod

    out = tmp_path / "run"
    cfg = tiny_config(synth_dir, out, epochs=2, save_every_steps=1, max_steps_per_epoch=4)
    real = session_mod.TrainingRun._on_step

    def slow_first_epoch_then_stop(self, tally, n_batches):
        real(self, tally, n_batches)
        if self.state["epoch"] == 0:
            time_mod.sleep(1.0)  # the first session: at least 4 s of training
        elif n_batches == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(session_mod.TrainingRun, "_on_step", slow_first_epoch_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.undo()
    history = train(cfg)
    seconds = json.loads((out / "metrics.json").read_text())["train_time_s"]
    assert len(history) == 2 and seconds >= history["epoch_time_s"].sum() >= 4.0


def test_a_second_run_in_the_same_folder_stops_at_once(synth_dir, tmp_path, tiny_config):
    from gi_utils.runlock import RunLockedError, run_lock

    out = tmp_path / "run"
    with run_lock(out), pytest.raises(RunLockedError, match=str(out)):  # another run holds it
        train(tiny_config(synth_dir, out))
    assert not (out / "last.pt").exists()


@pytest.mark.filterwarnings("ignore:amp='fp16' on the CPU")
def test_fp16_scaler_state_is_saved_and_restored_on_resume(synth_dir, tmp_path, monkeypatch, tiny_config):
    """The T4 path on the CPU: fp16 autocast with a gradient scaler; a run interrupted after
    step 3 and resumed ends with the weights and the scaler of an uninterrupted run."""
    kw = {"amp": "fp16", "save_every_steps": 1, "max_steps_per_epoch": 4, "epochs": 2, "ema_decay": 0.0}
    full = tiny_config(synth_dir, tmp_path / "full", **kw)
    train(full)
    scaler_full = load_state(tmp_path / "full" / "last.pt")["scaler"]
    assert scaler_full and scaler_full["scale"] > 0  # a real scaler state, not None
    real = session_mod.TrainingRun._on_step

    def stop_at_third(self, tally, n_batches):
        real(self, tally, n_batches)
        if self.state["epoch"] == 1 and n_batches == 3:
            raise KeyboardInterrupt

    cut = tiny_config(synth_dir, tmp_path / "cut", **kw)
    monkeypatch.setattr(session_mod.TrainingRun, "_on_step", stop_at_third)
    with pytest.raises(KeyboardInterrupt):
        train(cut)
    monkeypatch.undo()
    saved = load_state(tmp_path / "cut" / "last.pt")
    assert saved["scaler"] is not None and saved["n_batches"] == 3
    train(cut)
    a, b = load_state(tmp_path / "full" / "last.pt"), load_state(tmp_path / "cut" / "last.pt")
    assert a["scaler"] == b["scaler"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_gate_head_trains_saves_and_feeds_post_processing(synth_dir, tmp_path, tiny_config):
    from gi_utils.evaluation import OOFSet
    from gi_utils.inference import PostProcess, load_models, predict_probs
    from gi_utils.models import run_name

    out = tmp_path / run_name({"arch": "unet", "encoder": "resnet18", "img_size": 64, "fold": 0, "gate": True})
    train(tiny_config(synth_dir, out, gate=True, max_steps_per_epoch=2))
    oof = OOFSet(out / "oof")
    assert oof.gate is not None and oof.gate.shape == (len(oof), 3)
    (model, config), = load_models([out / "best.safetensors"], "cpu")
    assert config.gate is True and "aux_params" in config.model_kwargs
    probs, gate = predict_probs(model, np.zeros((2, 3, 64, 64), np.float32))
    assert probs.shape == (2, 3, 64, 64) and gate.shape == (2, 3) and ((0 <= gate) & (gate <= 1)).all()
    vol = oof.volume(oof.case_days[0])
    on = PostProcess(thresholds=0.0, gate_head=0.999).apply(vol.probs, vol.gate)
    off = PostProcess(thresholds=0.0).apply(vol.probs, vol.gate)
    assert on.sum() <= off.sum()  # the head's gate only ever removes slices
