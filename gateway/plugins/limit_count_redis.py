"""limit-count's `redis` and `redis-cluster` policies: fixed windows counted in Redis, shared by every node."""

from __future__ import annotations

from gateway.plugins.redis_policy import RedisLimitConfig, RedisPolicy, RedisUnavailable

# One request in a fixed window: the first hit opens the window (sets its expiry), every hit counts.
# A key found without an expiry (never left by this script) gets one too, so no counter lives forever.
# Returns {used, milliseconds until the window closes}; one script call is atomic on the server.
WINDOW_SCRIPT = """
local used = redis.call('INCRBY', KEYS[1], 1)
local ttl = redis.call('PTTL', KEYS[1])
if used == 1 or ttl < 0 then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
    ttl = tonumber(ARGV[1])
end
return {used, ttl}
"""


class RedisWindowCounter:
    """Fixed windows per key in Redis: N gateway nodes together allow exactly `count` per window.

    When Redis cannot answer within redis_timeout, `take` lets the request through uncounted
    (returns None) under allow_degradation, and otherwise refuses it with 503 (redis_policy).
    """

    def __init__(self, config: RedisLimitConfig, count: int, window: int, scope: str | None) -> None:
        self.redis = RedisPolicy("limit-count", config)
        self.count = count
        self.window_ms = window * 1000
        self.scope = scope  # the group's name, shared by every route naming it; None: the route's own

    def redis_key(self, route_id: str, key: str) -> str:
        if self.scope:
            return self.redis.key("group", f"{self.scope}:{self.count}:{self.window_ms}", key)
        return self.redis.key("route", route_id, key)

    async def take(self, route_id: str, key: str) -> tuple[bool, int, float] | None:
        """(allowed, remaining, seconds until the window resets), or None: passed uncounted (degraded)."""
        try:
            used, ttl_ms = await self.redis.run_script(WINDOW_SCRIPT, [self.redis_key(route_id, key)], [self.window_ms])
        except RedisUnavailable as exc:
            return self.redis.degrade(exc)
        used, reset = int(used), max(int(ttl_ms), 0) / 1000
        return used <= self.count, max(self.count - used, 0), reset
