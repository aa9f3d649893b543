"""Out-of-fold sets, their coverage, the post-processing search and blends, on hand-made
volumes whose best settings are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gi_utils.data import pack_masks
from gi_utils.evaluation import (
    Blend,
    OOFCollection,
    OOFSet,
    OOFWriter,
    competition_score,
    cross_validated_search,
    score_oof,
    search_postprocess,
    weight_grid,
)
from gi_utils.inference import PostProcess

S, D = 16, 6


def write_oof(folder, volumes: dict, fold: int = 0, train: list[str] = (), gate: dict | None = None) -> OOFSet:
    """An OOF set from ``{case_day: (probs float (D, S, S, 3), truth bool (D, S, S, 3))}``."""
    ids, spans, start = [], {}, 0
    for cd, (p, _) in volumes.items():
        ids += [f"{cd}_slice_{k + 1:04d}" for k in range(len(p))]
        spans[cd] = np.arange(start, start + len(p))
        start += len(p)
    meta = pd.DataFrame({"id": ids})
    w = OOFWriter(folder, meta, spans, S, {"fold": fold, "train_case_days": list(train)})
    for cd, (p, t) in volumes.items():
        q = np.round(np.moveaxis(p, -1, 1) * 255).astype(np.uint8)
        w.write(spans[cd], q, pack_masks(t), None if gate is None else gate[cd])
    w.close()
    return OOFSet(folder)


def blob_volume(seed: int, inside: float = 0.45, noise: float = 0.35):
    """Truth: a square on slices 1-4 of class 0; probabilities ``inside`` there, and a
    ``noise`` speck on slice 5 (empty in truth)."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((D, S, S, 3), bool)
    y, x = rng.integers(2, 8, 2)
    truth[1:5, y : y + 5, x : x + 5, 0] = True
    probs = np.where(truth, inside, 0.02).astype(np.float32)
    probs[5, 12:14, 12:14, 0] = noise
    return probs, truth


@pytest.fixture
def oof(tmp_path):
    return write_oof(tmp_path / "oof", {f"case{k}_day0": blob_volume(k) for k in range(4)})


def test_search_finds_the_known_best_threshold(oof):
    res = search_postprocess(oof.source, oof.case_days, PostProcess(size_ref=S))
    assert res.post.thresholds[0] == 0.4  # 0.5 misses the organ, 0.3 takes the speck too
    assert res.score > res.default_score
    assert res.trace["large_bowel"]["thresholds"][0.4] == pytest.approx(res.score)


def test_search_score_is_the_competition_score(oof):
    res = search_postprocess(oof.source, oof.case_days, PostProcess(size_ref=S))
    direct = score_oof(oof, res.post)
    assert res.score == pytest.approx(direct.score, abs=1e-12)
    pred = {v.case_day: res.post.apply(v.probs) for v in oof.volumes()}
    true = {v.case_day: v.truth for v in oof.volumes()}
    assert direct.score == pytest.approx(competition_score(pred, true).score, abs=1e-12)


def test_gate_and_component_size_remove_the_speck(tmp_path):
    # the speck is above every threshold tried: only its size or its slice maximum tell it apart
    vols = {f"case{k}_day0": blob_volume(k, inside=0.95, noise=0.85) for k in range(4)}
    oof = write_oof(tmp_path / "o", vols)
    res = search_postprocess(oof.source, oof.case_days, PostProcess(size_ref=S))
    pred = res.post.apply(oof.volume("case0_day0").probs)
    assert not pred[5].any() and pred[1:5, ..., 0].any()
    assert res.post.min_size[0] > 4 or res.post.gate_max[0] > 0.6
    assert res.score == pytest.approx(1.0)


def test_collection_covers_each_case_day_once_and_refuses_leaks(tmp_path):
    a = write_oof(tmp_path / "f0", {"case1_day0": blob_volume(1)}, fold=0, train=["case2_day0"])
    b = write_oof(tmp_path / "f1", {"case2_day0": blob_volume(2)}, fold=1, train=["case1_day0"])
    both = OOFCollection([a, b], "unet")
    assert both.case_days == ["case1_day0", "case2_day0"] and both.folds == {0: ["case1_day0"], 1: ["case2_day0"]}
    assert both.missing(["case1_day0", "case3_day0"]) == ["case3_day0"]
    with pytest.raises(ValueError, match=r"case-day 'case1_day0' is in two out-of-fold sets"):
        OOFCollection([a, a])
    leak = write_oof(tmp_path / "leak", {"case3_day0": blob_volume(3)}, train=["case3_day0"])
    with pytest.raises(ValueError, match=r"fold leak .*case3_day0"):
        OOFCollection([leak])


def test_cross_validated_search_scores_held_out_folds(tmp_path):
    sets = [write_oof(tmp_path / f"f{k}", {f"case{2 * k + j}_day0": blob_volume(2 * k + j) for j in range(2)},
                      fold=k) for k in range(2)]  # fmt: skip
    col = OOFCollection(sets)
    out = cross_validated_search(col.source, col.folds, PostProcess(size_ref=S))
    assert set(out) == {"fold_0", "fold_1", "tuned_held_out", "default_held_out"}
    assert out["tuned_held_out"] > out["default_held_out"]


def test_blend_is_the_weighted_mean(tmp_path):
    p1, t = blob_volume(0, inside=0.8)
    p2 = np.zeros_like(p1)
    a = OOFCollection([write_oof(tmp_path / "a", {"case0_day0": (p1, t)})], "a")
    b = OOFCollection([write_oof(tmp_path / "b", {"case0_day0": (p2, t)})], "b")
    (_, probs, truth, _), = Blend([a, b], [3, 1]).source()
    np.testing.assert_allclose(probs / 255, 0.75 * p1, atol=1 / 255 + 1e-6)
    assert np.array_equal(truth, t)
    assert weight_grid(2, 0.25) == [(0.25, 0.75), (0.5, 0.5), (0.75, 0.25)]
    assert weight_grid(1) == [(1.0,)]
