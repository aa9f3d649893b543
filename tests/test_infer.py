"""Inference: 2.5D input, TTA, post-processing, ensembles and the submission file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from gi_utils.constants import CLASSES, SUBMISSION_COLUMNS
from gi_utils.data import (
    SliceDataset,
    VolumeCache,
    build_metadata,
    decode_rle,
    preprocess_volume,
    read_volume,
)
from gi_utils.inference import (
    PostProcess,
    blend,
    load_models,
    make_submission,
    normalised_weights,
    predict_probs,
    predict_volume,
    remove_small_components,
    stack_slices,
    strip_tails,
    validate_submission,
)
from gi_utils.models import build_model, model_config, save_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def synth_dir(synth_factory):
    return synth_factory(n_cases=2, seed=1, slices_per_scan=6, size=(80, 72))


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory):
    """Two random UNets saved as a training run would: 64 px and 96 px inputs."""
    out = tmp_path_factory.mktemp("models")
    paths = []
    for seed, size, offsets in ((0, 64, [-2, 0, 2]), (1, 96, [-1, 0, 1])):
        torch.manual_seed(seed)
        cfg = model_config("unet", "resnet18", 3, 3, img_size=size, slice_offsets=offsets)
        paths.append(save_model(out / f"m{seed}.safetensors", build_model("unet"), cfg))
    return paths


# --------------------------------------------------------------------------- pieces
def test_stack_slices_by_hand():
    vol = np.arange(4, dtype=np.float32).reshape(4, 1, 1)
    got = stack_slices(vol, (-2, 0, 2))[:, :, 0, 0]
    assert got.tolist() == [[0, 0, 2], [0, 1, 3], [0, 2, 3], [1, 3, 3]]


def test_model_input_matches_the_training_dataset(synth_dir):
    meta = build_metadata(synth_dir, "train")
    ds = SliceDataset(meta, 64, (-2, 0, 2), cache=VolumeCache(meta, 64, progress=False))
    for case_day, rows in meta.groupby("case_day", sort=False):
        images = stack_slices(preprocess_volume(read_volume(rows), 64), (-2, 0, 2))
        first = int(np.flatnonzero(ds.meta["case_day"].to_numpy() == case_day)[0])
        for d in range(len(rows)):
            assert np.array_equal(images[d], ds[first + d][0].numpy()), (case_day, d)


def test_remove_small_components_by_hand():
    mask = np.zeros((5, 6), bool)
    mask[0, 0] = True  # 1 pixel
    mask[2:4, 2:4] = True  # 4 pixels
    mask[4, 4] = True  # touches the square diagonally: 8-connected, so 5 pixels
    assert remove_small_components(mask, 2).sum() == 5
    assert not remove_small_components(mask, 6).any()
    assert np.array_equal(remove_small_components(mask, 0), mask)


def test_postprocess_thresholds_per_class_and_min_size():
    probs = np.zeros((1, 4, 4, 3), np.float32)
    probs[0, 0, 0] = [0.6, 0.6, 0.6]
    probs[0, 2:4, 2:4, 0] = 0.9
    out = PostProcess(thresholds=(0.5, 0.7, 0.5)).apply(probs)
    assert out[0, 0, 0].tolist() == [True, False, True]
    out = PostProcess(thresholds=0.5, min_size=(2, 0, 0)).apply(probs)
    assert out[..., 0].sum() == 4 and out[0, 0, 0, 2]
    q = np.round(probs * 255).astype(np.uint8)  # out-of-fold files: uint8 x 255, same masks
    assert np.array_equal(PostProcess(thresholds=0.5, min_size=(2, 0, 0)).apply(q), out)
    with pytest.raises(ValueError, match="thresholds needs 1 or 3"):
        PostProcess(thresholds=(0.5, 0.5))


def test_slice_gate_zeroes_weak_slices_and_uses_the_head():
    probs = np.zeros((3, 4, 4, 3), np.float32)
    probs[:, 1, 1, 0] = [0.55, 0.8, 0.95]  # slice maxima of class 0
    out = PostProcess(gate_max=(0.7, 0, 0)).apply(probs)
    assert out[:, 1, 1, 0].tolist() == [False, True, True]
    head = np.array([[0.9, 0, 0], [0.2, 0, 0], [0.9, 0, 0]], np.float32)
    out = PostProcess(gate_head=(0.5, 0, 0)).apply(probs, head)
    assert out[:, 1, 1, 0].tolist() == [True, False, True]
    assert PostProcess(gate_head=(0.5, 0, 0)).apply(probs)[:, 1, 1, 0].all()  # no head: off


def test_tail_removes_short_end_runs_only():
    present = np.array([1, 0, 1, 1, 1, 1, 0, 1, 1, 0, 0], bool)
    assert strip_tails(present, 1).astype(int).tolist() == [0, 0, 1, 1, 1, 1, 0, 1, 1, 0, 0]
    assert strip_tails(present, 2).astype(int).tolist() == [0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    lonely = np.array([0, 1, 0, 0], bool)  # the only run is never removed
    assert strip_tails(lonely, 3).tolist() == lonely.tolist()
    probs = np.zeros((len(present), 3, 3, 3), np.float32)
    probs[present, 1, 1, 2] = 0.9
    out = PostProcess(tail=(0, 0, 2)).apply(probs)
    assert out[:, 1, 1, 2].astype(int).tolist() == [0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0]


class _Ramp(torch.nn.Module):
    """Logits increase to the right: not flip-invariant, so TTA changes the result."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        ramp = torch.linspace(-2, 2, x.shape[-1]).expand(x.shape[0], 3, *x.shape[-2:])
        return ramp * self.w


