"""The session's time limit: the platform defaults, the budget's arithmetic, and runs it
stops (in the middle of an epoch, before a validation) that continue to the numbers of an
uninterrupted run. The clock is the counter of ``$GI_CLOCK_TICK_S`` (a minute per reading),
so where a run stops does not depend on this machine's speed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from gi_utils.checkpoint import load_state
from gi_utils.training import (
    CLOCK_TICK_ENV,
    TimeBudget,
    TrainConfig,
    platform_time_limit,
    resolve_config,
    train,
)
from gi_utils.training.cli import parse_args

torch.set_num_threads(1)


@pytest.mark.parametrize(("platform", "run_type", "hours"), [
    ("kaggle", "Batch", 11.5), ("kaggle", "Interactive", 8.5), ("kaggle", "", 11.5), ("colab", "", 11.5),
    ("local", "", 0.0),
])  # fmt: skip
def test_platform_limits_less_the_margin(monkeypatch, platform, run_type, hours):
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", run_type)
    assert platform_time_limit(platform) == hours


def test_time_limit_is_a_validated_field_resolved_where_the_run_starts(tmp_path):
    assert TrainConfig().time_limit is None and parse_args(["--time-limit", "2.5"]).time_limit == 2.5
    assert parse_args(["--time-limit", "none"]).time_limit is None
    with pytest.raises(ValueError, match=r"time_limit must be hours >= 0"):
        TrainConfig(time_limit=-1.0)
    cfg = resolve_config(TrainConfig(data_dir=str(tmp_path)))
    assert cfg.time_limit == 0.0  # here (not Kaggle, not Colab): none
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_budget_by_hand():
    t = [0.0]
    b = TimeBudget(1.0, clock=lambda: t[0])
    for now in (100, 110, 130):  # steps of 10 and 20 s after the first
        t[0] = now
        assert not b.step_done()
    assert b.step_s == 15 and b.steps_measured == 2
    b.timed("save", lambda: t.__setitem__(0, 190))  # a save of 60 s
    assert b.save_s == 60
    t[0] = 3500  # 100 s left: one step (15) and a save (60) still fit
    assert b.allows(40) and not b.allows(41)  # 3500 + 40 + the save's 60 = 3600
    t[0] = 3530  # 70 s left: the step ending at 3530 is measured from its own start (not after the save)
    assert b.step_done() and b.step_s == 15
    assert math.isinf(TimeBudget(0).left()) and not TimeBudget(0).limited


@pytest.fixture(scope="module")
def runs(synth_factory, tmp_path_factory, tiny_config):
    """An uninterrupted run and the settings of the runs below (2 epochs of 4 steps)."""
    data = synth_factory(n_cases=4, seed=2, slices_per_scan=16)
    root = tmp_path_factory.mktemp("limit")

    def config(name: str, **kw) -> TrainConfig:
        return tiny_config(data, root / name, epochs=2, batch_size=2, max_steps_per_epoch=4, **kw)

    return config, train(config("full", time_limit=0.0))


@pytest.mark.parametrize(("minutes", "stop", "rows"), [
    (16, (1, 3), 1),  # in the second epoch, after its third step
    (6, (0, 4), 0),  # the first epoch trained, its validation (estimated at 8 steps) would cross the limit
])  # fmt: skip
def test_a_run_stopped_at_the_limit_continues_to_the_uninterrupted_result(runs, monkeypatch, capsys, minutes,
                                                                          stop, rows):  # fmt: skip
    config, full = runs
    cut = config(f"cut{minutes}", time_limit=minutes / 60)
    monkeypatch.setenv(CLOCK_TICK_ENV, "60")  # every reading of the clock: a minute later
    history = train(cut)
    printed = capsys.readouterr().out
    assert "time limit: the session's" in printed and "plan of" in printed
    state = load_state(f"{cut.out_dir}/last.pt")
    assert (state["epoch"], state["n_batches"], state["finished"]) == (*stop, False)
    assert len(history) == rows
    metrics = f"{cut.out_dir}/metrics.json"
    if rows:  # what was trained is on record, marked as stopped
        record = json.load(open(metrics))
        assert record["time_limit_stop"] and record["epochs_run"] == rows and record["plan"]["limit_hours"] == minutes / 60
    else:
        assert not Path(metrics).exists()  # nothing finished: last.pt alone
    monkeypatch.delenv(CLOCK_TICK_ENV)
    resumed = train(cut.replace(time_limit=0.0))  # the next session, no limit
    pd.testing.assert_frame_equal(full.drop(columns="epoch_time_s"), resumed.drop(columns="epoch_time_s"),
                                  check_exact=True)  # fmt: skip
    wa, wb = load_file(f"{config('full').out_dir}/best.safetensors"), load_file(f"{cut.out_dir}/best.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not json.load(open(metrics))["time_limit_stop"]
