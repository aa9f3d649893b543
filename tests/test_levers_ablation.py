"""The ablation of the levers (``python -m gi_utils.pipeline ablation``, ``make ablation``)
at smoke size: every asked lever gets its runs, a score against its reference with a
paired bootstrap interval, the table says the data are synthetic and why a lever is not
measured. The full one (the demo's scale) is run by hand: docs/levers.md."""

from __future__ import annotations

import json
import math

import pytest

from gi_utils.evaluation.bootstrap import score_interval
from gi_utils.pipeline.__main__ import main
from gi_utils.pipeline.ablation import LEVERS, parse_levers, score_run

SMOKE = ["-p", "img_size", "64", "-p", "epochs", "2", "-p", "max_steps_per_epoch", "2", "-p", "batch_size", "4",
         "-p", "n_folds", "2", "-p", "progress", "false", "-p", "device", "cpu"]  # fmt: skip


def test_lever_names():
    assert parse_levers("all") == [n for n in LEVERS if n != "3d_crops"]
    assert parse_levers("swa, lovasz") == ["swa", "lovasz"]
    with pytest.raises(ValueError, match="'swaa'.*choose 'all' or some of swa"):
        parse_levers("swaa")


@pytest.mark.slow
def test_the_ablation_command_at_smoke_size(synth_factory, tmp_path, capsys):
    data = synth_factory(n_cases=4, seed=1, slices_per_scan=16)
    argv = ["ablation", "--preset", "smoke", "--levers", "swa,lovasz,body_crop,classification_first,tail_filter",
            "--runs-dir", str(tmp_path), "--data-dir", str(data), *SMOKE]  # fmt: skip
    assert main(argv) == 0
    out = tmp_path / "ablation"
    record = json.loads((out / "ablation.json").read_text())
    assert record["data"].startswith("synthetic data") and record["fold"] == 0
    rows = {r["lever"]: r for r in record["rows"]}
    assert list(rows) == ["swa", "lovasz", "body_crop", "classification_first", "tail_filter"]
    for name in ("swa", "lovasz", "body_crop", "classification_first"):
        r = rows[name]
        assert r["low"] <= r["difference"] <= r["high"], r
        assert math.isclose(r["difference"], r["score"] - r["reference_score"], abs_tol=1e-9)
    assert rows["classification_first"]["reference"] == "gate" and rows["swa"]["reference"] == "baseline"
    assert "not measured" in rows["tail_filter"]["note"] and "score" not in rows["tail_filter"]
    assert {r["note"] for r in record["rows"][:4]} <= {"a gain", "a loss", "within the noise"}
    table = (out / "ablation.md").read_text()
    assert "synthetic data" in table and "| tail_filter | 1st |" in table
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [  # the runs share one cache and folds file
        "baseline", "body_crop", "cache", "classification_first", "folds", "gate", "lovasz", "pretrain", "swa"]
    assert (out / "pretrain" / "classification_first_first" / "best.safetensors").is_file()
    # SWA is the average itself, not the run's best model (its last epoch where that scored higher)
    swa = score_interval(score_run(out / "swa", data, model_file="swa.safetensors")).value
    assert rows["swa"]["score"] == swa
    capsys.readouterr()
    assert main(argv) == 0  # a second call trains nothing: every run has finished
    assert "=== ablation" in capsys.readouterr().out and json.loads((out / "ablation.json").read_text()) == record
