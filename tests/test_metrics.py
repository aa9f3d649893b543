"""Metric: hand-worked Dice and Hausdorff values, empty rules, reductions, and the fast
Hausdorff against a brute-force reference on random and adversarial volumes."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import directed_hausdorff

import gi_utils.evaluation.device_hausdorff as device_hausdorff
import gi_utils.evaluation.hausdorff as hausdorff
from gi_utils.constants import CLASSES
from gi_utils.evaluation import (
    CompetitionMetric,
    batch_dice,
    competition_score,
    dice_per_slice,
    dice_score,
    hausdorff_3d,
    max_sq_distance,
    volumes_from_slices,
)

SQRT3 = math.sqrt(3.0)
#: The exact methods: the k-d tree, and torch on the CPU (and on a GPU when there is one).
EXACT = ["fast", "torch"] + (["torch-cuda"] if torch.cuda.is_available() else [])


def hd(a: np.ndarray, b: np.ndarray, method: str = "fast") -> float:
    """:func:`hausdorff_3d` by one of :data:`EXACT` (``"torch-cuda"``: torch on the GPU)."""
    if method == "torch-cuda":
        return hausdorff_3d(a, b, method="torch", device="cuda")
    return hausdorff_3d(a, b, method=method)


def assert_exact(a: np.ndarray, b: np.ndarray, expected: float, tol: float = 1e-9) -> None:
    """Every exact method gives ``expected`` (the brute force) for the pair."""
    for method in EXACT:
        assert_same(hd(a, b, method), expected, tol)


def brute_hausdorff(a: np.ndarray, b: np.ndarray) -> float:
    """The definition, written independently of the package: all foreground voxels."""
    shape = np.array(a.shape, dtype=np.float64)
    pa, pb = np.argwhere(a) / shape, np.argwhere(b) / shape
    if len(pa) == 0 or len(pb) == 0:
        return math.nan if len(pa) == len(pb) else 1.0
    return max(directed_hausdorff(pa, pb)[0], directed_hausdorff(pb, pa)[0]) / SQRT3


def assert_same(x: float, y: float, tol: float = 1e-9) -> None:
    assert (math.isnan(x) and math.isnan(y)) or abs(x - y) <= tol, (x, y)


# ----------------------------------------------------------------------------- Dice
def test_dice_four_pixels():
    pred = np.array([[1, 1], [0, 0]], dtype=bool)
    true = np.array([[1, 0], [1, 0]], dtype=bool)
    assert dice_score(pred, true) == 0.5  # 2 * 1 / (2 + 2)
    assert dice_score(pred, pred) == 1.0
    assert dice_score(pred, ~pred) == 0.0


@pytest.mark.parametrize(("empty", "expected"), [("skip", math.nan), ("zero", 0.0), ("one", 1.0)])
def test_dice_empty_rules(empty, expected):
    nothing = np.zeros((2, 2), dtype=bool)
    assert_same(dice_score(nothing, nothing, empty=empty), expected)
    assert dice_score(nothing, ~nothing, empty=empty) == 0.0  # exactly one empty: 0
    assert dice_score(~nothing, nothing, empty=empty) == 0.0


def test_dice_bad_arguments():
    with pytest.raises(ValueError, match="empty='none'"):
        dice_score(np.zeros(2), np.zeros(2), empty="none")
    with pytest.raises(ValueError, match="shape"):
        dice_score(np.zeros(2), np.zeros(3))


def test_dice_per_slice_hand_worked():
    pred = np.zeros((3, 2, 2, 2), dtype=bool)
    true = np.zeros_like(pred)
    pred[0, 0, :, 0] = True  # slice 0, class 0: 2 px vs 1 px overlapping -> 2/3
    true[0, 0, 0, 0] = True
    pred[1, :, :, 1] = True  # slice 1, class 1: pred only -> 0
    got = dice_per_slice(pred, true)
    expected = np.array([[2 / 3, math.nan], [math.nan, 0.0], [math.nan, math.nan]])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dice_per_slice(pred, true, "one"), np.nan_to_num(expected, nan=1.0))
    assert dice_per_slice(pred[..., 0], true[..., 0]).shape == (3, 1)


def test_batch_dice_hand_worked():
    pred = torch.zeros(2, 3, 2, 2)
    target = torch.zeros(2, 3, 2, 2)
    pred[0, 0, 0, :] = 1  # 2 px, target 1 px inside -> 2 * 1 / 3
    target[0, 0, 0, 0] = 1
    target[1, 2] = 1  # target only -> 0
    got = batch_dice(pred, target)
    assert got.shape == (2, 3) and got.dtype == torch.float32 and got.device == pred.device
    assert got[0, 0].item() == pytest.approx(2 / 3)
    assert got[1, 2].item() == 0.0
    assert torch.isnan(got[0, 1]) and torch.isnan(got[1, 0])
    assert torch.nanmean(got).item() == pytest.approx(1 / 3)
    assert batch_dice(pred.bool(), target.bool(), empty="one")[0, 1].item() == 1.0
    assert batch_dice(pred, target, empty="zero")[0, 1].item() == 0.0
    with pytest.raises(ValueError, match="pred"):
        batch_dice(pred, target[:, :2])


# ------------------------------------------------------------------------ Hausdorff
@pytest.mark.parametrize("method", EXACT)
def test_hausdorff_two_single_voxels(method):
    a, b = np.zeros((4, 10, 20), bool), np.zeros((4, 10, 20), bool)
    a[0, 0, 0] = True
    b[2, 5, 10] = True  # (2/4, 5/10, 10/20) away: sqrt(3 * 0.25) / sqrt(3) = 0.5
    assert hd(a, b, method) == pytest.approx(0.5, abs=1e-12)
    assert hausdorff_3d(a, b, method="reference") == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("method", EXACT)
def test_hausdorff_is_symmetric_max(method):
    a, b = np.zeros((4, 1, 1), bool), np.zeros((4, 1, 1), bool)
    a[0], b[0], b[3] = True, True, True  # h(a, b) = 0, h(b, a) = 3/4
    assert hd(a, b, method) == pytest.approx(0.75 / SQRT3, abs=1e-12)
    assert hd(b, a, method) == pytest.approx(0.75 / SQRT3, abs=1e-12)
    assert hd(a, a, method) == 0.0


@pytest.mark.parametrize("method", EXACT)
def test_hausdorff_empty_rules(method):
    nothing, something = np.zeros((2, 3, 4), bool), np.zeros((2, 3, 4), bool)
    something[1, 2, 3] = True
    assert math.isnan(hd(nothing, nothing, method))
    assert hd(nothing, something, method) == 1.0
    assert hd(something, nothing, method) == 1.0
    assert math.isnan(hausdorff_3d(nothing, nothing, method="reference"))
    assert hausdorff_3d(something, nothing, method="reference") == 1.0


@pytest.mark.parametrize("method", EXACT)
def test_hausdorff_blob_in_hollow_shell_interior_point_is_farthest(method):
    # A solid 14^3 cube against its hollow shell: the centre voxels (6 or 7 on each axis)
    # are 6 voxels from the nearest face, i.e. 6/14 in unit-cube coordinates.
    # 12^3 = 1728 interior voxels, so the block pruning is exercised.
    solid = np.ones((14, 14, 14), bool)
    shell = solid.copy()
    shell[1:-1, 1:-1, 1:-1] = False
    assert hd(solid, shell, method) == pytest.approx(6 / 14 / SQRT3, abs=1e-12)
    assert hd(shell, solid, method) == pytest.approx(6 / 14 / SQRT3, abs=1e-12)


def test_hausdorff_bad_arguments():
    with pytest.raises(ValueError, match="method='slow'"):
        hausdorff_3d(np.zeros((1, 1, 1)), np.zeros((1, 1, 1)), method="slow")
    with pytest.raises(ValueError, match="shape"):
        hausdorff_3d(np.zeros((1, 1, 1)), np.zeros((1, 1, 2)))
    with pytest.raises(ValueError, match="shape"):
        hausdorff_3d(np.zeros((1, 1)), np.zeros((1, 1)))


# ------------------------------------------------------- volumes for property tests
def _box(shape, rng) -> tuple[slice, ...]:
    lo = [int(rng.integers(0, n)) for n in shape]
    return tuple(
        slice(low, int(rng.integers(low + 1, n + 1))) for low, n in zip(lo, shape, strict=True)
    )


def _shell(vol: np.ndarray, box) -> None:
    vol[box] = True
    inner = tuple(slice(s.start + 1, s.stop - 1) for s in box)
    if all(s.stop > s.start for s in inner):
        vol[inner] = False


def make_volume(kind: str, shape, rng, other: np.ndarray | None = None) -> np.ndarray:
    """Random and adversarial masks; ``other`` lets one be derived from the first."""
    vol = np.zeros(shape, bool)
    d, h, w = shape
    if kind == "random":
        vol = rng.random(shape) < rng.uniform(0.02, 0.6)
    elif kind == "single":
        vol[tuple(int(rng.integers(0, n)) for n in shape)] = True
    elif kind == "shell":
        _shell(vol, _box(shape, rng))
    elif kind == "ring_blob":  # an in-plane ring over some slices around a central blob
        y, x = np.ogrid[:h, :w]
        r = np.hypot(y - rng.uniform(0, h), x - rng.uniform(0, w))
        r_in = rng.uniform(0.5, max(h, w) / 2)
        zs = _box((d,), rng)[0]
        vol[zs] = ((r >= r_in) & (r < r_in + 1.5)) | (r < r_in / 3)
    elif kind == "islands":
        for _ in range(int(rng.integers(1, 5))):
            vol[tuple(slice(s.start, min(s.stop, s.start + 2)) for s in _box(shape, rng))] = True
    elif kind == "shell_of_other" and other is not None:  # hollow version of other's box
        nz = np.argwhere(other)
        if len(nz):
            _shell(
                vol, tuple(slice(lo, hi + 1) for lo, hi in zip(nz.min(0), nz.max(0), strict=True))
            )
    elif kind == "shifted_other" and other is not None:
        vol = np.roll(other, tuple(int(rng.integers(-1, 2)) for _ in shape), axis=(0, 1, 2))
        vol[tuple(int(rng.integers(0, n)) for n in shape)] ^= True
    return vol  # "empty" (and derived kinds without other) stay empty


KINDS = ["random", "single", "shell", "ring_blob", "islands", "empty"]
DERIVED = [*KINDS, "shell_of_other", "shifted_other"]


@st.composite
def volume_pairs(draw, max_shape=(8, 12, 12)):
    shape = draw(st.tuples(*(st.integers(1, m) for m in max_shape)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    a = make_volume(draw(st.sampled_from(KINDS)), shape, rng)
    b = make_volume(draw(st.sampled_from(DERIVED)), shape, rng, other=a)
    return (a, b) if draw(st.booleans()) else (b, a)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(volume_pairs())
def test_fast_hausdorff_equals_brute_force(pair):
    a, b = pair
    assert_exact(a, b, brute_hausdorff(a, b))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(volume_pairs())
def test_fast_hausdorff_equals_brute_force_pruning_always_on(pair):
    a, b = pair  # block pruning on even for a handful of query voxels
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hausdorff, "_PRUNE_MIN", 2)
        mp.setattr(hausdorff, "_SAMPLE", 2)
        assert_same(hausdorff_3d(a, b), brute_hausdorff(a, b))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(volume_pairs(max_shape=(10, 20, 20)), st.integers(1, 40))
def test_torch_hausdorff_in_small_chunks_and_pruned(pair, chunk):
    """Chunks of a few query-by-target pairs (rows and columns split) and the dilation
    pruning on for a handful of query voxels give the squared distance of one unpruned
    step, and it is the brute force's."""
    a, b = (torch.from_numpy(x) for x in pair)
    assume(bool(a.any() and b.any()))
    whole = max_sq_distance(a, b)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(device_hausdorff, "_PRUNE_MIN", 2)
        mp.setattr(device_hausdorff, "_SAMPLE", 2)
        assert max_sq_distance(a, b, chunk=chunk) == whole
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(device_hausdorff, "_PRUNE_MIN", 10**9)
        sq, scale = max_sq_distance(a, b, chunk=chunk)
    assert (sq, scale) == whole
    assert_same(math.sqrt(sq) / scale / SQRT3, brute_hausdorff(*pair))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(volume_pairs(max_shape=(10, 20, 20)), st.integers(1, 2000))
