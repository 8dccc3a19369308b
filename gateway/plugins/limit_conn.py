"""limit-conn: at most `conn` requests in flight per key; up to `burst` more are delayed, the rest refused."""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import ClassVar

from pydantic import Field

from gateway.context import RequestContext
from gateway.plugins.base import Plugin
from gateway.plugins.limit_keys import LimitConfig, LimitKey, refusal
from gateway.responses import ProxyResponse, Reply

# ctx.vars entry: a _Hold for every limit-conn that counted this request in.
_HELD = "limit-conn"


@dataclass
class _Hold:
    plugin: LimitConn
    key: str
    delay: float
    released: bool = False
    finalizer: weakref.finalize | None = field(default=None, repr=False)


class LimitConnConfig(LimitConfig):
    conn: int = Field(gt=0)
    burst: int = Field(ge=0)
    default_conn_delay: float = Field(gt=0)  # seconds a request over `conn` waits (per multiple of conn)
    only_use_default_delay: bool = False  # keep default_conn_delay instead of learning from request latency


class LimitConn(Plugin[LimitConnConfig]):
    name: ClassVar[str] = "limit-conn"
    priority: ClassVar[int] = 1003
    Config = LimitConnConfig

    def __init__(self, config: LimitConnConfig) -> None:
        super().__init__(config)
        self.key = LimitKey(config.key_type, config.key)
        # Keys with nothing in flight are removed, so this holds at most one entry per request in flight.
        self.in_flight: dict[str, int] = {}
        # Like lua-resty-limit-traffic, the delay unit follows observed latency unless told not to.
        self.unit_delay = config.default_conn_delay
        # Keys of requests whose context was freed without a log phase (e.g. the client vanished
        # while the answer was being sent); released on the next access, never from inside the GC.
        self.abandoned: deque[str] = deque()

    async def access(self, ctx: RequestContext) -> Reply | None:
        config = self.config
        while self.abandoned:
            self._release(self.abandoned.popleft())
        key = self.key(ctx)
        conn = self.in_flight.get(key, 0) + 1
        if conn > config.conn + config.burst:
            # A request in flight may end within about one delay unit.
            raise refusal(config, "too many concurrent requests", self.unit_delay)
        self.in_flight[key] = conn
        delay = 0.0
        if conn > config.conn:
            delay = self.unit_delay * ((conn - 1) // config.conn)
        # Recorded before any await: the log phase releases exactly what was taken, and only that.
        hold = _Hold(self, key, delay)
        ctx.vars.setdefault(_HELD, []).append(hold)
        # A safety net for a request that never reaches the log phase: a slot must not leak forever.
        hold.finalizer = weakref.finalize(ctx, _abandon, hold)
        hold.finalizer.atexit = False
        if delay >= 0.001:
            await asyncio.sleep(delay)
        return None

    async def log(self, ctx: RequestContext, response: ProxyResponse) -> None:
        held = ctx.vars.get(_HELD)
        if not held:
            return
        for hold in held:
            if hold.plugin is not self or hold.released:
                continue
            hold.released = True
            if hold.finalizer is not None:
                hold.finalizer.detach()
            self._release(hold.key)
            if not self.config.only_use_default_delay:
                latency = max(time.monotonic() - ctx.started - hold.delay, 0.0)
                self.unit_delay = (latency + self.unit_delay) / 2
                if not math.isfinite(self.unit_delay) or self.unit_delay <= 0:
                    self.unit_delay = self.config.default_conn_delay

    def _release(self, key: str) -> None:
        left = self.in_flight.get(key, 0) - 1
        if left > 0:
            self.in_flight[key] = left
        else:
            self.in_flight.pop(key, None)


def _abandon(hold: _Hold) -> None:
    if not hold.released:
        hold.released = True
        hold.plugin.abandoned.append(hold.key)
