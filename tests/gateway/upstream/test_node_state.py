"""NodeSet: picking around unhealthy and tried nodes, chash keys, load accounting, health transitions."""

from __future__ import annotations

from collections import Counter
from typing import Any
from unittest import mock

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict
from pydantic import ValidationError

from gateway.config.models import Upstream
from gateway.consumers import EMPTY_CONSUMERS, Consumer
from gateway.context import RequestContext
from gateway.upstream.node_state import NodeSet

CHECKS = {"active": {"type": "tcp"}, "passive": {"unhealthy": {"http_statuses": [500, 503], "http_failures": 2}}}


def upstream(nodes: dict[str, int] | None = None, **fields: Any) -> Upstream:
    return Upstream.model_validate({"nodes": nodes or {"10.0.0.1:80": 1, "10.0.0.2:80": 1, "10.0.0.3:80": 1}, **fields})


def make_ctx(
    peer: str = "192.0.2.7", headers: list[tuple[str, str]] | None = None, path: str = "/a", **fields: Any
) -> RequestContext:
    transport = mock.Mock()
    extra = {"peername": (peer, 5000), "sockname": ("127.0.0.1", 9080), "sslcontext": None}
    transport.get_extra_info.side_effect = lambda name, default=None: extra.get(name, default)
    raw = CIMultiDict(headers or [])
    request = make_mocked_request("GET", path, headers=raw, transport=transport)
    return RequestContext(
        request=request,
        route_id="r",
        method="GET",
        path=path,
        query="",
        headers=CIMultiDict(raw),
        client_ip=peer,
        consumers=EMPTY_CONSUMERS,
        body_limit=1024,
        **fields,
    )


def test_round_robin_by_weight_and_never_a_tried_node_while_others_are_left() -> None:
    nodes = NodeSet(upstream({"a:1": 3, "b:1": 1, "c:1": 0}))
    assert Counter(nodes.pick().node.host for _ in range(400)) == {"a": 300, "b": 100}
    assert {nodes.pick(tried=[0]).node.host for _ in range(10)} == {"b"}
    assert nodes.pick(tried=[0, 1]).node.host in {"a", "b"}  # all tried: start over, never the weight-0 one


def test_retries_default_to_one_fewer_than_the_nodes() -> None:
    assert NodeSet(upstream()).retries == 2
    assert NodeSet(upstream(retries=0)).retries == 0
    assert NodeSet(upstream({"a:1": 1})).retries == 0


def test_unhealthy_nodes_get_no_traffic_unless_all_are_unhealthy() -> None:
    nodes = NodeSet(upstream())
    nodes.states[0].healthy = False
    assert {nodes.pick().index for _ in range(20)} == {1, 2}
    for state in nodes.states:
        state.healthy = False
    assert {nodes.pick().index for _ in range(30)} == {0, 1, 2}
    assert {nodes.pick(tried=[0, 1]).index for _ in range(5)} == {2}


def test_chash_on_a_var_keeps_a_client_on_one_node() -> None:
    nodes = NodeSet(upstream(type="chash", key="remote_addr"))
    by_client = {ip: {nodes.pick(make_ctx(peer=ip)).index for _ in range(5)} for ip in ("10.1.1.1", "10.1.1.2")}
    assert all(len(picked) == 1 for picked in by_client.values())
    spread = {nodes.pick(make_ctx(peer=f"10.2.0.{i}")).index for i in range(60)}
    assert spread == {0, 1, 2}


@pytest.mark.parametrize(
    ("fields", "ctx_a", "ctx_b"),
    [
        ({"hash_on": "header", "key": "X-User"}, {"headers": [("X-User", "ann")]}, {"headers": [("X-User", "bob")]}),
        ({"hash_on": "cookie", "key": "sid"}, {"headers": [("Cookie", "sid=1")]}, {"headers": [("Cookie", "sid=2")]}),
        ({"hash_on": "vars", "key": "uri"}, {"path": "/x"}, {"path": "/y"}),
        ({"hash_on": "vars_combinations", "key": "$uri-$http_x_t"}, {"path": "/x"}, {"path": "/y"}),
        ({"hash_on": "consumer"}, {"consumer": Consumer("ann")}, {"consumer": Consumer("bob")}),
    ],
)
def test_chash_keys(fields: dict[str, Any], ctx_a: dict[str, Any], ctx_b: dict[str, Any]) -> None:
    nodes = NodeSet(upstream(type="chash", **fields))
    assert nodes.hash_key(make_ctx(peer="10.9.9.9", **ctx_a)) != nodes.hash_key(make_ctx(peer="10.9.9.9", **ctx_b))
    assert nodes.hash_key(make_ctx(peer="10.9.9.9", **ctx_a)) == nodes.hash_key(make_ctx(peer="10.8.8.8", **ctx_a))