def test_torch_hausdorff_by_the_distance_transform_equals_brute_force(pair, chunk):
    """The bounded route (an exact distance transform over the masks' box) forced for every
    pair, its passes in chunks of a few lines, gives the brute force's distance."""
    a, b = pair
    assume(bool(a.any() and b.any()))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(device_hausdorff, "_TRANSFORM_SHARE", 10**18)  # no brute-force budget at all
        sq, scale = max_sq_distance(torch.from_numpy(a), torch.from_numpy(b), chunk=chunk)
    assert_same(math.sqrt(sq) / scale / SQRT3, brute_hausdorff(a, b))


def test_noisy_predictions_take_the_bounded_route_with_the_same_value(monkeypatch):
    """An early epoch's prediction, noise everywhere: the brute force would pair thousands
    of voxels with thousands, the distance transform over the box is cheaper and gives
    the same distance; a prediction a few voxels off keeps the brute force."""
    rng = np.random.default_rng(0)
    true = np.zeros((12, 40, 40), bool)
    true[3:9, 10:30, 12:30] = True
    noisy = rng.random(true.shape) < 0.2
    noisy[3:9, 10:20, 12:30] = True  # half of the organ found
    calls: list[tuple[int, ...]] = []
    transform = device_hausdorff.distance_transform_sq

    def spy(target, *args, **kwargs):
        calls.append(tuple(target.shape))
        return transform(target, *args, **kwargs)

    monkeypatch.setattr(device_hausdorff, "distance_transform_sq", spy)
    assert_same(hausdorff_3d(noisy, true, method="torch"), brute_hausdorff(noisy, true))
    assert calls, "the noisy pair took the brute force"
    calls.clear()
    clean = true.copy()
    clean[5, 15, 20], clean[0, 1, 2] = False, True
    assert_same(hausdorff_3d(clean, true, method="torch"), brute_hausdorff(clean, true))
    assert calls == []