def test_flip_tta_averages_the_flipped_prediction():
    x = np.zeros((2, 3, 4, 4), np.float32)
    plain, gate = predict_probs(_Ramp(), x, device="cpu")
    tta, _ = predict_probs(_Ramp(), x, tta=True, device="cpu")
    assert gate is None  # no classifier head
    assert plain[0, 0, 0, 0] < 0.5 < plain[0, 0, 0, -1]
    np.testing.assert_allclose(tta, 0.5, atol=1e-6)  # sigmoid(r) and sigmoid(-r) average to 1/2
    with pytest.raises(ValueError, match="unknown TTA"):
        predict_probs(_Ramp(), x, tta=["rot90"])


def test_ensemble_is_the_mean_of_its_members(synth_dir, model_paths):
    models = load_models(model_paths, "cpu")
    rows = build_metadata(synth_dir, "test", labels=False)
    vol = read_volume(rows[rows["case_day"] == rows["case_day"].iloc[0]])
    both, _ = predict_volume(models, vol, batch_size=4)
    one, two = (predict_volume([m], vol, batch_size=4)[0] for m in models)
    assert both.shape == (*vol.shape, 3) and both.dtype == np.float32
    np.testing.assert_allclose(both, (one + two) / 2, atol=1e-6)
    weighted, _ = predict_volume(models, vol, batch_size=4, weights=[3, 1])
    np.testing.assert_allclose(weighted, 0.75 * one + 0.25 * two, atol=1e-6)
    with pytest.raises(ValueError, match="non-negative"):
        predict_volume(models, vol, weights=[1, -1])


def test_blend_weighs_probabilities_and_only_the_gates_there_are():
    rng = np.random.default_rng(0)
    probs = [rng.random((2, 3, 4, 4)).astype(np.float32) for _ in range(3)]
    gates = [rng.random((2, 3)).astype(np.float32), None, rng.random((2, 3)).astype(np.float32)]
    mean, gate = blend(list(zip(probs, gates, strict=True)), [2, 1, 1])
    assert mean.dtype == np.float32 and gate.dtype == np.float32
    np.testing.assert_allclose(mean, 0.5 * probs[0] + 0.25 * probs[1] + 0.25 * probs[2], atol=1e-6)
    np.testing.assert_allclose(gate, (2 * gates[0] + gates[2]) / 3, atol=1e-6)
    # summed in parts (members left out as None) in the same order: the same sum, bit for bit
    parts = [blend(((p if k in part else None, None) for k, p in enumerate(probs)), [2, 1, 1], n=3)[0]
             for part in ({0, 1}, {2})]  # fmt: skip
    assert np.array_equal(parts[0] + parts[1], mean)
    assert blend([(probs[0], None)])[1] is None and blend([(None, None)] * 2)[0] is None
    for bad in ([1, -1, 1], [0, 0, 0], [1, 1], [[1, 1, 1]]):
        with pytest.raises(ValueError, match=r"must be 3 non-negative values"):
            blend(list(zip(probs, gates, strict=True)), bad)
        with pytest.raises(ValueError, match=r"must be 3 non-negative values"):
            normalised_weights(bad, 3)
    assert normalised_weights([2, 1, 1], 3).tolist() == [0.5, 0.25, 0.25]
    assert normalised_weights(None, 4).tolist() == [0.25] * 4


