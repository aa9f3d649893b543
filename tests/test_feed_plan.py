"""The feed's plan (issue 27, items 2-3): the path and residency decided once, from the
cache's bytes, a probe step of the model and the GPU memory seen (reserved-but-unused
memory counted as free), on mocked cards named by their figures; the probe's code path on
the CPU; 3-D sizes from a mocked probe; a resumed run keeps its recorded plan."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from gi_utils.checkpoint import load_state
from gi_utils.data import device_nbytes
from gi_utils.losses import build_loss
from gi_utils.models import build_model
from gi_utils.training import (
    HEADROOM,
    SIZES_3D,
    FeedPlan,
    GpuMemory,
    allowances,
    choose_size,
    decide_feed,
    gpu_memory,
    load_fold_data,
    load_train_data,
    plan_feed,
    preset_config,
    probe_size_3d,
    probe_step,
    train,
    with_preset,
)
from gi_utils.training import probe as probe_mod
from gi_utils.training import session as session_mod

torch.set_num_threads(1)
GB = 10**9
CUDA = torch.device("cuda")
#: The competition at 320 px in the compact cache (uint8 images, packed masks: 2 bytes a
#: pixel), fold 0 of 5: 30,797 training and 7,699 validation slices (README 4.3).
COMPACT = SimpleNamespace(dtype="uint8", img_size=320)
TRAIN_2D, VAL_2D = device_nbytes(COMPACT, 30_797), device_nbytes(COMPACT, 7_699)


def mock_gpu(monkeypatch, name: str, free: float, total: float, reserved: float = 0, allocated: float = 0) -> None:
    """``torch.cuda`` reporting one card: the driver's free and total, the caching
    allocator's reserved and allocated bytes."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(free), int(total)))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: int(reserved))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: int(allocated))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


def unet34_allowance(batch: int, ema: bool = True) -> dict[str, int]:
    """UNet/ResNet-34 (24.4 M parameters) at 320 px, 3 channels, on the device path."""
    s2 = 320 * 320
    return allowances(param_bytes=4 * 24_436_369, ema=ema, batch_numel=batch * 6 * s2, device_path=True,
                      val_numel=2 * batch * s2 * 12)  # fmt: skip


# --------------------------------------------------------------------------- decisions
def test_t4_2d_compact_full_size_takes_the_device_only_where_the_step_leaves_room(monkeypatch):
    """A T4 (15.8 GB): the 7.9 GB of slices alone were once compared with half the free
    memory (device: at 15.7 GB free). Beside a probe step of 8 GB (batch 64, assumed) they
    do not fit: workers; beside a step of 2.5 GB (batch 16) they do, both resident."""
    mock_gpu(monkeypatch, "Tesla T4", free=15.7 * GB, total=15.8 * GB)
    seen = gpu_memory(CUDA)
    assert seen == GpuMemory("Tesla T4", int(15.7 * GB), int(15.8 * GB), 0)
    big = decide_feed("auto", has_cache=True, train_bytes=TRAIN_2D, val_bytes=VAL_2D, memory=seen,
                      step_bytes=8 * GB, allowance=unet34_allowance(64))  # fmt: skip
    assert big.path == "workers" and "do not fit" in big.reason
    assert TRAIN_2D + 8 * GB + sum(unet34_allowance(64).values()) > HEADROOM * seen.free
    small = decide_feed("auto", has_cache=True, train_bytes=TRAIN_2D, val_bytes=VAL_2D, memory=seen,
                        step_bytes=int(2.5 * GB), allowance=unet34_allowance(16))  # fmt: skip
    assert (small.path, small.train_resident, small.val_resident) == ("device", True, True)
    assert small.needed <= HEADROOM * seen.free
    asked = decide_feed("device", has_cache=True, train_bytes=TRAIN_2D, val_bytes=VAL_2D, memory=seen,
                        step_bytes=8 * GB, allowance=unet34_allowance(64))  # fmt: skip
    assert (asked.path, asked.train_resident, asked.val_resident) == ("device", False, False)  # pinned, not OOM


def test_t4_3d_kaggle_preset_never_puts_the_slices_beside_segresnets_step(monkeypatch):
    """The T4 ``kaggle`` preset's SegResNet (batch 2, 32x320x320: ~11.8 GB estimated by
    memory_3d.py) and the fold's 6.3 GB of training slices: workers on ``auto``, pinned
    host memory on an explicit ``device``; never both resident (an OOM at the first step)."""
    mock_gpu(monkeypatch, "Tesla T4", free=15.7 * GB, total=15.8 * GB)
    s2 = 320 * 320
    allow = allowances(param_bytes=4 * 1_176_435, ema=True, batch_numel=2 * 4 * 32 * s2, device_path=True,
                       val_numel=144 * s2 * 8)  # fmt: skip
    kw = {"has_cache": True, "train_bytes": TRAIN_2D, "memory": gpu_memory(CUDA),
          "step_bytes": int(11.8 * GB), "allowance": allow}  # fmt: skip
    assert decide_feed("auto", **kw).path == "workers"
    pinned = decide_feed("device", **kw)
    assert pinned.path == "device" and not pinned.train_resident