def test_torch_hausdorff_bad_arguments():
    with pytest.raises(ValueError, match=r"pred \(1, 1, 1\) and true \(1, 1, 2\)"):
        hausdorff_3d(np.ones((1, 1, 1)), np.ones((1, 1, 2)), method="torch")
    big = torch.ones((1, 1, 1), dtype=torch.bool).expand(2000, 1000, 1000)
    with pytest.raises(ValueError, match=r"volume \(2000, 1000, 1000\) is too large"):
        max_sq_distance(big, big)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.tuples(st.integers(2, 12), st.integers(8, 24), st.integers(8, 24)),
    st.floats(0.2, 0.7),
    st.floats(0.002, 0.05),
    st.integers(0, 2**32 - 1),
)
def test_fast_hausdorff_dense_against_sparse(shape, p_dense, p_sparse, seed):
    # Many query voxels at similar distances: the farthest often sits in a block whose
    # centre is nearer than the best lower bound, which the pruning must not drop.
    rng = np.random.default_rng(seed)
    a, b = rng.random(shape) < p_dense, rng.random(shape) < p_sparse
    assert_exact(a, b, brute_hausdorff(a, b))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(volume_pairs(max_shape=(16, 28, 28)))
def test_fast_hausdorff_equals_brute_force_with_pruning(pair):
    a, b = pair  # large enough that the block pruning (>= 512 query voxels) runs
    assert_exact(a, b, brute_hausdorff(a, b))
    assert_same(hausdorff_3d(a, b, method="reference"), brute_hausdorff(a, b))


