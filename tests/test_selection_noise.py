"""The selection's guards against noise, on hand-made out-of-fold sets: searched settings
kept only when they beat the default out of sample, a blend chosen only when its gain
over its best member is beyond the bootstrap noise, and the intervals themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gi_utils.data import pack_masks
from gi_utils.evaluation import (
    OOFSet,
    OOFWriter,
    ScoreTerms,
    case_halves,
    cross_fit,
    paired_difference,
    score_interval,
    score_oof,
    score_terms,
    score_with,
    terms_of_result,
)
from gi_utils.inference import PostProcess
from gi_utils.report import (
    BEST_CONFIG_NAME,
    Run,
    choice_markdown,
    explain_choice,
    select,
    write_best_config,
)

S, D = 16, 8


def fake_run(root: Path, arch: str, volumes: dict, fold: int = 0, gate: bool = False) -> Run:
    """A finished run of ``arch`` with one fold whose OOF set holds ``{case_day: (probs
    float (D, S, S, 3), truth bool (D, S, S, 3))}`` (trained with threshold 0.5, min_size 0)."""
    name = f"{arch}_resnet18_{S}px{'_gate' if gate else ''}_fold{fold}"
    ids, spans, start = [], {}, 0
    for cd, (p, _) in volumes.items():
        ids += [f"{cd}_slice_{k + 1:04d}" for k in range(len(p))]
        spans[cd] = np.arange(start, start + len(p))
        start += len(p)
    w = OOFWriter(root / name / "oof", pd.DataFrame({"id": ids}), spans, S, {"fold": fold, "train_case_days": []})
    for cd, (p, t) in volumes.items():
        w.write(spans[cd], np.round(np.moveaxis(p, -1, 1) * 255).astype(np.uint8), pack_masks(t))
    w.close()
    config = {"arch": arch, "encoder": "resnet18", "img_size": S, "fold": fold, "threshold": 0.5, "min_size": 0,
              "gate": gate}  # fmt: skip
    return Run(name, root / name, config, {"best": {"val_score": 0.5}}, pd.DataFrame(), {})


def noise_volume(rng: np.random.Generator):
    """An organ every threshold finds (0.9) on slices 1-4, then on slices 5-7 small squares
    of probability U(0.3, 0.7), true or not at random (36% true: at that rate no threshold
    is better than 0.5 on average). A threshold tuned on a few such volumes fits their draw."""
    truth = np.zeros((D, S, S, 3), bool)
    probs = np.full((D, S, S, 3), 0.02, np.float32)
    truth[1:5, 4:9, 4:9, 0] = True
    probs[1:5, 4:9, 4:9, 0] = 0.9
    for z in range(5, D):
        for _ in range(2):
            y, x = rng.integers(0, S - 3, 2)
            h = rng.integers(1, 4)
            truth[z, y : y + h, x : x + h, 0] |= rng.random() < 0.36
            probs[z, y : y + h, x : x + h, 0] = rng.uniform(0.3, 0.7)
    return probs, truth


def organ_volume(speck_slice: int | None):
    """The organ (0.9) on slices 1-4 of class 0 and, on ``speck_slice`` (0 or 5: empty in
    truth, next to the organ), a false organ larger than the true one and as sure, so no
    threshold, size, gate or tail removes it: only averaging with a model that does not see
    it does."""
    truth = np.zeros((D, S, S, 3), bool)
    probs = np.full((D, S, S, 3), 0.02, np.float32)
    truth[1:5, 4:9, 4:9, 0] = True
    probs[1:5, 4:9, 4:9, 0] = 0.9
    if speck_slice is not None:
        probs[speck_slice, 9:15, 9:15, 0] = 0.9
    return probs, truth


def test_tuning_on_noise_wins_in_sample_but_the_default_is_kept(tmp_path):
    vols = {f"case{k}_day0": noise_volume(np.random.default_rng(7000 + k)) for k in range(1, 13)}
    table, cands = select([fake_run(tmp_path, "unet", vols)])
    cand = cands[0]
    assert cand.searched.score > cand.searched.default_score + 0.01  # the search wins in-sample ...
    assert cand.fit.by == "case halves" and cand.fit.tuned.score() < cand.fit.default.score()  # ... and loses out of it
    assert not cand.keep_tuned and cand.post == cand.default  # so the default is submitted
    row = table.iloc[0]
    assert row["Post"] == "default" and row["Held out on"] == "case halves"
    assert row["Held-out tuned"].startswith(f"{cand.fit.tuned.score():.3f} [")
    record = json.loads(write_best_config(tmp_path / BEST_CONFIG_NAME, cand).read_text())
    assert record["post"] == record["default_post"] == cand.default.to_dict() and record["post_kept"] == "default"
    assert record["reasons"] == explain_choice(cands) and any("default settings" in r for r in record["reasons"])
    # it was noise: on 150 fresh volumes of the same kind the searched settings do no better
    fresh = {f"case{k}_day0": noise_volume(np.random.default_rng(10**6 + k)) for k in range(150)}
    oof = OOFSet(fake_run(tmp_path / "fresh", "unet", fresh).oof_path)
    assert score_with(oof.source, oof.case_days, cand.searched.post) <= score_with(oof.source, oof.case_days, cand.default)


def test_a_useful_search_is_kept(tmp_path):
    """The rule can keep the search: thresholds 0.5 miss an organ predicted at 0.45."""
    vols = {}
    for k in range(1, 13):
        probs, truth = organ_volume(None)
        probs[1:5, 4:9, 4:9, 0] = 0.45
        vols[f"case{k}_day0"] = probs, truth
    _, cands = select([fake_run(tmp_path, "unet", vols)])
    assert cands[0].keep_tuned and cands[0].post.thresholds[0] < 0.5 and cands[0].post_gain.low > 0


def _two_models(tmp_path, unet_specks: list[int | None], fpn_specks: list[int | None]):
    unet = {f"case{k}_day0": organ_volume(s) for k, s in enumerate(unet_specks, 1)}
    fpn = {f"case{k}_day0": organ_volume(s) for k, s in enumerate(fpn_specks, 1)}
    return select([fake_run(tmp_path, "unet", unet), fake_run(tmp_path, "fpn", fpn)])


def test_a_blend_whose_gain_is_inside_the_noise_is_not_chosen(tmp_path):
    # each model has one false organ on a different case-day of 12; the blend has none, so
    # it ranks first, but its gain over either member rests on one case-day
    table, cands = _two_models(tmp_path, [5] + [None] * 11, [None] * 11 + [0])
    blend = next(c for c in cands if len(c.members) == 2)
    assert blend.honest.score() > max(c.honest.score() for c in cands if c is not blend)  # ranked first ...
    assert len(cands[0].members) == 1  # ... but a single model is submitted
    gain = paired_difference(blend.honest, cands[0].honest)
    assert gain.value > 0 and gain.low <= 0
    assert table.iloc[0]["Model"] == cands[0].name and table.set_index("Model").loc[blend.name, "Δ vs chosen"][0] == "+"
    reasons = explain_choice(cands)
    assert any("within the noise" in r and blend.name in r for r in reasons)
    md = choice_markdown(table, cands)
    assert md.startswith("| Model |") and f"**Chosen: {cands[0].name}**" in md and all(r in md for r in reasons)


def test_a_blend_clearly_better_than_its_members_is_chosen(tmp_path):
    # a false organ on every case-day in each model, on different slices: the blend has none
    table, cands = _two_models(tmp_path, [5] * 12, [0] * 12)
    assert len(cands[0].members) == 2 and cands[0].weights == (0.5, 0.5)
    best_single = next(c for c in cands if len(c.members) == 1)
    assert paired_difference(cands[0].honest, best_single.honest).low > 0
    assert any("beyond the noise" in r for r in explain_choice(cands))
    assert all(table[col].str.contains(r"\[").all() for col in ("OOF default", "Held-out default", "Held-out tuned"))


def test_bootstrap_terms_and_intervals(tmp_path):
    vols = {f"case{k}_day{d}": noise_volume(np.random.default_rng(k * 10 + d)) for k in (1, 2, 10) for d in (0, 3)}
    oof = OOFSet(fake_run(tmp_path, "unet", vols).oof_path)
    post = PostProcess(size_ref=S)
    terms = score_terms(oof.source, oof.case_days, post)
    assert terms.score() == pytest.approx(score_with(oof.source, oof.case_days, post), abs=1e-12)
    a, b = score_interval(terms), score_interval(terms)
    assert a == b and a.low <= a.value <= a.high and a.high - a.low > 0  # fixed seed, a real spread
    same = paired_difference(terms, terms)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)  # the same case-days drawn on both sides
    halves = case_halves(oof.case_days)  # by case: both days of a case on one side
    assert sorted(map(sorted, halves.values())) == [
        ["case10_day0", "case10_day3", "case1_day0", "case1_day3"], ["case2_day0", "case2_day3"]]  # fmt: skip
    fit = cross_fit(oof.source, oof.case_days, post)
    assert fit.by == "case halves" and set(fit.tuned.case_days) == set(oof.case_days)
    assert fit.default.score() == pytest.approx(terms.score(), abs=1e-12)  # the default is never tuned
    with pytest.raises(ValueError, match="1 case"):
        case_halves(["case7_day1", "case7_day2"])
    with pytest.raises(KeyError, match="case99_day0"):
        terms.subset(["case99_day0"])
    assert isinstance(ScoreTerms.concat([terms.subset(halves[0]), terms.subset(halves[1])]), ScoreTerms)
    from_metric = terms_of_result(score_oof(oof, post))  # the metric's own per case-day table
    assert from_metric.score() == pytest.approx(terms.score(), abs=1e-12)
    np.testing.assert_allclose(from_metric.dice, terms.dice, atol=1e-9)


def test_models_on_different_case_days_are_ranked_without_a_paired_test(tmp_path):
    unet = {f"case{k}_day0": organ_volume(5 if k == 1 else None) for k in range(1, 7)}
    fpn = {f"case{k}_day0": organ_volume(None) for k in range(7, 13)}
    table, cands = select([fake_run(tmp_path, "unet", unet), fake_run(tmp_path, "fpn", fpn)])
    assert [c.name for c in cands] == ["fpn_resnet18_16px", "unet_resnet18_16px"]  # no blend: nothing in common
    assert "share no case-day" in explain_choice(cands)[0] and (table["Common"] == "").all()


@pytest.mark.parametrize("errors", [3, 12])
def test_a_gated_model_is_chosen_only_beyond_the_noise(tmp_path, errors):
    """The gated UNet is right everywhere; the UNet without a gate has a false organ on
    ``errors`` of 12 case-days: on 3 the gate's gain is within the noise, on 12 beyond it."""
    plain = {f"case{k}_day0": organ_volume(5 if k <= errors else None) for k in range(1, 13)}
    gated = {f"case{k}_day0": organ_volume(None) for k in range(1, 13)}
    _, cands = select([fake_run(tmp_path, "unet", plain), fake_run(tmp_path, "unet", gated, gate=True)])
    gated_cand = next(c for c in cands if c.name == "unet_resnet18_16px_gate")
    assert gated_cand.honest.score() > next(c for c in cands if c.name == "unet_resnet18_16px").honest.score()
    assert cands[0].name == ("unet_resnet18_16px" if errors == 3 else "unet_resnet18_16px_gate")