def test_chash_falls_back_to_the_client_address_when_the_key_is_missing() -> None:
    nodes = NodeSet(upstream(type="chash", hash_on="header", key="X-User"))
    assert nodes.hash_key(make_ctx(peer="10.9.9.9")) == "10.9.9.9"


def test_chash_skips_an_unhealthy_node_for_the_next_one_on_the_ring() -> None:
    nodes = NodeSet(upstream(type="chash"))
    ctx = make_ctx(peer="10.3.3.3")
    owner = nodes.pick(ctx).index
    nodes.states[owner].healthy = False
    fallback = nodes.pick(ctx).index
    assert fallback != owner
    assert {nodes.pick(ctx).index for _ in range(5)} == {fallback}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"type": "chash", "key": "nope"}, "not a known variable"),
        ({"type": "chash", "hash_on": "vars_combinations", "key": "$nope"}, "unknown variable"),
        ({"type": "random"}, "type"),
        ({"checks": {"passive": {}}}, "passive checks need active checks"),
        ({"checks": {"active": {"type": "grpc"}}}, "scheme grpc"),
        ({"checks": {"active": {"healthy": {"successes": 0}}}}, "successes"),
        ({"retries": -1}, "retries"),
    ],
)
def test_config_refuses(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        upstream(**fields)


def test_least_conn_counts_calls_in_flight() -> None:
    nodes = NodeSet(upstream({"a:1": 1, "b:1": 1}, type="least_conn"))
    first = nodes.pick()
    started = nodes.acquire(first)
    assert {nodes.pick().index for _ in range(4)} == {1 - first.index}
    nodes.release(first, started, ok=True)
    assert first.active == 0 and first.requests == 1


def test_ewma_learns_latency_from_release() -> None:
    nodes = NodeSet(upstream({"a:1": 1, "b:1": 1}, type="ewma"))
    slow = nodes.states[0]
    nodes.release(slow, nodes.acquire(slow) - 0.5, ok=True)  # took half a second
    fast = nodes.states[1]
    nodes.release(fast, nodes.acquire(fast) - 0.001, ok=True)
    assert {nodes.pick().index for _ in range(5)} == {1}


def test_passive_failures_in_a_row_mark_a_node_unhealthy_and_active_successes_bring_it_back() -> None:
    nodes = NodeSet(upstream(checks=CHECKS), start_checks=False)
    state = nodes.states[0]
    nodes.report_status(state, 500)
    nodes.report_status(state, 200)  # a success between failures resets the count
    nodes.report_status(state, 503)
    assert state.healthy
    nodes.report_status(state, 500)
    assert not state.healthy
    nodes.success(state, "active")
    assert not state.healthy
    nodes.success(state, "active")  # active healthy.successes defaults to 2
    assert state.healthy


def test_passive_tcp_failures_and_timeouts_have_their_own_thresholds() -> None:
    nodes = NodeSet(upstream(checks=CHECKS), start_checks=False)
    state = nodes.states[1]
    nodes.report_failure(state, "tcp")
    assert state.healthy
    nodes.report_failure(state, "tcp")  # tcp_failures defaults to 2
    assert not state.healthy
    other = nodes.states[2]
    for _ in range(6):
        nodes.report_failure(other, "timeout")
    assert other.healthy
    nodes.report_failure(other, "timeout")  # timeouts defaults to 7
    assert not other.healthy


def test_without_checks_reports_change_nothing() -> None:
    nodes = NodeSet(upstream())
    for _ in range(10):
        nodes.report_failure(nodes.states[0], "tcp")
        nodes.report_status(nodes.states[0], 500)
    assert nodes.states[0].healthy


def test_snapshot_lists_every_node() -> None:
    nodes = NodeSet(upstream())
    nodes.states[2].healthy = False
    snapshot = nodes.snapshot()
    assert [entry["node"] for entry in snapshot] == ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
    assert [entry["healthy"] for entry in snapshot] == [True, True, False]


@pytest.mark.parametrize(
    "fields",
    [{}, {"type": "least_conn"}, {"type": "ewma"}, {"type": "chash", "hash_on": "vars", "key": "remote_addr"}],
    ids=["roundrobin", "least_conn", "ewma", "chash"],
)
def test_a_one_node_upstream_always_picks_its_node(fields: dict[str, Any]) -> None:
    nodes = NodeSet(upstream({"a:1": 1}, **fields))
    assert nodes.pick(make_ctx()).index == 0
    nodes.states[0].healthy = False
    assert nodes.pick(make_ctx(), tried=[0]).index == 0  # out and tried: still the one to try (APISIX)