def test_fast_hausdorff_anisotropic_80x310x360():
    rng = np.random.default_rng(7)
    shape = (80, 310, 360)
    z, y, x = np.ogrid[:80, :310, :360]
    r = np.hypot((y - 150) / 1.2, x - 200)
    true = (np.abs(z - 40) < 6) & (r >= 30) & (r < 33)  # a thick ring (hollow)
    true |= (np.abs(z - 20) < 3) & (np.hypot(y - 60, x - 60) < 8)  # a separate island
    pred = (np.abs(z - 41) < 5) & (r < 12)  # a blob in the ring's hole
    pred |= (np.abs(z - 40) < 6) & (r >= 31) & (r < 33)
    pred[70, 300, 10] = True  # a stray voxel far away
    for _ in range(200):
        pred[tuple(int(rng.integers(0, n)) for n in shape)] ^= True
    assert_exact(pred, true, brute_hausdorff(pred, true))
    pred[60:] = False  # no stray voxels left: a close prediction
    assert_exact(pred, true, brute_hausdorff(pred, true))


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_competition_score_fast_equals_reference(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    shapes = data.draw(
        st.lists(
            st.tuples(st.integers(1, 5), st.integers(1, 8), st.integers(1, 8)),
            min_size=1,
            max_size=3,
        )
    )
    pred = [
        np.stack([make_volume(data.draw(st.sampled_from(KINDS)), s, rng) for _ in CLASSES], -1)
        for s in shapes
    ]
    true = [
        np.stack(
            [make_volume(data.draw(st.sampled_from(DERIVED)), s, rng, p[..., c]) for c in range(3)],
            -1,
        )
        for s, p in zip(shapes, pred, strict=True)
    ]
    empty = data.draw(st.sampled_from(["skip", "zero", "one"]))
    mode = data.draw(st.sampled_from(["per_class", "union"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice" warnings
        fast = competition_score(pred, true, empty=empty, hausdorff_mode=mode)
        ref = competition_score(pred, true, empty=empty, hausdorff_mode=mode, method="reference")
        on_device = [competition_score(pred, true, empty=empty, hausdorff_mode=mode, method="torch",
                                       device=d) for d in ["cpu"] + ["cuda"] * ("torch-cuda" in EXACT)]  # fmt: skip
    for res in [fast, *on_device]:
        for key in ("score", "dice", "hausdorff"):
            assert_same(getattr(res, key), getattr(ref, key))
        np.testing.assert_allclose(
            res.table[["dice", "hausdorff"]], ref.table[["dice", "hausdorff"]], atol=1e-9
        )
    for name, d in fast.slice_dice.items():
        pred_v, true_v = pred[int(name.split("_")[1])], true[int(name.split("_")[1])]
        loop = [
            [dice_score(pred_v[z, ..., c], true_v[z, ..., c], empty) for c in range(3)]
            for z in range(len(d))
        ]
        np.testing.assert_allclose(d, np.array(loop), atol=1e-12)


# ------------------------------------------------------------------ competition score
def _hand_volumes():
    """One (2, 2, 2) case-day. large_bowel: the same voxel at slice 0, slice 1 empty;
    small_bowel: empty; stomach: pred (0,0,0) vs true (1,1,1)."""
    pred = np.zeros((2, 2, 2, 3), bool)
    true = np.zeros_like(pred)
    pred[0, 0, 1, 0] = true[0, 0, 1, 0] = True
    pred[0, 0, 0, 2] = True
    true[1, 1, 1, 2] = True
    return pred, true


def test_competition_score_hand_worked():
    pred, true = _hand_volumes()
    res = competition_score({"case1_day0": pred}, {"case1_day0": true})
    # Dice pairs: large [1, skip], small [skip, skip], stomach [0, 0] -> 1/3.
    # Hausdorff: large 0, small skip, stomach sqrt(3 * 0.25) / sqrt(3) = 0.5 -> 0.25.
    assert res.dice == pytest.approx(1 / 3)
    assert res.hausdorff == pytest.approx(0.25)
    assert res.score == pytest.approx(0.4 / 3 + 0.6 * 0.75)
    assert res.to_dict() == {"score": res.score, "dice": res.dice, "hausdorff": res.hausdorff}
    table = res.table.set_index("class")
    assert list(table.index) == list(CLASSES)
    assert table.loc["large_bowel", "dice"] == 1.0 and table.loc["large_bowel", "n_scored"] == 1
    assert math.isnan(table.loc["small_bowel", "dice"]) and math.isnan(
        table.loc["small_bowel", "hausdorff"]
    )
    assert table.loc["stomach", "hausdorff"] == pytest.approx(0.5)
    assert res.per_class.loc["stomach", "score"] == pytest.approx(0.6 * 0.5)
    assert res.per_case_day.loc["case1_day0", "dice"] == pytest.approx(1 / 3)
    np.testing.assert_array_equal(
        res.slice_dice["case1_day0"], [[1, np.nan, 0], [np.nan, np.nan, 0]]
    )


@pytest.mark.parametrize(("empty", "dice"), [("zero", 1 / 6), ("one", 4 / 6)])
def test_competition_score_empty_rules(empty, dice):
    pred, true = _hand_volumes()
    res = competition_score([pred], [true], empty=empty)
    assert res.dice == pytest.approx(dice)
    assert res.hausdorff == pytest.approx(0.25)  # the Dice rule does not touch Hausdorff


def test_competition_score_union_mode():
    pred, true = _hand_volumes()
    # union pred {(0,0,1), (0,0,0)}, union true {(0,0,1), (1,1,1)}: (1,1,1) is nearest to
    # (0,0,1) at (1/2, 1/2, 0) -> sqrt(0.5) / sqrt(3).
    res = competition_score([pred], [true], hausdorff_mode="union")
    assert res.hausdorff == pytest.approx(math.sqrt(0.5) / SQRT3)
    assert (res.table["hausdorff"] == res.hausdorff).all()
    assert res.dice == pytest.approx(1 / 3)


def test_competition_score_all_empty_is_nan_without_warnings():
    nothing = np.zeros((2, 3, 3, 3), bool)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = competition_score([nothing], [nothing])
    assert math.isnan(res.score) and math.isnan(res.dice) and math.isnan(res.hausdorff)


def test_competition_score_errors_name_the_case_day():
    vol = np.zeros((2, 4, 4, 3), bool)
    with pytest.raises(ValueError, match="case2_day1"):
        competition_score({"case1_day0": vol}, {"case1_day0": vol, "case2_day1": vol})
    with pytest.raises(ValueError, match="case9_day9"):
        competition_score({"case1_day0": vol, "case9_day9": vol}, {"case1_day0": vol})
    with pytest.raises(ValueError, match="'case1_day0'.*shape"):
        competition_score({"case1_day0": vol}, {"case1_day0": vol[:1]})
    with pytest.raises(ValueError, match="'volume_0'"):
        competition_score([vol[..., :2]], [vol[..., :2]])
    with pytest.raises(ValueError, match="2 volumes"):
        competition_score([vol, vol], [vol])
    with pytest.raises(TypeError, match="two lists or two mappings"):
        competition_score([vol], {"case1_day0": vol})
    with pytest.raises(ValueError, match="hausdorff_mode"):
        competition_score([vol], [vol], hausdorff_mode="mean")


def test_metric_class_only_stores_settings():
    pred, true = _hand_volumes()
    metric = CompetitionMetric(empty="one", hausdorff_mode="union")
    assert (
        metric([pred], [true]).score
        == competition_score([pred], [true], empty="one", hausdorff_mode="union").score
    )
    with pytest.raises(ValueError, match="empty"):
        CompetitionMetric(empty="maybe")


def test_volumes_from_slices_groups_in_slice_order():
    masks = torch.zeros(4, 3, 2, 2)
    masks[1, 2, 0, 0] = 0.9  # case2_day0, first slice, stomach
    masks[2, 0, 1, 1] = 0.4  # case1_day0, second slice: below the threshold
    vols = volumes_from_slices(masks, ["case1_day0", "case2_day0", "case1_day0", "case2_day0"])
    assert list(vols) == ["case1_day0", "case2_day0"]
    assert vols["case1_day0"].shape == (2, 2, 2, 3) and vols["case1_day0"].dtype == bool
    assert vols["case2_day0"][0, 0, 0, 2] and vols["case2_day0"].sum() == 1
    assert not vols["case1_day0"].any()
    res = competition_score(vols, vols)
    assert res.score == 1.0
    with pytest.raises(ValueError, match="case_days"):
        volumes_from_slices(masks, ["case1_day0"])
