"""Canonical JSON must be exactly RFC 8785: the fast path is checked against the reference package."""

from __future__ import annotations

import hashlib
import json
import math
import random

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from elspeth_core.errors import CanonicalizationError
from elspeth_core.hashing import _fast_path_ok, canonical_json, plain_json, stable_hash

# Every code point, lone surrogates included, with the troublesome ones made frequent.
_chars = st.one_of(
    st.characters(blacklist_categories=()),
    st.sampled_from(
        [
            "\u2028",
            "\u2029",
            "\x7f",
            "\x00",
            "\x1f",
            '"',
            "\\",
            "\ud7ff",
            "\ud800",
            "\udfff",
            "\ue000",
            "\uffff",
            "\U00010000",
            "\U0010ffff",
            "é",
            "€",
        ]
    ),
)
_text = st.text(_chars, max_size=8)
_floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            0.0,
            -0.0,
            1e-4,
            9.99e-5,
            1e15,
            999999999999999.9,
            1e16,
            1e21,
            5e-324,
            0.1,
            1 / 3,
            123.45,
            -2.5,
            1e-7,
        ]
    ),
)
_ints = st.one_of(
    st.integers(),
    st.sampled_from([2**53 - 1, 2**53, -(2**53 - 1), -(2**53), 0, -1]),
)
_scalars = st.one_of(st.none(), st.booleans(), _ints, _floats, _text)
_json = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(_text, children, max_size=4),
    ),
    max_leaves=12,
)


def _reference(value: object) -> bytes | None:
    try:
        return rfc8785.dumps(value)
    except Exception:  # noqa: BLE001 - the reference refuses: we must refuse too
        return None


@settings(max_examples=3000, deadline=None)
@given(st.one_of(_json, st.dictionaries(_text, _scalars, max_size=6)))
def test_canonical_json_equals_rfc8785(value: object) -> None:
    expected = _reference(value)
    if expected is None:
        with pytest.raises(CanonicalizationError):
            canonical_json(value)
    else:
        assert canonical_json(value) == expected


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(_text, _scalars, max_size=6))
def test_stable_hash_is_sha256_of_rfc8785(value: dict[str, object]) -> None:
    expected = _reference(value)
    if expected is not None:
        assert stable_hash(value) == hashlib.sha256(expected).hexdigest()


@pytest.mark.parametrize(
    "value",
    [
        {"id": 1, "amount": 123.45, "state": "ok", "note": "row 1 é"},
        {"id": "1", "items": [{"sku": "A", "qty": 2, "price": 12.5}], "flag": True, "x": None},
        [1, "two", [3.5, {"b": 1, "a": 2}]],
    ],
)
def test_typical_rows_take_the_fast_path(value: object) -> None:
    assert _fast_path_ok(value)
    assert canonical_json(value) == rfc8785.dumps(value)


@pytest.mark.parametrize(
    "value",
    [
        {"integral": 1.0},
        {"tiny": 1e-7},
        {"huge": 1e21},
        {"big_int": 2**53},
        {1: "non-str key"},
        {"tuple": (1, 2)},
        "a bare string",
    ],
)
def test_values_json_would_print_differently_avoid_the_fast_path(value: object) -> None:
    assert not _fast_path_ok(value)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_refused_with_their_path(bad: float) -> None:
    with pytest.raises(CanonicalizationError, match=r"\$\.row\.v"):
        canonical_json({"row": {"v": bad}})


def test_fast_path_floats_print_as_ecmascript_numbers() -> None:
    """Floats of every magnitude the fast path accepts, in rows, against the reference."""
    rng = random.Random(8785)
    for _ in range(20_000):
        x = rng.choice((1, -1)) * 10 ** rng.uniform(-4, 15) * rng.random()
        row = {"amount": x, "id": rng.randrange(-(2**53) + 1, 2**53), "é": "€"}
        if _fast_path_ok(row):
            assert canonical_json(row) == rfc8785.dumps(row), x


@settings(max_examples=2000, deadline=None)
@given(st.one_of(_json, st.dictionaries(_text, _scalars, max_size=6)))
def test_plain_json_is_the_json_modules_bytes_or_none(value: object) -> None:
    fast = plain_json(value)
    if fast is not None:
        expected = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        assert fast == expected.encode("utf-8")
        assert json.loads(fast) == value


def test_plain_json_keeps_key_order_and_handles_raw_rows() -> None:
    row = {"z": "1", "a": "two", "m": "é\u2028\x00"}
    assert plain_json(row) == json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode()
    assert plain_json({"x": 1.0}) is None  # integral float: json's 1.0, not orjson's decision
    assert plain_json({"s": "\ud800"}) is None  # a lone surrogate
