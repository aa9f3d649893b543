"""Cross-validation, out-of-fold coverage, the choice of the submission and the scored
hold-out, on tiny synthetic data."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

import gi_utils.pipeline.cv as cv_mod
from gi_utils.constants import CLASSES, SUBMISSION_COLUMNS
from gi_utils.data import build_metadata, encode_rle, make_holdout, read_solution, solution_path
from gi_utils.evaluation import (
    OOFCollection,
    OOFSet,
    case_of,
    holdout_scores,
    holdout_table,
    score_submission,
)
from gi_utils.inference import make_submission
from gi_utils.pipeline import cross_validate, parse_folds, submission_plan
from gi_utils.report import BEST_CONFIG_NAME, find_runs, select, write_best_config

pytestmark = pytest.mark.slow
TINY = {"img_size": 64, "epochs": 1, "batch_size": 4, "max_steps_per_epoch": 3, "n_folds": 2,
        "progress": False, "device": "cpu", "cache": "memory"}  # fmt: skip


@pytest.fixture(scope="module")
def data(synth_factory):
    return synth_factory(n_cases=4, n_test_cases=1, seed=5, slices_per_scan=12)


@pytest.fixture(scope="module")
def cv_runs(data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("cv") / "runs"
    summary = cross_validate("unet", "all", "smoke", TINY, runs_dir=runs, data_dir=data)
    cross_validate("fpn", "0", "smoke", TINY, runs_dir=runs, data_dir=data)
    return runs, summary


def test_parse_folds():
    assert parse_folds("all", 3) == [0, 1, 2] and parse_folds("2,0", 3) == [0, 2] and parse_folds(1, 3) == [1]
    with pytest.raises(ValueError, match=r"not in 0..2"):
        parse_folds("3", 3)
    with pytest.raises(ValueError, match="comma-separated"):
        parse_folds("first", 3)


def test_oof_of_all_folds_covers_every_case_day_once(cv_runs, data):
    runs, summary = cv_runs
    assert [f["fold"] for f in summary["folds"]] == [0, 1] and summary["std_score"] is not None
    sets = [OOFSet(runs / f"unet_resnet18_64px_fold{k}" / "oof") for k in (0, 1)]
    col = OOFCollection(sets, "unet")  # raises on a case-day twice or a fold leak
    case_days = build_metadata(data)["case_day"].unique().tolist()
    assert sorted(col.case_days) == sorted(case_days) and col.missing(case_days) == []
    for oof in sets:
        assert set(oof.case_days).isdisjoint(oof.train_case_days)
    assert json.loads((runs / "cv" / "unet_resnet18_64px.json").read_text())["mean_score"] == summary["mean_score"]


def test_an_interrupted_cv_continues_with_the_missing_folds(data, tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    real = cv_mod.launch
    calls = []

    def stop_after_first(cfg, n=1):
        calls.append(cfg.fold)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the session died during fold 1
        return real(cfg, n)

    monkeypatch.setattr(cv_mod, "launch", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        cross_validate("unet", "all", "smoke", TINY, runs_dir=runs, data_dir=data)
    assert (runs / "unet_resnet18_64px_fold0" / "metrics.json").is_file()
    assert not (runs / "unet_resnet18_64px_fold1" / "metrics.json").exists()
    monkeypatch.setattr(cv_mod, "launch", real)
    capsys.readouterr()
    summary = cross_validate("unet", "all", "smoke", TINY, runs_dir=runs, data_dir=data)
    out = capsys.readouterr().out
    assert "run already finished" in out  # fold 0 is not trained again
    assert [f["fold"] for f in summary["folds"]] == [0, 1]


def test_selection_writes_a_best_configuration_that_04_uses(cv_runs):
    runs, _ = cv_runs
    table, cands = select(find_runs(runs))
    assert set(table["Model"]) == {"unet_resnet18_64px", "fpn_resnet18_64px", "fpn_resnet18_64px + unet_resnet18_64px"}
    unet = table.set_index("Model").loc["unet_resnet18_64px"]
    assert unet["Folds"] == 2 and unet["Held out on"] == "2 folds" and unet["Held-out tuned"]  # tuned on one, scored on the other
    for cand, (_, row) in zip(cands, table.iterrows(), strict=True):
        assert cand.searched.score >= cand.searched.default_score - 1e-12  # the search never ends below where it started
        one_case = len({case_of(cd) for cd in cand.case_days}) < 2  # one fold of one case: nothing to hold out
        assert bool(row["Held-out tuned"]) != one_case and (cand.fit is None) == one_case
        assert cand.post == cand.default or (cand.keep_tuned and cand.post_gain.low > 0)
    write_best_config(runs / BEST_CONFIG_NAME, cands[0])
    plan = submission_plan(runs)
    assert plan.source.startswith("best configuration") and plan.post == cands[0].post  # searched, or the default
    assert [str(p) for p in plan.model_paths] == [str(p) for p in cands[0].model_paths]
    explicit = submission_plan(runs, runs="fpn_resnet18_64px_fold0", thresholds=0.3)
    assert explicit.source == "the models' own settings" and explicit.post.thresholds == (0.3,) * 3


def _perfect(data) -> pd.DataFrame:
    truth = read_solution(solution_path(data))
    meta = build_metadata(data, "test", labels=False)
    return pd.DataFrame([(sid, c, truth.at[sid, c]) for sid in meta["id"] for c in CLASSES],
                        columns=list(SUBMISSION_COLUMNS))  # fmt: skip


def test_holdout_scores_a_perfect_and_an_empty_submission(data):
    meta = build_metadata(data, "test", labels=False)
    assert solution_path(data).is_file() and solution_path(data).parent == data.parent  # outside the data
    perfect = _perfect(data)
    assert score_submission(perfect, solution_path(data), meta).score == pytest.approx(1.0)
    empty = perfect.assign(predicted="")
    assert score_submission(empty, solution_path(data), meta).score == pytest.approx(0.0)
    for mode in ("union", "mlebench"):
        assert score_submission(perfect, solution_path(data), meta, hausdorff_mode=mode).score == pytest.approx(1.0)


def test_holdout_made_from_training_cases(data, tmp_path, cv_runs):
    out = make_holdout(data, tmp_path / "held", [build_metadata(data)["case"].iloc[0]])
    train, test = build_metadata(out), build_metadata(out, "test", labels=False)
    assert set(train["case"]).isdisjoint(set(test["case"]))
    truth = read_solution(solution_path(out))
    assert set(truth.index) == set(test["id"])  # the truth of exactly the held-out slices
    runs, _ = cv_runs
    sub = make_submission([runs / "fpn_resnet18_64px_fold0" / "best.safetensors"], out, "test", None,
                          progress=False, device="cpu")  # fmt: skip
    assert len(sub) == 3 * len(test)
    assert 0.0 <= score_submission(sub, solution_path(out), test).score <= 1.0
    with pytest.raises(Exception, match="exists already"):
        make_holdout(data, tmp_path / "held", 1)


@pytest.mark.parametrize("score", [lambda d: holdout_scores([], {}, d), lambda d: holdout_table([], d)],
                         ids=["holdout_scores", "holdout_table"])  # fmt: skip
def test_holdout_without_its_truth_is_an_error_naming_where_it_looked(score, tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"no hold-out truth at {solution_path(tmp_path / 'none')}")):
        score(tmp_path / "none")


def test_mlebench_rule_sets_oversized_predictions_to_distance_one():
    from gi_utils.evaluation import competition_score

    true = np.zeros((4, 20, 20, 3), bool)
    true[1, 5:7, 5:7, 0] = True  # 4 pixels
    pred = true.copy()
    pred[1, 0:10, 0:5, 0] = True  # 50 pixels > 10 x 4, overlapping the truth
    per_class = competition_score([pred], [true]).hausdorff
    mle = competition_score([pred], [true], hausdorff_mode="mlebench").hausdorff
    assert per_class < 1.0 and mle == 1.0
    assert encode_rle(true[1, ..., 0])  # the fixture has a mask


def test_final_model_on_all_cases_has_no_validation_score(data, tmp_path):
    runs = tmp_path / "runs"
    summary = cross_validate("unet", "0", "smoke", TINY, runs_dir=runs, data_dir=data, final=True)
    final = runs / summary["final_run"]
    metrics = json.loads((final / "metrics.json").read_text())
    assert summary["final_run"] == "unet_resnet18_64px_foldall" and metrics["validated"] is False
    assert metrics["best"] == {} and (final / "best.safetensors").is_file() and not (final / "oof").exists()
    split = json.loads((final / "split.json").read_text())
    assert split["val_case_days"] == [] and len(split["train_case_days"]) == build_metadata(data)["case_day"].nunique()
    runs_found = find_runs(runs)
    from gi_utils.report import results_table

    table = results_table(runs_found).set_index("Model")
    assert table.loc["unet_resnet18_64px_foldall", "Fold"] == "all (not validated)"
    assert np.isnan(table.loc["unet_resnet18_64px_foldall", "Score"])
    table, cands = select(runs_found)
    assert set(table["Model"]) == {"unet_resnet18_64px"}  # the fold-all model is not ranked on OOF ...
    # ... but it is what the configuration submits, with the settings searched on its folds
    assert [r.name for r in cands[0].finals] == ["unet_resnet18_64px_foldall"]
    write_best_config(tmp_path / "out" / BEST_CONFIG_NAME, cands[0])
    plan = submission_plan(runs, out_root=tmp_path / "out")
    assert [p.parent.name for p in plan.model_paths] == ["unet_resnet18_64px_foldall"]
    assert plan.post == cands[0].post and plan.weights == [1.0]


def test_runs_and_best_configuration_move_together_or_apart(cv_runs, tmp_path):
    """Records hold no absolute path: the runs attached elsewhere (a read-only Kaggle
    input) and 03's best configuration written to another folder still give the plan."""
    import shutil

    runs, _ = cv_runs
    table, cands = select(find_runs(runs))
    moved = shutil.copytree(runs, tmp_path / "input" / "my-runs" / "runs")
    record = write_best_config(tmp_path / "out03" / BEST_CONFIG_NAME, cands[0])
    assert not any(p.startswith("/") for p in json.loads(record.read_text())["model_paths"])
    shutil.copytree(tmp_path / "out03", tmp_path / "input" / "my-choice")
    shutil.rmtree(tmp_path / "out03")  # the models are not beside it any more: found by run name
    plan = submission_plan([moved], best_config=str(tmp_path / "input" / "my-choice" / BEST_CONFIG_NAME))
    assert [p.parent for p in plan.model_paths] == [moved / r for r in cands[0].run_names]
    assert plan.post == cands[0].post