# --------------------------------------------------------------------------- submission
def test_submission_round_trip(synth_dir, model_paths, tmp_path):
    out = tmp_path / "submission.csv"
    post = PostProcess((0.5,) * 3, (3,) * 3)  # sizes in each scan's own pixels
    df = make_submission(model_paths, synth_dir, "test", out, post=post, tta=True, progress=False,
                         device="cpu")  # fmt: skip
    meta = build_metadata(synth_dir, "test", labels=False)
    assert list(df.columns) == list(SUBMISSION_COLUMNS) and len(df) == 3 * len(meta)
    assert df["class"].tolist()[:3] == list(CLASSES) and df["id"].iloc[0] == meta["id"].iloc[0]
    assert out.read_text().splitlines()[0] == "id,class,predicted"
    assert not [p for p in tmp_path.iterdir() if p.name != "submission.csv"]  # no temp files
    back = pd.read_csv(out, keep_default_na=False)
    validate_submission(back, meta)
    # the CSV decodes to the post-processed ensemble prediction
    models = load_models(model_paths, "cpu")
    first = meta[meta["case_day"] == meta["case_day"].iloc[0]]
    probs, _ = predict_volume(models, read_volume(first), tta=True)
    masks = post.apply(probs)
    h, w = int(first["height"].iloc[0]), int(first["width"].iloc[0])
    for d, sid in enumerate(first["id"]):
        for c, name in enumerate(CLASSES):
            rle = back.loc[(back["id"] == sid) & (back["class"] == name), "predicted"].item()
            assert np.array_equal(decode_rle(rle, (h, w)), masks[d, ..., c]), (sid, name)


def test_empty_test_split_gives_an_empty_submission(synth_dir, model_paths, tmp_path):
    with pytest.warns(UserWarning, match="empty submission"):
        df = make_submission(
            model_paths, synth_dir, "no_such_split", tmp_path / "s.csv", progress=False
        )
    assert df.empty and (tmp_path / "s.csv").read_text() == "id,class,predicted\n"


@pytest.fixture
def good_submission():
    meta = pd.DataFrame(
        {
            "id": ["case1_day0_slice_0001", "case1_day0_slice_0002"],
            "height": [2, 2],
            "width": [3, 3],
        }
    )
    df = pd.DataFrame(
        [(i, c, "") for i in meta["id"] for c in CLASSES], columns=list(SUBMISSION_COLUMNS)
    )
    df.loc[0, "predicted"] = "1 2 5 2"
    return df, meta


def test_validate_accepts_a_good_submission(good_submission):
    validate_submission(*good_submission)
    df, meta = good_submission
    df.loc[1, "predicted"] = np.nan  # pandas reads empty cells as NaN
    validate_submission(df, meta)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda df: df.rename(columns={"predicted": "segmentation"}), r"columns.*segmentation"),
        (
            lambda df: df.drop(index=4),
            r"expected 6; first missing.*'case1_day0_slice_0002', 'small_bowel'",
        ),
        (
            lambda df: pd.concat([df, df.iloc[[2]]]),
            r"row 6 \(id 'case1_day0_slice_0001', class 'stomach'\): duplicate",
        ),
        (
            lambda df: df.assign(**{"class": ["large_bowel", "small_bowl", *df["class"][2:]]}),
            r"row 1 .*unknown class",
        ),
        (
            lambda df: df.assign(id=[*df["id"][:5], "case9_day0_slice_0001"]),
            r"row 5 .*not a slice of the test set",
        ),
        (lambda df: df.assign(predicted=["5 3", *df["predicted"][1:]]), r"row 0 .*past the end"),
        (lambda df: df.assign(predicted=["1 3 2 2", *df["predicted"][1:]]), r"row 0 .*overlap"),
        (
            lambda df: df.assign(predicted=["4 1 1 1", *df["predicted"][1:]]),
            r"row 0 .*not increasing",
        ),
        (lambda df: df.assign(predicted=["0 2", *df["predicted"][1:]]), r"row 0 .*1-indexed"),
        (lambda df: df.assign(predicted=["1 0", *df["predicted"][1:]]), r"row 0 .*length 0"),
        (lambda df: df.assign(predicted=["1 2 3", *df["predicted"][1:]]), r"row 0 .*odd number"),
    ],
)
def test_validate_names_the_bad_row(good_submission, edit, message):
    df, meta = good_submission
    with pytest.raises(ValueError, match=message):
        validate_submission(edit(df).reset_index(drop=True), meta)