def test_h100_takes_the_device_path_with_everything_resident(monkeypatch):
    mock_gpu(monkeypatch, "NVIDIA H100 80GB HBM3", free=84.5 * GB, total=85.0 * GB)
    plan = decide_feed("auto", has_cache=True, train_bytes=TRAIN_2D, val_bytes=VAL_2D, memory=gpu_memory(CUDA),
                       step_bytes=12 * GB, allowance=unet34_allowance(64))  # fmt: skip
    assert (plan.path, plan.train_resident, plan.val_resident) == ("device", True, True)
    assert plan.gpu == "NVIDIA H100 80GB HBM3" and plan.free == int(84.5 * GB)


def test_memory_the_allocator_keeps_reserved_counts_as_free(monkeypatch):
    """Fold 1 trained in the process of fold 0 finds 9 GB reserved by torch's caching
    allocator (free for torch, used for the driver): it decides as fold 0 did (256 px,
    compact: 5.0 GB of slices, a batch of 16)."""
    cache = SimpleNamespace(dtype="uint8", img_size=256)
    kw = {"has_cache": True, "train_bytes": device_nbytes(cache, 30_797), "val_bytes": device_nbytes(cache, 7_699),
          "step_bytes": int(1.6 * GB), "allowance": unet34_allowance(16)}  # fmt: skip
    mock_gpu(monkeypatch, "Tesla T4", free=15.6 * GB, total=15.8 * GB)
    fold0 = decide_feed("auto", memory=gpu_memory(CUDA), **kw)
    mock_gpu(monkeypatch, "Tesla T4", free=6.6 * GB, total=15.8 * GB, reserved=9.2 * GB, allocated=0.2 * GB)
    seen = gpu_memory(CUDA)
    assert seen.free == int(15.6 * GB) and seen.cached == int(9.0 * GB)
    fold1 = decide_feed("auto", memory=seen, **kw)
    assert (fold1.path, fold1.train_resident, fold1.val_resident) == (fold0.path, fold0.train_resident,
                                                                      fold0.val_resident) == ("device", True, True)


def test_the_boundaries_of_the_decision():
    """Exactly what fits the headroom is resident; a byte more moves the validation slices
    to pinned memory, then the training slices (device asked) or the path (auto)."""
    mem = GpuMemory("card", 100 * GB, 100 * GB)
    step, allow = 20 * GB, {"weight_average": GB, "augmentation": GB, "validation": GB}
    room = int(HEADROOM * mem.free) - step - 3 * GB
    kw = {"has_cache": True, "memory": mem, "step_bytes": step, "allowance": allow}
    both = decide_feed("auto", train_bytes=room - 10, val_bytes=10, **kw)
    assert (both.train_resident, both.val_resident) == (True, True) and both.needed == room + step + 3 * GB
    one = decide_feed("auto", train_bytes=room - 10, val_bytes=11, **kw)
    assert (one.path, one.train_resident, one.val_resident) == ("device", True, False)
    assert decide_feed("auto", train_bytes=room + 1, **kw).path == "workers"
    assert decide_feed("device", train_bytes=room + 1, **kw).train_resident is False
    oom = decide_feed("auto", train_bytes=1, **{**kw, "step_bytes": None})
    assert oom.path == "workers" and "ran out of memory" in oom.reason
    big = decide_feed("workers", train_bytes=1, **{**kw, "step_bytes": 90 * GB})  # the workers' run is planned too
    assert (big.path, big.free, big.step_bytes) == ("workers", mem.free, 90 * GB)
    assert big.reason == "asked; the step and its allowances alone exceed the plannable memory: lower batch_size"


def test_without_a_gpu_nothing_is_probed_and_explicit_values_are_kept():
    assert decide_feed("auto", has_cache=True, train_bytes=10).path == "workers"
    assert decide_feed("workers", has_cache=True, train_bytes=10, memory=GpuMemory("c", GB, GB)).path == "workers"
    cpu = decide_feed("device", has_cache=True, train_bytes=10)
    assert (cpu.path, cpu.train_resident, cpu.val_resident, cpu.gpu) == ("device", True, True, None)
    mem = GpuMemory("card", 100 * GB, 100 * GB)
    assert decide_feed("auto", has_cache=False, train_bytes=0, memory=mem, step_bytes=GB).path == "workers"
    assert decide_feed("auto", has_cache=True, train_bytes=1, memory=mem, step_bytes=GB,
                       device_augment=False).path == "workers"  # fmt: skip


