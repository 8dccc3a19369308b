"""ip-restriction: allow only a whitelist, or refuse a blacklist, of client IPs and CIDRs (IPv4 and IPv6)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import ClassVar

from pydantic import Field, field_validator, model_validator

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.plugins.base import Plugin, PluginConfig
from gateway.responses import Reply
from transcoder.status import Code

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(text: str) -> IPAddress | None:
    """An address as a client or a header gives it; IPv4-mapped IPv6 is taken as the IPv4 address."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            return ipaddress.IPv6Address(address.packed)
    return address


def check_networks(entries: list[str]) -> list[str]:
    """Config validator: every entry an IP or a CIDR."""
    bad = []
    for entry in entries:
        try:
            ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            bad.append(entry)
    if bad:
        raise ValueError(f"not an IP address or CIDR: {', '.join(map(repr, bad))}")
    return entries


class IpMatcher:
    """Membership in a set of networks, built once: per prefix length, a set of network addresses.

    A lookup masks the address once per distinct prefix length, so thousands of entries cost the same
    as a few; single addresses (/32, /128) are one set lookup.
    """

    def __init__(self, entries: Iterable[str]) -> None:
        by_version: dict[int, dict[int, set[int]]] = {4: {}, 6: {}}
        for entry in entries:
            network = ipaddress.ip_network(entry.strip(), strict=False)
            if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped is not None:
                # ::ffff:10.0.0.0/104 is 10.0.0.0/8, the form a client address is compared in
                mapped = network.network_address.ipv4_mapped
                network = ipaddress.ip_network(f"{mapped}/{max(network.prefixlen - 96, 0)}", strict=False)
            by_version[network.version].setdefault(network.prefixlen, set()).add(int(network.network_address))
        self._tables = {
            version: [(_mask(version, length), nets) for length, nets in sorted(table.items(), reverse=True)]
            for version, table in by_version.items()
        }

    def __contains__(self, address: IPAddress) -> bool:
        value = int(address)
        return any(value & mask in nets for mask, nets in self._tables[address.version])


def _mask(version: int, length: int) -> int:
    bits = 32 if version == 4 else 128
    return ((1 << length) - 1) << (bits - length)


class IpRestrictionConfig(PluginConfig):
    whitelist: list[str] | None = Field(default=None, min_length=1)
    blacklist: list[str] | None = Field(default=None, min_length=1)
    message: str = Field(default="Your IP address is not allowed", min_length=1, max_length=1024)
    response_code: int = Field(default=403, ge=403, le=404)

    @field_validator("whitelist", "blacklist")
    @classmethod
    def _networks(cls, entries: list[str] | None) -> list[str] | None:
        return None if entries is None else check_networks(entries)

    @model_validator(mode="after")
    def _exactly_one(self) -> IpRestrictionConfig:
        if (self.whitelist is None) == (self.blacklist is None):
            raise ValueError("set exactly one of whitelist and blacklist")
        return self


class IpRestriction(Plugin[IpRestrictionConfig]):
    name: ClassVar[str] = "ip-restriction"
    priority: ClassVar[int] = 3000
    Config = IpRestrictionConfig

    def __init__(self, config: IpRestrictionConfig) -> None:
        super().__init__(config)
        self.allow_listed = config.whitelist is not None
        self.matcher = IpMatcher(config.whitelist if config.whitelist is not None else config.blacklist or [])

    async def access(self, ctx: RequestContext) -> Reply | None:
        address = parse_ip(ctx.client_ip) if ctx.client_ip else None
        # An address that cannot be read is on no list: a whitelist refuses it, a blacklist cannot name it.
        listed = address is not None and address in self.matcher
        if listed != self.allow_listed:
            code = Code.PERMISSION_DENIED if self.config.response_code == 403 else Code.NOT_FOUND
            raise GatewayError(self.config.response_code, code, self.config.message)
        return None
