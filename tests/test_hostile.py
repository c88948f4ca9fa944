"""Hostile input against `POST /webhooks/{source}`: what a careless or malicious sender can send.

The parser-level cases run `_parse_json` directly.
"""

from __future__ import annotations

import pytest

from app.errors import InvalidJson
from app.ingest import _parse_json


@pytest.mark.parametrize(
    "body",
    [b'{"a": 1, "a": 2}', b'{"a": 1, "\\u0061": 2}', b'{"x": {"b": 1, "c": 2, "b": 3}}',
     b'{"x": [{"k": 1}, {"k": 1, "k": 1}]}'],
    ids=["top-level", "escaped-spelling", "nested", "in-array"],
)
def test_a_repeated_key_is_invalid_json(body: bytes) -> None:
    with pytest.raises(InvalidJson, match="duplicate key"):
        _parse_json(body)


def test_the_same_key_in_different_objects_is_fine() -> None:
    body = b'{"a": {"a": {"a": 1}}, "b": [{"a": 1}, {"a": 2}]}'
    assert _parse_json(body) == {"a": {"a": {"a": 1}}, "b": [{"a": 1}, {"a": 2}]}


@pytest.mark.parametrize(
    "body",
    [b'{"a": "\\ud800"}', b'{"a": ["x", {"b": "x\\udfff"}]}', b'{"\\udbff": 1}',
     b'{"a": "x\\u0000y"}'],
    ids=["lone-high-surrogate", "lone-low-surrogate-nested", "in-a-key", "nul"],
)
def test_a_string_no_store_can_write_is_invalid_json(body: bytes) -> None:
    with pytest.raises(InvalidJson, match="NUL or an unpaired surrogate"):
        _parse_json(body)


def test_escapes_that_only_look_risky_are_fine() -> None:
    body = b'{"emoji": "\\ud83d\\ude00", "text": "\\\\ud800 \\\\u0000", "u": "\\u00fc"}'
    assert _parse_json(body) == {"emoji": "\U0001f600", "text": "\\ud800 \\u0000", "u": "\u00fc"}
