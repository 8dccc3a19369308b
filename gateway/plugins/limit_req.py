"""limit-req: a leaky bucket per key: `rate` requests a second, `burst` more delayed, the rest refused."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import ClassVar

from pydantic import Field

from gateway.context import RequestContext
from gateway.plugins.base import Plugin
from gateway.plugins.limit_keys import MAX_KEYS, LimitKey, refusal
from gateway.plugins.redis_policy import RedisLimitConfig, RedisPolicy, RedisUnavailable
from gateway.responses import Reply

# The leaky bucket of one key, read and updated in one atomic call: a hash of {excess, last}.
# Time is Redis's own clock (TIME), so gateway nodes whose clocks disagree still drain one bucket alike.
# A refused request leaves the bucket as it was; an accepted one stores it with an expiry at the moment
# it has drained completely (a key found absent behaves the same). Numbers travel as strings: a Lua
# number returned to Redis would be cut to an integer. Returns {1, delay seconds} or {0, retry seconds}.
LEAKY_BUCKET_SCRIPT = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'excess', 'last')
local excess = 0
if state[1] and state[2] then
    excess = math.max(tonumber(state[1]) - rate * math.max(now - tonumber(state[2]), 0) + 1, 0)
    if excess > burst then
        return {0, string.format('%.17g', (excess - burst) / rate)}
    end
end
redis.call('HSET', KEYS[1], 'excess', string.format('%.17g', excess), 'last', string.format('%.17g', now))
local ttl = math.min(math.ceil((excess + 1) / rate * 1000) + 1, 31536000000)
redis.call('PEXPIRE', KEYS[1], string.format('%d', ttl))
return {1, string.format('%.17g', excess / rate)}
"""


class LimitReqConfig(RedisLimitConfig):
    rate: float = Field(gt=0)  # requests a second
    burst: float = Field(ge=0)  # requests over the rate that are delayed rather than refused
    nodelay: bool = False  # let burst requests through at once instead of spacing them at `rate`


class LeakyBucket:
    """nginx's limit_req arithmetic (lua-resty-limit-traffic's req.lua), one bucket per key.

    `excess` is how many requests are queued ahead of the next one; it drains at `rate` a second.
    A key is forgotten once it has drained completely (a new one starts from the same state);
    the dict is ordered by last update, so drained buckets are popped from the front.
    """

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (excess, last)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> tuple[bool, float]:
        """(True, seconds to delay this request) or (False, seconds until one would be accepted)."""
        now = self.clock()
        buckets, rate = self._buckets, self.rate
        while buckets:
            excess, last = next(iter(buckets.values()))
            # drained: a request now would compute max(excess - rate * elapsed + 1, 0) == 0, as a new key does
            if (now - last) * rate < excess + 1:
                break
            buckets.popitem(last=False)
        state = buckets.get(key)
        excess = 0.0
        if state is not None:
            excess = max(state[0] - rate * (now - state[1]) + 1, 0.0)
            if excess > self.burst:
                # Refused requests do not fill the bucket, as in nginx.
                return False, (excess - self.burst) / rate
            del buckets[key]
        elif len(buckets) >= MAX_KEYS:
            buckets.popitem(last=False)
        buckets[key] = (excess, now)
        return True, excess / rate


class RedisLeakyBucket:
    """The same buckets kept in Redis (policy redis / redis-cluster): every gateway node drains one bucket per key.

    `take` answers as LeakyBucket.take does, or None when Redis is away and allow_degradation lets the
    request through unlimited; without allow_degradation that refuses with 503 (redis_policy).
    """

    def __init__(self, config: LimitReqConfig) -> None:
        self.redis = RedisPolicy("limit-req", config)
        self.args = [repr(float(config.rate)), repr(float(config.burst))]

    def redis_key(self, route_id: str, key: str) -> str:
        return self.redis.key("route", route_id, key)

    async def take(self, route_id: str, key: str) -> tuple[bool, float] | None:
        try:
            allowed, seconds = await self.redis.run_script(
                LEAKY_BUCKET_SCRIPT, [self.redis_key(route_id, key)], self.args
            )
        except RedisUnavailable as exc:
            return self.redis.degrade(exc)
        return int(allowed) == 1, float(seconds)


class LimitReq(Plugin[LimitReqConfig]):
    name: ClassVar[str] = "limit-req"
    priority: ClassVar[int] = 1001
    Config = LimitReqConfig

    def __init__(self, config: LimitReqConfig) -> None:
        super().__init__(config)
        self.key = LimitKey(config.key_type, config.key)
        self.bucket = LeakyBucket(config.rate, config.burst)
        self.redis = RedisLeakyBucket(config) if config.policy != "local" else None

    async def access(self, ctx: RequestContext) -> Reply | None:
        config = self.config
        key = self.key(ctx)
        if self.redis is None:
            allowed, seconds = self.bucket.take(key)
        else:
            taken = await self.redis.take(ctx.route_id, key)
            if taken is None:  # Redis is away and allow_degradation lets the request through
                return None
            allowed, seconds = taken
        if not allowed:
            raise refusal(config, "rate limit exceeded", seconds)
        # Delay burst requests so they reach the upstream at `rate`, as nginx does without nodelay.
        if seconds >= 0.001 and not config.nodelay:
            await asyncio.sleep(seconds)
        return None
