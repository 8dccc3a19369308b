"""request-id: give every request an id (or keep the client's), pass it upstream and echo it in the answer."""

from __future__ import annotations

import re
import secrets
import time
import uuid
from typing import ClassVar, Literal

from pydantic import Field

from gateway.context import RequestContext
from gateway.plugins.base import Plugin, PluginConfig
from gateway.responses import ProxyResponse, Reply

_ALPHANUMERIC = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_NANOID_ALPHABET = "_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_KSUID_EPOCH = 1_400_000_000  # KSUID's epoch (2014-05-13), in Unix seconds
# What a client's id may be: visible ASCII, bounded; anything else could poison logs or headers downstream.
_CLIENT_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
VAR = "request_id"  # the ctx.vars key (and $request_id) other plugins and the log read


class RangeId(PluginConfig):
    char_set: str = Field(default=_ALPHANUMERIC, min_length=6, pattern=r"^[\x21-\x7e]+$")
    length: int = Field(default=16, ge=6, le=128)


class RequestIdConfig(PluginConfig):
    header_name: str = Field(default="X-Request-Id", pattern=r"^[!#$%&'*+\-.^`|~0-9A-Za-z]+$")
    include_in_response: bool = True
    algorithm: Literal["uuid", "nanoid", "range_id", "ksuid", "uuidv7"] = "uuid"
    range_id: RangeId = Field(default_factory=RangeId)


class RequestId(Plugin[RequestIdConfig]):
    name: ClassVar[str] = "request-id"
    priority: ClassVar[int] = 12015
    Config = RequestIdConfig

    def __init__(self, config: RequestIdConfig) -> None:
        super().__init__(config)
        # One slot per header name (APISIX's ctx["request-id-" .. header_name]): a global and a route
        # request-id on different headers keep their own ids.
        self._var = f"{VAR}:{config.header_name.lower()}"

    async def rewrite(self, ctx: RequestContext) -> Reply | None:
        sent = ctx.headers.getall(self.config.header_name, [])
        # The client's id is kept (APISIX does), if it is one well-formed value.
        request_id = sent[0] if len(sent) == 1 and _CLIENT_ID.match(sent[0]) else self._generate()
        ctx.vars[VAR] = ctx.vars[self._var] = request_id
        ctx.headers.popall(self.config.header_name, None)
        ctx.set_upstream_header(self.config.header_name, request_id)  # gRPC upstreams get it as metadata
        return None

    async def header_filter(self, ctx: RequestContext, response: ProxyResponse) -> None:
        if not self.config.include_in_response:
            return
        if response.headers.get(self.config.header_name):
            return  # the upstream's own id stands (APISIX)
        request_id = ctx.vars.get(self._var)
        if request_id is None:  # refused before this plugin's rewrite ran (a global rule): still traceable
            request_id = ctx.vars[self._var] = self._generate()
            ctx.vars.setdefault(VAR, request_id)
        response.headers[self.config.header_name] = request_id

    def _generate(self) -> str:
        algorithm = self.config.algorithm
        if algorithm == "uuid":
            return str(uuid.uuid4())
        if algorithm == "nanoid":
            return "".join(secrets.choice(_NANOID_ALPHABET) for _ in range(21))
        if algorithm == "uuidv7":
            return uuid7()
        if algorithm == "ksuid":
            return ksuid()
        range_id = self.config.range_id
        return "".join(secrets.choice(range_id.char_set) for _ in range(range_id.length))


def uuid7(now_ms: int | None = None) -> str:
    """RFC 9562 UUIDv7: 48 bits of Unix milliseconds, then random bits; ids sort by time."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    value = (ms & ((1 << 48) - 1)) << 80 | secrets.randbits(80)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # variant 10
    return str(uuid.UUID(int=value))


def ksuid(now: float | None = None) -> str:
    """A KSUID: 4 bytes of seconds since its epoch and 16 random bytes, as 27 base62 characters."""
    seconds = int(time.time() if now is None else now) - _KSUID_EPOCH
    value = int.from_bytes(seconds.to_bytes(4, "big") + secrets.token_bytes(16), "big")
    digits = []
    for _ in range(27):
        value, digit = divmod(value, 62)
        digits.append(_BASE62[digit])
    return "".join(reversed(digits))
