"""RLE: hand-worked examples, malformed input, and round-trip properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gi_utils.data import RLEError, decode_rle, encode_rle, parse_rle


def test_hand_worked_3x4():
    # 3 rows x 4 columns, row-major numbering 1..12:
    #  1  2  3  4
    #  5  6  7  8
    #  9 10 11 12
    mask = decode_rle("2 2 7 3", (3, 4))
    expected = np.array(
        [[0, 1, 1, 0],
         [0, 0, 1, 1],
         [1, 0, 0, 0]], dtype=bool)  # fmt: skip
    np.testing.assert_array_equal(mask, expected)
    assert encode_rle(expected) == "2 2 7 3"


def test_first_and_last_pixel():
    first = decode_rle("1 1", (5, 7))
    assert first[0, 0] and first.sum() == 1
    last = decode_rle("35 1", (5, 7))
    assert last[4, 6] and last.sum() == 1
    assert encode_rle(last) == "35 1"


def test_whole_image():
    mask = decode_rle("1 12", (3, 4))
    assert mask.all()
    assert encode_rle(np.ones((3, 4), bool)) == "1 12"


def test_non_square_row_major_differs_from_column_major():
    # (H, W) = (310, 360): pixel number W + 1 = 361 is row 1, column 0 in row-major order;
    # column-major numbering would put it at row 51, column 1.
    mask = decode_rle("361 1", (310, 360))
    assert mask[1, 0] and mask.sum() == 1
    assert not mask[51, 1]
    # a horizontal run of 3 pixels in row 2 starting at column 5
    mask = decode_rle(f"{2 * 360 + 5 + 1} 3", (310, 360))
    assert mask[2, 5:8].all() and mask.sum() == 3


@pytest.mark.parametrize("empty", ["", "   ", None, float("nan")])
def test_empty_gives_empty_mask(empty):
    mask = decode_rle(empty, (4, 5))
    assert mask.shape == (4, 5) and not mask.any()


def test_encode_empty_is_empty_string():
    assert encode_rle(np.zeros((3, 3), bool)) == ""


@pytest.mark.parametrize(
    ("rle", "fragment"),
    [
        ("1 2 3", "odd number of tokens"),
        ("1 2 x 3", "'x' is not an integer"),
        ("1.5 2", "'1.5' is not an integer"),
        ("0 2", "starts are 1-indexed"),
        ("-3 2", "starts are 1-indexed"),
        ("3 0", "lengths must be >= 1"),
        ("3 -1", "lengths must be >= 1"),
        ("5 1 2 1", "not increasing"),
        ("5 1 5 1", "not increasing"),
        ("1 5 3 2", "overlap"),
        ("10 5", "past the end of the image"),
        ("1 99999999999999999999999", "too large"),
        ("1 9223372036854775000", "too large"),
    ],
)
def test_malformed_rle_raises_value_error(rle, fragment):
    with pytest.raises(ValueError, match=fragment):
        decode_rle(rle, (3, 4))


def test_rle_error_is_value_error():
    assert issubclass(RLEError, ValueError)


def test_non_string_rejected():
    with pytest.raises(RLEError, match="must be a string"):
        parse_rle(12)


def test_touching_runs_decode():
    # adjacent runs are legal, only overlaps are not
    mask = decode_rle("1 2 3 2", (2, 2))
    assert mask.all()


def reference_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """The loop decoder of public notebooks, used as an oracle."""
    s = rle.split()
    starts = np.asarray(s[0::2], dtype=int) - 1
    lengths = np.asarray(s[1::2], dtype=int)
    img = np.zeros(shape[0] * shape[1], dtype=bool)
    for lo, n in zip(starts, lengths):
        img[lo : lo + n] = True
    return img.reshape(shape)


@settings(max_examples=200, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 20), st.integers(1, 20))))
def test_round_trip(mask):
    rle = encode_rle(mask)
    np.testing.assert_array_equal(decode_rle(rle, mask.shape), mask)
    if rle:
        np.testing.assert_array_equal(reference_decode(rle, mask.shape), mask)
        starts, lengths = parse_rle(rle, mask.size)
        assert (np.diff(starts) > lengths[:-1]).all()  # canonical: runs never touch


@settings(max_examples=100, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 12), st.integers(1, 12))))
def test_encode_is_row_major(mask):
    rle = encode_rle(mask)
    flat_idx = np.flatnonzero(mask.ravel(order="C")) + 1
    decoded_idx = np.flatnonzero(decode_rle(rle, mask.shape).ravel(order="C")) + 1
    np.testing.assert_array_equal(flat_idx, decoded_idx)
