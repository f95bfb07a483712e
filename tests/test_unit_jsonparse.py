"""tierflow.jsonparse: the strict JSON every connector and the query-log importer accept."""

from __future__ import annotations

import json

import pytest

from tierflow.jsonparse import JsonRejected, json_type, loads

ACCEPTED = [
    (b'{"a": 1, "b": [1.5, -2e10, null, true], "c": {"d": "\\u00e9"}}', {"a": 1, "b": [1.5, -2e10, None, True], "c": {"d": "é"}}),
    ('{"emoji": "\\ud83d\\ude00"}', {"emoji": "😀"}),  # a surrogate *pair* is one character
    (b"12345678901234567890", 12345678901234567890),
    (b"1.7976931348623157e308", 1.7976931348623157e308),
]  # fmt: skip

REJECTED = [
    (b'{"a": NaN}', "malformed_json", "NaN is not valid JSON"),
    (b'{"a": {"b": [Infinity]}}', "malformed_json", "Infinity is not valid JSON"),
    (b'{"a": -Infinity}', "malformed_json", "-Infinity is not valid JSON"),
    (b'{"a": 1e999}', "malformed_json", "too large for a double"),
    (b'{"a": -1e400}', "malformed_json", "too large for a double"),
    (b'{"a": 1, "a": 2}', "malformed_json", "duplicate name 'a'"),
    (b'{"a": {"b": 1, "b": 1}}', "malformed_json", "duplicate name 'b'"),
    (b'{"a": ', "malformed_json", "line 1 column 7"),
    (b"[" * 100_000 + b"]" * 100_000, "malformed_json", "nested too deeply"),
    (b"1" * 5000, "malformed_json", "digits"),
    (b'{"a": "caf\xe9"}', "not_utf8", "byte 10"),
    (b'{"a": "\\ud800"}', "not_utf8", "surrogate"),
    (b'{"\\udfff": 1}', "not_utf8", "surrogate"),
]


@pytest.mark.parametrize(("data", "expected"), ACCEPTED)
def test_strict_json_is_accepted(data: bytes | str, expected: object) -> None:
    assert loads(data) == expected


@pytest.mark.parametrize(
    ("data", "reason", "words"), REJECTED, ids=lambda v: v if isinstance(v, str) else None
)
def test_what_json_cannot_carry_back_out_is_rejected_with_a_reason(
    data: bytes, reason: str, words: str
) -> None:
    with pytest.raises(JsonRejected) as caught:
        loads(data)
    assert caught.value.reason == reason
    assert words in caught.value.detail


def test_everything_accepted_serialises_back_as_strict_json() -> None:
    for data, _ in ACCEPTED:
        json.dumps(loads(data), allow_nan=False)


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (None, "null"),
        (True, "boolean"),
        (1, "number"),
        (1.5, "number"),
        ("s", "string"),
        ([1], "array"),
        ({}, "object"),
    ],
)
def test_json_type_names_the_json_type(value: object, name: str) -> None:
    assert json_type(value) == name
