"""limit-conn: at most `conn` requests in flight per key; up to `burst` more are delayed, the rest refused."""

from __future__ import annotations

import asyncio
import math
import secrets
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import Field

from gateway.context import RequestContext
from gateway.plugins.base import Plugin
from gateway.plugins.limit_keys import LimitKey, refusal
from gateway.plugins.redis_policy import RedisConnection, RedisLimitConfig, RedisPolicy, RedisUnavailable
from gateway.responses import ProxyResponse, Reply

# ctx.vars entry: a _Hold for every limit-conn that counted this request in.
_HELD = "limit-conn"

# policy redis / redis-cluster: a key's requests in flight are the members of one sorted set, each
# scored by when it stops counting (Redis's clock + key_ttl). Entries past their score are dropped
# before counting, so slots held by a node that died (and never gave them back) return after key_ttl,
# even on a key that stays busy. Atomic on the server. Returns {1, conn} (counted in) or {0, conn}.
ACQUIRE_SCRIPT = """
local limit, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local conn = redis.call('ZCARD', KEYS[1]) + 1
if conn > limit then
    return {0, conn}
end
redis.call('ZADD', KEYS[1], string.format('%d', now + ttl), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, conn}
"""
# Entries whose removal failed (Redis away) are retried later; past this many the oldest are left to key_ttl.
MAX_PENDING = 10_000
_RELEASE_LATER = "slots are given back once it answers again, or after key_ttl"


@dataclass
class _Hold:
    plugin: LimitConn
    key: str  # the limiter's key; with a Redis policy, the Redis key
    delay: float
    member: str = ""  # with a Redis policy: this request's entry in the key's set
    released: bool = False
    finalizer: weakref.finalize | None = field(default=None, repr=False)


class LimitConnConfig(RedisLimitConfig):
    conn: int = Field(gt=0)
    burst: int = Field(ge=0)
    default_conn_delay: float = Field(gt=0)  # seconds a request over `conn` waits (per multiple of conn)
    only_use_default_delay: bool = False  # keep default_conn_delay instead of learning from request latency
    # Redis policies: seconds a request counts at most (APISIX's field), so a crashed node's slots come back.
    key_ttl: int = Field(default=3600, ge=1, le=31_536_000)


def _zrem(key: str, member: str) -> Callable[[RedisConnection], Awaitable[Any]]:
    return lambda connection: connection.client.zrem(key, member)


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
        # Requests whose context was freed without a log phase (e.g. the client vanished while the
        # answer was being sent); released on the next access, never from inside the GC.
        self.abandoned: deque[_Hold] = deque()
        # policy redis / redis-cluster: the counts live in Redis, shared by every gateway node.
        self.redis = RedisPolicy("limit-conn", config) if config.policy != "local" else None
        self.acquire_args = [config.conn + config.burst, config.key_ttl * 1000]
        self.pending: deque[tuple[str, str]] = deque(maxlen=MAX_PENDING)  # (Redis key, member) to remove
        self._tasks: set[asyncio.Task[None]] = set()
        self._draining: asyncio.Task[None] | None = None

    async def access(self, ctx: RequestContext) -> Reply | None:
        config = self.config
        self._release_abandoned()
        key = self.key(ctx)
        if self.redis is None:
            conn = self.in_flight.get(key, 0) + 1
            if conn > config.conn + config.burst:
                # A request in flight may end within about one delay unit.
                raise refusal(config, "too many concurrent requests", self.unit_delay)
            self.in_flight[key] = conn
            hold = _Hold(self, key, self._delay(conn))
        else:
            taken = await self._take_redis(ctx, key)
            if taken is None:  # Redis is away and allow_degradation lets the request through uncounted
                return None
            hold = taken
        # Recorded before the delay: the log phase releases exactly what was taken, and only that.
        ctx.vars.setdefault(_HELD, []).append(hold)
        # A safety net for a request that never reaches the log phase: a slot must not leak forever.
        hold.finalizer = weakref.finalize(ctx, _abandon, hold)
        hold.finalizer.atexit = False
        if hold.delay >= 0.001:
            await asyncio.sleep(hold.delay)
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
            if not self.config.only_use_default_delay:
                latency = max(time.monotonic() - ctx.started - hold.delay, 0.0)
                self.unit_delay = (latency + self.unit_delay) / 2
                if not math.isfinite(self.unit_delay) or self.unit_delay <= 0:
                    self.unit_delay = self.config.default_conn_delay
            if self.redis is None:
                self._release(hold.key)
            else:
                # Shielded: a log phase cancelled mid-call still gives the slot back.
                await asyncio.shield(self._spawn(self._remove(hold.key, hold.member)))

    async def _take_redis(self, ctx: RequestContext, key: str) -> _Hold | None:
        assert self.redis is not None
        hold = _Hold(self, self.redis.key("route", ctx.route_id, key), 0.0, secrets.token_hex(12))
        args = [*self.acquire_args, hold.member]
        try:
            allowed, conn = await self.redis.run_script(ACQUIRE_SCRIPT, [hold.key], args)
        except RedisUnavailable as exc:
            if exc.sent:  # Redis may have counted it in before the answer was lost
                self._remove_later(hold)
            return self.redis.degrade(exc)  # None, or refused with 503
        except BaseException:  # cancelled (the client went away) while Redis was counting it in
            self._remove_later(hold)
            raise
        if int(allowed) != 1:
            raise refusal(self.config, "too many concurrent requests", self.unit_delay)
        hold.delay = self._delay(int(conn))
        return hold

    def _delay(self, conn: int) -> float:
        if conn <= self.config.conn:
            return 0.0
        return self.unit_delay * ((conn - 1) // self.config.conn)

    def _release(self, key: str) -> None:
        left = self.in_flight.get(key, 0) - 1
        if left > 0:
            self.in_flight[key] = left
        else:
            self.in_flight.pop(key, None)

    def _release_abandoned(self) -> None:
        while self.abandoned:
            hold = self.abandoned.popleft()
            if self.redis is None:
                self._release(hold.key)
            else:
                self.pending.append((hold.key, hold.member))
        if self.pending and self._draining is None:
            self._draining = self._spawn(self._drain())

    def _remove_later(self, hold: _Hold) -> None:
        self.pending.append((hold.key, hold.member))
        if self._draining is None:
            self._draining = self._spawn(self._drain())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        # Held here: the loop keeps only weak references to tasks.
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _remove(self, key: str, member: str) -> None:
        assert self.redis is not None
        try:
            await self.redis.call(_zrem(key, member), then=_RELEASE_LATER)
        except RedisUnavailable:
            self.pending.append((key, member))
            return
        if self.pending and self._draining is None:  # Redis answers again: give back what failed before
            self._draining = self._spawn(self._drain())

    async def _drain(self) -> None:
        assert self.redis is not None
        try:
            while self.pending:
                key, member = self.pending[0]
                try:
                    await self.redis.call(_zrem(key, member), then=_RELEASE_LATER)
                except RedisUnavailable:
                    return  # kept for the next access to try again
                if self.pending and self.pending[0] == (key, member):
                    self.pending.popleft()
        finally:
            self._draining = None


def _abandon(hold: _Hold) -> None:
    if not hold.released:
        hold.released = True
        hold.plugin.abandoned.append(hold)
