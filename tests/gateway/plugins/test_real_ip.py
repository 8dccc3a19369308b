"""real-ip: config, believing a forwarded address only from trusted peers, recursive X-Forwarded-For."""

from __future__ import annotations

import pytest
from traffic_support import config_issues, make_ctx

from gateway.plugins.real_ip import RealIp, RealIpConfig

XFF = "http_x_forwarded_for"


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"trusted_addresses": ["127.0.0.1"]}, "source"),
        ({"source": "remote_addr", "trusted_addresses": ["127.0.0.1"]}, "source"),
        ({"source": "http_x-real-ip", "trusted_addresses": ["127.0.0.1"]}, "source"),
        ({"source": XFF}, "trusted_addresses"),
        ({"source": XFF, "trusted_addresses": []}, "trusted_addresses"),
        ({"source": XFF, "trusted_addresses": ["localhost"]}, "trusted_addresses"),
        ({"source": XFF, "trusted_addresses": ["::1"], "recursive": "maybe"}, "recursive"),
    ],
)
def test_config_refuses_bad_input(config: dict[str, object], path: str) -> None:
    assert f"routes[0].plugins.real-ip.{path}" in config_issues("real-ip", config)


def plugin(source: str = XFF, recursive: bool = False) -> RealIp:
    return RealIp(RealIpConfig(source=source, trusted_addresses=["10.0.0.0/8", "::1"], recursive=recursive))


async def test_trusted_peer_sets_client_ip_from_last_forwarded_address() -> None:
    ctx = make_ctx(peer="10.1.2.3", headers=[("x-FORWARDED-for", "203.0.113.9, 198.51.100.4")])
    await plugin().rewrite(ctx)
    assert ctx.client_ip == "198.51.100.4"


async def test_untrusted_peer_header_is_ignored() -> None:
    ctx = make_ctx(peer="192.0.2.7", headers=[("X-Forwarded-For", "10.0.0.1")])
    await plugin().rewrite(ctx)
    assert ctx.client_ip == "192.0.2.7"


async def test_trust_is_decided_by_the_socket_peer_not_an_earlier_claim() -> None:
    ctx = make_ctx(peer="192.0.2.7", client_ip="10.0.0.5", headers=[("X-Forwarded-For", "203.0.113.1")])
    await plugin().rewrite(ctx)
    assert ctx.client_ip == "10.0.0.5"


async def test_recursive_skips_trusted_hops_from_the_right() -> None:
    headers = [("X-Forwarded-For", "203.0.113.1, 198.51.100.2"), ("X-Forwarded-For", "10.9.9.9, 10.0.0.2")]
    ctx = make_ctx(peer="10.0.0.1", headers=headers)
    await plugin(recursive=True).rewrite(ctx)
    assert ctx.client_ip == "198.51.100.2"
    ctx = make_ctx(peer="10.0.0.1", headers=[("X-Forwarded-For", "10.0.0.3, 10.0.0.2")])
    await plugin(recursive=True).rewrite(ctx)
    assert ctx.client_ip == "10.0.0.3"  # every hop trusted: the leftmost


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("198.51.100.7", "198.51.100.7"),
        ("198.51.100.7:8080", "198.51.100.7"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("2001:db8::2", "2001:db8::2"),
        ("garbage", "::1"),
        ("", "::1"),
    ],
)
async def test_x_real_ip_with_ports_and_bad_values(value: str, expected: str) -> None:
    ctx = make_ctx(peer="::1", headers=[("X-Real-IP", value)])
    await plugin("http_x_real_ip").rewrite(ctx)
    assert ctx.client_ip == expected


async def test_query_argument_source() -> None:
    ctx = make_ctx(peer="10.0.0.1", query="realip=203.0.113.5&x=1")
    await plugin("arg_realip").rewrite(ctx)
    assert ctx.client_ip == "203.0.113.5"
