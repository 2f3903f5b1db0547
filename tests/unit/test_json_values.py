"""Payloads and results are JSON values: what is accepted, how it is encoded, and what a
handler or `Job.result` gets back."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from kyu_trio import InvalidJobError
from kyu_trio._validation import decode_payload, encode_payload, encode_result

ROUND_TRIPS: list[Any] = [
    None,
    True,
    False,
    0,
    -(2**63),
    10**30,
    1.5,
    -0.25,
    "",
    "plain text, not JSON",
    '{"already": "json text"}',
    "ünïcödé ✓ 😀",
    "a\x00b\nc\td\u2028",
    [],
    {},
    [1, "two", 3.0, None, True, [{"deep": [[[]]]}]],
    {"nested": {"list": [1, {"x": None}], "s": "t"}, "n": -1},
]


@pytest.mark.parametrize("value", ROUND_TRIPS)
def test_every_json_value_round_trips(value: Any) -> None:
    text = encode_payload(value, 10_000)
    assert json.loads(text) == value
    assert decode_payload(text) == value
    assert type(decode_payload(text)) is type(value)
    if "\\u0000" not in text:  # a result may not hold NUL (jsonb): tested below
        assert json.loads(encode_result(value, 10_000)) == value


def test_the_encoding_is_compact_and_keeps_unicode() -> None:
    assert encode_payload({"a": [1, 2]}, 100) == '{"a":[1,2]}'
    assert encode_payload("é", 100) == '"é"'
    # The limit counts UTF-8 bytes of the encoding: '"é"' is 4 bytes.
    encode_payload("é", 4)
    with pytest.raises(InvalidJobError, match="6 bytes of JSON"):
        encode_payload("éé", 4)


@pytest.mark.parametrize(
    "bad",
    [math.nan, math.inf, -math.inf, [1, math.nan], {"x": {1, 2}}, b"bytes", object(), 10**5000],
    ids=["nan", "inf", "-inf", "nested-nan", "set", "bytes", "object", "huge-int"],
)
def test_what_json_cannot_hold_is_refused(bad: Any) -> None:
    with pytest.raises(InvalidJobError, match="payload must be a JSON value"):
        encode_payload(bad, 10**6)
    with pytest.raises(ValueError, match="result must be a JSON value"):
        encode_result(bad, 10**6)


def test_circular_and_too_deep_values_are_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    for bad in (loop, deep):
        with pytest.raises(InvalidJobError, match="payload must be a JSON value"):
            encode_payload(bad, 10**7)


def test_results_have_a_size_limit_and_no_nul_for_jsonb() -> None:
    with pytest.raises(ValueError, match="max_result_bytes=10"):
        encode_result("x" * 20, 10)
    with pytest.raises(ValueError, match="NUL"):
        encode_result({"k": "a\x00b"}, 100)
    # An escaped backslash followed by 'u0000' is not a NUL.
    assert json.loads(encode_result("\\u0000", 100)) == "\\u0000"


def test_a_row_that_does_not_hold_json_is_handed_over_as_text() -> None:
    assert decode_payload("written by plain SQL") == "written by plain SQL"


class _Broken(dict[str, int]):
    def items(self) -> Any:
        raise RuntimeError("user code")

    def __bool__(self) -> bool:
        return True


def test_a_value_whose_own_methods_raise_is_refused_not_crashing() -> None:
    with pytest.raises(ValueError, match="encoding it raised RuntimeError"):
        encode_result(_Broken(a=1), 100)
