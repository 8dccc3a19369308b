"""RouteTable: exact vs prefix, longest prefix, priority, hosts, methods, 405 lists."""

from __future__ import annotations

import pytest

from gateway.router import RouteSpec, RouteTable


def table(*specs: tuple[list[str], list[str] | None, list[str], int, str]) -> RouteTable[str]:
    return RouteTable.compile(RouteSpec(uris, methods, hosts, prio, name) for uris, methods, hosts, prio, name in specs)


def test_exact_beats_prefix_and_longer_prefix_beats_shorter() -> None:
    routes = table(
        (["/*"], None, [], 0, "root"),
        (["/api/*"], None, [], 0, "api"),
        (["/api/v1/*"], None, [], 0, "v1"),
        (["/api/v1/users"], None, [], 0, "users"),
    )
    assert routes.match("h", "GET", "/api/v1/users") == "users"
    assert routes.match("h", "GET", "/api/v1/users/7") == "v1"
    assert routes.match("h", "GET", "/api/v2") == "api"
    assert routes.match("h", "GET", "/other") == "root"
    assert routes.match("h", "GET", "/api") == "root"  # /api/* needs the slash


def test_no_route_gives_none() -> None:
    routes = table((["/a"], None, [], 0, "a"))
    assert routes.match("h", "GET", "/b") is None
    assert routes.match("h", "GET", "/a/") is None
    assert routes.allowed_methods("h", "/b") is None


def test_priority_orders_routes_on_the_same_uri() -> None:
    routes = table((["/x"], None, [], 1, "low"), (["/x"], None, [], 5, "high"))
    assert routes.match("h", "GET", "/x") == "high"


def test_same_priority_keeps_config_order() -> None:
    routes = table((["/x"], None, [], 0, "first"), (["/x"], None, [], 0, "second"))
    assert routes.match("h", "GET", "/x") == "first"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("api.example.com", "exact"),
        ("API.Example.com:9080", "exact"),
        ("eu.example.com", "wild"),
        ("example.com", "any"),
        ("evil.com", "any"),
    ],
)
def test_hosts_exact_and_wildcard_beat_hostless(host: str, expected: str) -> None:
    routes = table(
        (["/x"], None, [], 0, "any"),
        (["/x"], None, ["*.example.com"], 0, "wild"),
        (["/x"], None, ["api.example.com"], 0, "exact"),
    )
    assert routes.match(host, "GET", "/x") == expected


def test_host_only_route_does_not_match_other_hosts() -> None:
    routes = table((["/x"], None, ["a.test"], 0, "a"))
    assert routes.match("b.test", "GET", "/x") is None
    assert routes.allowed_methods("b.test", "/x") is None


def test_methods_filter_and_allowed_methods_for_405() -> None:
    routes = table((["/x"], ["GET"], [], 0, "get"), (["/x"], ["POST", "PUT"], [], 0, "write"))
    assert routes.match("h", "GET", "/x") == "get"
    assert routes.match("h", "PUT", "/x") == "write"
    assert routes.match("h", "DELETE", "/x") is None
    assert routes.allowed_methods("h", "/x") == ["GET", "POST", "PUT"]


def test_a_method_miss_falls_through_to_a_less_specific_route() -> None:
    routes = table((["/api/x"], ["GET"], [], 0, "get-only"), (["/api/*"], None, [], 0, "catch-all"))
    assert routes.match("h", "POST", "/api/x") == "catch-all"


def test_several_uris_on_one_route() -> None:
    routes = table((["/a", "/b/*"], None, [], 0, "r"))
    assert routes.match("h", "GET", "/a") == "r"
    assert routes.match("h", "GET", "/b/c") == "r"


def test_ipv6_host_header_port_is_dropped() -> None:
    routes = table((["/x"], None, ["[::1]"], 0, "v6"))
    assert routes.match("[::1]:9080", "GET", "/x") == "v6"
