"""Raw query strings -> (name, value) pairs: form decoding, and refusals where Go's url.ParseQuery refuses."""

from __future__ import annotations

import pytest

from transcoder.errors import TranscodeError
from transcoder.query_string import parse_query_string
from transcoder.status import Code


@pytest.mark.parametrize(
    ("raw", "pairs"),
    [
        ("", []),
        ("a=1", [("a", "1")]),
        ("a=1&a=2&b=", [("a", "1"), ("a", "2"), ("b", "")]),
        ("flag", [("flag", "")]),
        ("&&a=1&", [("a", "1")]),
        ("a=x+y&b=x%2By", [("a", "x y"), ("b", "x+y")]),  # "+" is a space, as in forms and Go
        ("a=%C3%A9&%C3%A9=1", [("a", "é"), ("é", "1")]),
        ("m%5Bk%5D=v", [("m[k]", "v")]),
        ("a=b=c", [("a", "b=c")]),
        ("a=1;b=2", [("a", "1;b=2")]),  # only "&" separates
        ("tags=a,b", [("tags", "a,b")]),  # a comma is part of the value, never a list separator
    ],
)
def test_parsed(raw: str, pairs: list[tuple[str, str]]) -> None:
    assert parse_query_string(raw) == pairs


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("a=%zz", 'query parameter "a": invalid percent-encoding'),
        ("a=100%", 'query parameter "a": invalid percent-encoding'),
        ("a%=1", 'query parameter "a%": invalid percent-encoding'),
        ("a=%ff", 'query parameter "a": not UTF-8'),
        ("a=%ED%A0%80", 'query parameter "a": not UTF-8'),  # a UTF-16 surrogate is not UTF-8 either
    ],
)
def test_refused(raw: str, message: str) -> None:
    with pytest.raises(TranscodeError) as caught:
        parse_query_string(raw)
    assert caught.value.code == Code.INVALID_ARGUMENT and caught.value.http_status == 400
    assert caught.value.message == message


def test_long_names_are_not_echoed_whole() -> None:
    with pytest.raises(TranscodeError) as caught:
        parse_query_string("x" * 10_000 + "=%zz")
    assert len(caught.value.message) < 120
