"""real-ip: take the client address from a header or query argument sent by a trusted proxy."""

from __future__ import annotations

import re
from typing import ClassVar
from urllib.parse import parse_qsl

from pydantic import Field, field_validator

from gateway.context import RequestContext
from gateway.plugins.base import Plugin, PluginConfig
from gateway.plugins.ip_restriction import IpMatcher, check_networks, parse_ip
from gateway.responses import Reply

_SOURCE = re.compile(r"(http|arg)_[A-Za-z0-9_]+")
_BRACKETED = re.compile(r"\[([^\]]+)\](?::\d+)?")
_V4_PORT = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3}):\d+")


class RealIpConfig(PluginConfig):
    # An nginx-style variable: http_<header> (e.g. http_x_forwarded_for) or arg_<query argument>.
    source: str = Field(min_length=1, max_length=256)
    # Required here (optional in APISIX): a forwarded address is believed only from these peers.
    trusted_addresses: list[str] = Field(min_length=1)
    recursive: bool = False  # X-Forwarded-For: the rightmost address not itself a trusted proxy

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        if not _SOURCE.fullmatch(value):
            raise ValueError("source must be http_<header> (e.g. http_x_forwarded_for) or arg_<name>")
        return value

    @field_validator("trusted_addresses")
    @classmethod
    def _trusted(cls, entries: list[str]) -> list[str]:
        return check_networks(entries)


class RealIp(Plugin[RealIpConfig]):
    name: ClassVar[str] = "real-ip"
    priority: ClassVar[int] = 23000
    Config = RealIpConfig

    def __init__(self, config: RealIpConfig) -> None:
        super().__init__(config)
        self.trusted = IpMatcher(config.trusted_addresses)
        kind, _, name = config.source.partition("_")
        self.from_header = kind == "http"
        # http_x_forwarded_for names the X-Forwarded-For header (matched in any letter case)
        self.source_name = name.replace("_", "-") if self.from_header else name
        self.is_forwarded_for = self.from_header and self.source_name.lower() == "x-forwarded-for"

    async def rewrite(self, ctx: RequestContext) -> Reply | None:
        # The socket peer decides, never an address a header already claimed (THREATS 3).
        peer = parse_ip(ctx.request.remote or "")
        if peer is None or peer not in self.trusted:
            return None
        raw = self._source_value(ctx)
        if not raw:
            return None
        address = parse_ip(_strip_port(self._pick(raw)))
        if address is None:
            return None  # a missing or malformed address leaves the client address as it was (APISIX)
        ctx.client_ip = str(address)
        return None

    def _source_value(self, ctx: RequestContext) -> str | None:
        if self.from_header:
            # Several header lines are one comma-separated list (RFC 9110), the last line nearest to us.
            values = ctx.headers.getall(self.source_name, [])
            return ",".join(values) if values else None
        for key, value in parse_qsl(ctx.query, keep_blank_values=True):
            if key == self.source_name:
                return value
        return None

    def _pick(self, raw: str) -> str:
        if not self.is_forwarded_for:
            return raw.strip()
        hops = [hop.strip() for hop in raw.split(",")]
        if self.config.recursive:
            # From the right, skip our own proxies; the first address that is not one is the client.
            for hop in reversed(hops[1:]):
                address = parse_ip(_strip_port(hop))
                if address is None or address not in self.trusted:
                    return hop
            return hops[0]
        return hops[-1]


def _strip_port(value: str) -> str:
    """`1.2.3.4:80` -> `1.2.3.4`, `[::1]:80` -> `::1`; a bare address is returned as it is."""
    value = value.strip()
    match = _BRACKETED.fullmatch(value) or _V4_PORT.fullmatch(value)
    return match.group(1) if match else value
