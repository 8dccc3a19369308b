"""Path normalisation: one string for routing and proxying (THREATS 9)."""

from __future__ import annotations

import pytest

from gateway.errors import GatewayError
from gateway.paths import normalize_path, split_target


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("/", "/"),
        ("/v1/shelves", "/v1/shelves"),
        ("//admin", "/admin"),
        ("/a//b///c", "/a/b/c"),
        ("/a/../admin", "/admin"),
        ("/a/./b", "/a/b"),
        ("/../../admin", "/admin"),
        ("/%2e%2e/admin", "/admin"),
        ("/a/%2E%2e/admin", "/admin"),
        ("/a/%2e/b", "/a/b"),
        ("/%61dmin", "/admin"),
        ("/a%2fb", "/a%2Fb"),  # an encoded slash is data, never a separator
        ("/a%2F..%2Fadmin", "/a%2F..%2Fadmin"),
        ("/a%5cb", "/a%5Cb"),
        ("/a/b/", "/a/b/"),
        ("/a/b/..", "/a/"),
        ("/a;jsessionid=1", "/a;jsessionid=1"),
        ("/v1/shelves/1/books/2:publish", "/v1/shelves/1/books/2:publish"),
        ("/%7Euser", "/~user"),
        ("/caf%C3%A9", "/caf%C3%A9"),
    ],
)
def test_normalize_path(raw: str, normal: str) -> None:
    assert normalize_path(raw) == normal


@pytest.mark.parametrize("raw", ["/a%00b", "/a%zz", "/a%4", "/a b", "/a\\b", "/a\x01", "/a\x7f", "/é", "relative"])
def test_normalize_path_refuses(raw: str) -> None:
    with pytest.raises(GatewayError) as caught:
        normalize_path(raw)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/a?b=1", ("/a", "b=1")),
        ("/a", ("/a", "")),
        ("/a?", ("/a", "")),
        ("/a?x=1?y", ("/a", "x=1?y")),
        ("http://example.com/p?q=1", ("/p", "q=1")),
        ("http://example.com", ("/", "")),
    ],
)
def test_split_target(target: str, expected: tuple[str, str]) -> None:
    assert split_target(target) == expected


def test_split_target_refuses_asterisk_form() -> None:
    with pytest.raises(GatewayError):
        split_target("*")