def test_the_plan_prints_the_decision_the_bytes_and_the_memory_seen_and_round_trips():
    plan = decide_feed("auto", has_cache=True, train_bytes=TRAIN_2D, val_bytes=VAL_2D,
                       memory=GpuMemory("NVIDIA H100 80GB HBM3", 84 * GB, 85 * GB, 2 * GB), step_bytes=12 * GB,
                       allowance=unet34_allowance(64))  # fmt: skip
    text = plan.summary()
    assert text.startswith("feed plan: device path (data_path='auto'): training slices on the GPU, validation")
    for part in ("6.31 GB training + 1.58 GB validation", "NVIDIA H100 80GB HBM3: 84.00 GB free of 85.00 GB",
                 "2.00 GB of it cached by torch", "probe step 12.00 GB", "85% of free"):  # fmt: skip
        assert part in text, part
    again = FeedPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again.recorded and again.to_dict() == plan.to_dict()
    assert "recorded in last.pt, reused" in again.summary()


# --------------------------------------------------------------------------- the probe
def test_the_probe_step_runs_on_the_cpu_and_leaves_model_and_generators_alone(monkeypatch):
    net = build_model("unet", "resnet18", 3, 3, weights=None, encoder_depth=3, decoder_channels=[16, 8, 8])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    args = (net, build_loss("bce_dice"), (2, 3, 32, 32), torch.device("cpu"))
    assert probe_step(*args) is None  # nothing measured on a CPU
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    # the measuring branch, with torch.cuda's statistics standing in for a GPU's
    stats = {"allocated": 1000, "peak": 0}
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: stats["allocated"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: stats.update(peak=1000))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: stats["peak"] + 5000)
    assert probe_step(*args, measure=True) == 5000


def test_a_cpu_run_plans_without_probing(synth_factory, tmp_path, tiny_config, monkeypatch):
    monkeypatch.setattr(probe_mod, "probe_step", lambda *a, **k: pytest.fail("probed on a CPU"))
    cfg = tiny_config(synth_factory(), tmp_path / "run")
    fold = load_fold_data(cfg)
    net = build_model("unet", "resnet18", 3, 3, weights=None)
    plan = plan_feed(cfg, fold, net, build_loss("bce_dice"), torch.device("cpu"), "no")
    assert (plan.path, plan.gpu, plan.step_bytes) == ("workers", None, None)
    assert plan.train_bytes == device_nbytes(fold.cache, len(fold.train_meta)) > 0
    on_cpu = plan_feed(cfg.replace(data_path="device"), fold, net, build_loss("bce_dice"), torch.device("cpu"), "no")
    assert on_cpu.path == "device" and on_cpu.train_resident


# --------------------------------------------------------------------------- 3-D sizes
def test_choose_size_takes_the_first_candidate_that_fits():
    peaks = {(4, 64): None, (2, 64): 30, (4, 32): 12}
    chosen, tried = choose_size([(4, 64), (2, 64), (4, 32), (2, 32)], lambda b, d: peaks[b, d], lambda b, d: 20)
    assert chosen == (4, 32) and tried == [[4, 64, None], [2, 64, 30], [4, 32, 12]]
    assert choose_size([(2, 64)], lambda b, d: 30, lambda b, d: 20) == (None, [[2, 64, 30]])


