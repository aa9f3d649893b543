"""Property-based fuzzing of the parsers that read untrusted text: the RLE decoder, the id
parser and the slice file-name parser. Thousands of generated strings; only the documented
error types may come out, never another exception, a hang, or a silently wrong mask."""

from __future__ import annotations

import re

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gi_utils.data import (
    DataError,
    RLEError,
    decode_rle,
    encode_rle,
    parse_id,
    parse_slice_filename,
)

FUZZ = settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOKENS = st.one_of(
    st.integers(-5, 400).map(str),
    st.sampled_from(["", "x", "1.5", "+3", "-0", "1e3", "nan", "0x10", "٣", "9" * 30, "\t", " "]),
)
RLE_LIKE = st.lists(TOKENS, max_size=12).map(" ".join)


def oracle(rle: str, shape: tuple[int, int]) -> np.ndarray | None:
    """Independent reference: the mask the string means, or None if it is malformed."""
    tokens = rle.split()
    if len(tokens) % 2:
        return None
    try:
        values = [int(t) for t in tokens]
    except ValueError:
        return None
    n = shape[0] * shape[1]
    flat = np.zeros(n, bool)
    prev_end = 0
    for start, length in zip(values[0::2], values[1::2]):
        # runs must start at or after the previous run's end (touching is allowed)
        if start < 1 or length < 1 or start - 1 < prev_end or start - 1 + length > n:
            return None
        flat[start - 1 : start - 1 + length] = True
        prev_end = start - 1 + length
    return flat.reshape(shape)


@FUZZ
@given(RLE_LIKE, st.tuples(st.integers(1, 20), st.integers(1, 20)))
def test_rle_decoder_never_crashes_or_lies(rle, shape):
    expected = oracle(rle, shape)
    try:
        got = decode_rle(rle, shape)
    except RLEError:
        assert expected is None, f"valid RLE {rle!r} rejected"
        return
    assert expected is not None, f"malformed RLE {rle!r} accepted"
    np.testing.assert_array_equal(got, expected)


@FUZZ
@given(st.text(max_size=40))
def test_rle_decoder_on_arbitrary_text(text):
    try:
        mask = decode_rle(text, (8, 9))
    except RLEError:
        return
    assert mask.shape == (8, 9) and mask.dtype == bool
    assert decode_rle(encode_rle(mask), (8, 9)).tolist() == mask.tolist()


ID_RE = re.compile(r"case(\d+)_day(\d+)_slice_(\d+)")


@FUZZ
@given(st.one_of(st.text(max_size=40), st.from_regex(r"case\d{1,3}_day\d{1,2}_slice_\d{4}", fullmatch=True)))
def test_id_parser(text):
    try:
        case, day, s = parse_id(text)
    except DataError:
        assert ID_RE.fullmatch(text) is None or not text.isascii()
        return
    m = ID_RE.fullmatch(text)
    assert m is not None and (case, day, s) == tuple(int(g) for g in m.groups())


NAME_RE = re.compile(r"slice_(\d+)_(\d+)_(\d+)_(\d+(?:\.\d+)?)_(\d+(?:\.\d+)?)\.png")


@FUZZ
@given(
    st.one_of(
        st.text(max_size=50),
        st.from_regex(r"slice_\d{4}_\d{3}_\d{3}_1\.(50|63)_1\.(50|63)\.png", fullmatch=True),
    )
)
def test_filename_parser(text):
    try:
        info = parse_slice_filename(text)
    except DataError:
        return
    m = NAME_RE.fullmatch(text.rsplit("/", 1)[-1])
    assert m is not None
    assert (info["slice"], info["width"], info["height"]) == tuple(int(g) for g in m.groups()[:3])
