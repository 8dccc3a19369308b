"""ip-restriction: config, whitelist/blacklist of IPv4/IPv6 addresses and CIDRs, the matcher."""

from __future__ import annotations

import pytest
from traffic_support import config_issues, make_ctx

from gateway.errors import GatewayError
from gateway.plugins.ip_restriction import IpMatcher, IpRestriction, IpRestrictionConfig, parse_ip


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({}, ""),
        ({"whitelist": ["10.0.0.1"], "blacklist": ["10.0.0.2"]}, ""),
        ({"whitelist": []}, "whitelist"),
        ({"whitelist": ["10.0.0.256"]}, "whitelist"),
        ({"blacklist": ["10.0.0.0/33"]}, "blacklist"),
        ({"blacklist": ["::1"], "response_code": 401}, "response_code"),
        ({"blacklist": ["::1"], "message": ""}, "message"),
        ({"blacklist": ["::1"], "whitelisted": ["::2"]}, "whitelisted"),
    ],
)
def test_config_refuses_bad_input(config: dict[str, object], path: str) -> None:
    where = "routes[0].plugins.ip-restriction" + (f".{path}" if path else "")
    assert where in config_issues("ip-restriction", config)


def test_matcher_handles_v4_v6_cidrs_and_mapped_addresses() -> None:
    matcher = IpMatcher(["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::1", "::ffff:172.16.0.0/108"])
    inside = ["10.200.3.4", "192.0.2.7", "2001:db8:1::5", "::1", "::ffff:10.1.1.1", "172.16.5.5"]
    outside = ["11.0.0.1", "192.0.2.8", "2001:db9::1", "::2", "172.32.0.1"]
    for text in inside:
        assert parse_ip(text) in matcher, text
    for text in outside:
        assert parse_ip(text) not in matcher, text
    assert parse_ip("fe80::1%eth0") in IpMatcher(["fe80::/10"])


async def test_whitelist_allows_listed_and_refuses_others() -> None:
    plugin = IpRestriction(IpRestrictionConfig(whitelist=["192.0.2.0/24", "2001:db8::/64"]))
    assert await plugin.access(make_ctx(client_ip="192.0.2.200")) is None
    assert await plugin.access(make_ctx(client_ip="2001:db8::9")) is None
    with pytest.raises(GatewayError) as refused:
        await plugin.access(make_ctx(client_ip="198.51.100.1"))
    assert (refused.value.status, refused.value.message) == (403, "Your IP address is not allowed")
    with pytest.raises(GatewayError):
        await plugin.access(make_ctx(client_ip="not-an-ip"))  # unreadable: on no whitelist


async def test_blacklist_refuses_listed_with_configured_answer() -> None:
    plugin = IpRestriction(IpRestrictionConfig(blacklist=["198.51.100.1"], message="go away", response_code=404))
    assert await plugin.access(make_ctx(client_ip="198.51.100.2")) is None
    with pytest.raises(GatewayError) as refused:
        await plugin.access(make_ctx(client_ip="198.51.100.1"))
    assert (refused.value.status, refused.value.message) == (404, "go away")


async def test_uses_client_ip_not_forwarded_headers() -> None:
    plugin = IpRestriction(IpRestrictionConfig(whitelist=["10.0.0.1"]))
    ctx = make_ctx(client_ip="192.0.2.7", headers=[("X-Forwarded-For", "10.0.0.1"), ("X-Real-IP", "10.0.0.1")])
    with pytest.raises(GatewayError):
        await plugin.access(ctx)