def test_the_probe_step_out_of_memory_gives_none_and_frees_the_cache(monkeypatch):
    freed = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: freed.append(1))

    def out_of_memory(*args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(probe_mod, "_step", out_of_memory)
    net = build_model("unet", "resnet18", 3, 3, weights=None, encoder_depth=3, decoder_channels=[16, 8, 8])
    assert probe_step(net, build_loss("bce_dice"), (64, 3, 32, 32), torch.device("cpu"), measure=True) is None
    assert freed  # the failed step's blocks go back before the next probe


def test_a_probe_step_out_of_memory_stops_the_run_after_its_plan(synth_factory, tmp_path, tiny_config, monkeypatch,
                                                                 capsys):  # fmt: skip
    """A step that ran out of memory in the probe would at the run's first step: the run
    prints its plan and stops, naming the settings to lower."""
    mock_gpu(monkeypatch, "Tesla T4", free=15.7 * GB, total=15.8 * GB)
    monkeypatch.setattr(probe_mod, "probe_step", lambda *a, **k: None)
    cfg = tiny_config(synth_factory(), tmp_path / "run")
    fold = load_fold_data(cfg)
    net = build_model("unet", "resnet18", 3, 3, weights=None)
    plan = plan_feed(cfg, fold, net, build_loss("bce_dice"), CUDA, "fp16")
    assert (plan.gpu, plan.step_bytes) == ("Tesla T4", None)
    with pytest.raises(ValueError, match=r"batch_size=4.*img_size=64"):
        load_train_data(cfg, plan=plan, fold=fold)
    monkeypatch.setattr(session_mod, "plan_feed", lambda *a, **k: plan)
    with pytest.raises(ValueError, match="ran out of GPU memory"):
        train(cfg)
    assert "feed plan: workers path (data_path='auto'); the probe step ran out of memory" in capsys.readouterr().out


def test_resuming_with_cache_none_over_a_recorded_device_plan_is_refused(synth_factory, tmp_path, tiny_config):
    """``cache`` may change on a resume; the device path has nothing to copy without one."""
    cfg = tiny_config(synth_factory(), tmp_path / "run", cache="none")
    recorded = FeedPlan("device", "auto", True, True, reason="fits", recorded=True)
    with pytest.raises(ValueError, match=r"cache='none'.*cache='disk'"):
        load_train_data(cfg, plan=recorded)


def test_t4_3d_sizes_count_the_training_slices_beside_the_step(synth_factory, tmp_path, tiny_config, monkeypatch):
    """A T4 (15.7 GB free) and 6.3 GB of training slices: SegResNet's 2 x 32 step (11.8 GB)
    fits alone but not beside them, 2 x 16 (5.9 GB) does: the device path at 2 x 16 (once
    the step alone was counted: 2 x 32, and ``auto`` then took the workers). Where no size
    fits beside the slices, the sizes are chosen for the workers path, and the plan says so."""
    cfg = preset_config("kaggle", arch="segresnet3d", data_dir=str(synth_factory()), out_dir=str(tmp_path / "r"),
                        img_size=32, device="cpu", n_folds=2, weights=None)  # fmt: skip
    mock_gpu(monkeypatch, "Tesla T4", free=15.7 * GB, total=15.8 * GB)
    monkeypatch.setattr(probe_mod, "probe_step", lambda net, loss, shape, *a: int(11.8 * GB * shape[0] * shape[2] / 64))
    fold = load_fold_data(cfg)
    net = build_model("segresnet3d", in_channels=1, classes=3, **cfg.model_kwargs)
    monkeypatch.setattr(type(fold), "train_bytes", property(lambda self: int(6.3 * GB)))
    plan = plan_feed(cfg, fold, net, build_loss("bce_dice"), CUDA, "fp16")
    assert plan.config_sizes == {"batch_size": 2, "patch_depth": 16}
    assert (plan.path, plan.train_resident, plan.step_bytes) == ("device", True, int(11.8 * GB * 2 * 16 / 64))
    monkeypatch.setattr(type(fold), "train_bytes", property(lambda self: 12 * GB))
    plan = plan_feed(cfg, fold, net, build_loss("bce_dice"), CUDA, "fp16")
    assert plan.config_sizes == {"batch_size": 2, "patch_depth": 32} and plan.path == "workers"
    assert "3-D sizes chosen for the workers path: none fits beside the 12.00 GB of training slices" in plan.reason
    assert "workers path" in plan.summary().splitlines()[-1]


@pytest.mark.parametrize("card,free,want", [("Tesla T4", 15.7, (2, 32)), ("NVIDIA H100 80GB HBM3", 84.5, (4, 64))])
def test_3d_sizes_from_a_mocked_probe(synth_factory, tmp_path, tiny_config, monkeypatch, card, free, want):
    """A probe that says SegResNet takes 5.9 GB per 2 x 32 x 320 x 320 patches of voxels
    (memory_3d.py's 11.8 GB estimate for the step, its state included): a T4 gets the
    preset's 2 x 32, an H100 4 x 64; the choice is the plan's, applied to the run's config."""
    cfg = preset_config("kaggle", arch="segresnet3d", data_dir=str(synth_factory()), out_dir=str(tmp_path / "r"),
                        img_size=32, device="cpu", n_folds=2, weights=None)  # fmt: skip
    assert cfg.probe_size and (cfg.batch_size, cfg.patch_depth) == (2, 32)
    mock_gpu(monkeypatch, card, free=free * GB, total=free * GB)
    calls = []

    def probe(net, loss_fn, shape, device, amp, memory_format):
        calls.append(shape)
        return int(11.8 * GB * shape[0] * shape[2] / 64)

    monkeypatch.setattr(probe_mod, "probe_step", probe)
    fold = load_fold_data(cfg)
    net = build_model("segresnet3d", in_channels=1, classes=3, **cfg.model_kwargs)
    sizes, step = probe_size_3d(cfg, fold, net, build_loss("bce_dice"), CUDA, "fp16")
    assert (sizes["batch_size"], sizes["patch_depth"]) == want and sizes["fits"]
    assert [tuple(t[:2]) for t in sizes["tried"]] == list(SIZES_3D[: SIZES_3D.index(want) + 1])
    assert calls[-1] == (want[0], 1, want[1], 32, 32) and step == sizes["tried"][-1][2]
    plan = plan_feed(cfg, fold, net, build_loss("bce_dice"), CUDA, "fp16")
    assert plan.config_sizes == {"batch_size": want[0], "patch_depth": want[1]}
    assert len(calls) == 2 * len(sizes["tried"])  # the plan's step is the chosen size's probe, not another
    assert "from probe steps" in plan.summary()
    no_gpu, _ = probe_size_3d(cfg, fold, net, build_loss("bce_dice"), torch.device("cpu"), "no")
    assert no_gpu is None  # the preset's values stay


def test_a_batch_or_depth_given_turns_the_presets_probe_off():
    assert with_preset("kaggle", {"arch": "segresnet3d"})["probe_size"] is True
    assert with_preset("kaggle", {"arch": "segresnet3d", "batch_size": 1})["probe_size"] is False
    assert with_preset("gpu", {"arch": "unet3d", "patch_depth": 16, "probe_size": True})["probe_size"] is True
    assert "probe_size" not in with_preset("kaggle", {"arch": "unet"})


# --------------------------------------------------------------------------- runs
def test_a_run_records_its_plan_and_a_resume_reuses_it(synth_factory, tmp_path, tiny_config, monkeypatch, capsys):
    """A run started on the device path with its slices in pinned memory (as planned on a
    GPU) is interrupted; its resumption does not decide again (the memory it would see now
    differs): it takes the recorded plan and ends as the uninterrupted run did. A 3-D run
    whose sizes a probe chose keeps them in its config, and a second call finds them again."""
    planned = FeedPlan("device", "auto", False, False, reason="fits (as on a GPU)", gpu="Tesla T4",
                       free=15 * GB, total=16 * GB, cached=0, step_bytes=GB)  # fmt: skip
    monkeypatch.setattr(session_mod, "plan_feed", lambda *a, **k: planned)
    kw = {"epochs": 2, "max_steps_per_epoch": 2, "save_every_steps": 1, "amp": "no"}
    data = synth_factory()
    full = train(tiny_config(data, tmp_path / "full", **kw))
    real = session_mod.TrainingRun._on_step

    def interrupt(self, loss_sum, n_batches):
        real(self, loss_sum, n_batches)
        if self.state["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(session_mod.TrainingRun, "_on_step", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(data, tmp_path / "cut", **kw))
    assert load_state(tmp_path / "cut" / "last.pt")["feed_plan"] == planned.to_dict()
    monkeypatch.undo()
    monkeypatch.setattr(session_mod, "plan_feed", lambda *a, **k: pytest.fail("a resumed run planned again"))
    capsys.readouterr()
    resumed = train(tiny_config(data, tmp_path / "cut", **kw))
    assert "feed plan: device path (data_path='auto'): training slices in host memory" in capsys.readouterr().out
    assert full["train_loss"].tolist() == resumed["train_loss"].tolist()
    metrics = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert metrics["feed_plan"] == planned.to_dict() and metrics["device_name"] == "cpu"

    sized = FeedPlan("workers", "auto", sizes={"batch_size": 2, "patch_depth": 16, "tried": [[2, 16, GB]]})
    monkeypatch.setattr(session_mod, "plan_feed", lambda *a, **k: sized)
    cfg3 = tiny_config(data, tmp_path / "3d", arch="segresnet3d", img_size=32, patch_depth=8, epochs=1,
                       max_steps_per_epoch=1, amp="no", probe_size=True)  # fmt: skip
    train(cfg3)
    saved = json.loads((tmp_path / "3d" / "config.json").read_text())
    assert (saved["batch_size"], saved["patch_depth"]) == (2, 16)
    assert json.loads((tmp_path / "3d" / "best.json").read_text())["patch_depth"] == 16
    assert len(train(cfg3)) == 1  # finished: found again with the probed sizes, not refused
