"""limit-count: at most `count` requests per key in each fixed window of `time_window` seconds."""

from __future__ import annotations

import math
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import ClassVar

from pydantic import Field

from gateway.context import RequestContext
from gateway.plugins.base import Plugin
from gateway.plugins.limit_count_redis import RedisWindowCounter
from gateway.plugins.limit_keys import MAX_KEYS, LimitKey, refusal
from gateway.plugins.redis_policy import RedisLimitConfig
from gateway.responses import ProxyResponse, Reply


class LimitCountConfig(RedisLimitConfig):
    count: int = Field(gt=0)
    time_window: int = Field(gt=0)  # seconds
    # Routes naming the same group (with the same count and time_window) share one counter.
    group: str | None = Field(default=None, min_length=1, max_length=256)
    show_limit_quota_header: bool = True


class WindowCounter:
    """Fixed windows per key: a key's window opens at its first request and lasts `window` seconds.

    Every window has the same length and a key is moved to the end when its window opens, so the
    dict is ordered by expiry: expired windows are popped from the front on each call. Past
    MAX_KEYS the oldest window is dropped early (that key starts afresh) to keep memory bounded.
    """

    def __init__(self, count: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.count = count
        self.window = window
        self.clock = clock
        self._windows: OrderedDict[str, list[float]] = OrderedDict()  # key -> [reset_at, used]

    def __len__(self) -> int:
        return len(self._windows)

    def take(self, key: str) -> tuple[bool, int, float]:
        """Count one request: (allowed, remaining, seconds until the window resets)."""
        now = self.clock()
        windows = self._windows
        while windows:
            first = next(iter(windows.values()))
            if first[0] > now:
                break
            windows.popitem(last=False)
        entry = windows.get(key)
        if entry is None:
            if len(windows) >= MAX_KEYS:
                windows.popitem(last=False)
            entry = windows[key] = [now + self.window, 0]
        reset = entry[0] - now
        # No await between the check and the increment: exact under any concurrency on one loop.
        if entry[1] >= self.count:
            return False, 0, reset
        entry[1] += 1
        return True, self.count - int(entry[1]), reset


# Counters shared by `group`; weak, so a group nobody configures any more is freed.
_GROUPS: weakref.WeakValueDictionary[tuple[str, int, int], WindowCounter] = weakref.WeakValueDictionary()


class LimitCount(Plugin[LimitCountConfig]):
    name: ClassVar[str] = "limit-count"
    priority: ClassVar[int] = 1002
    Config = LimitCountConfig

    def __init__(self, config: LimitCountConfig) -> None:
        super().__init__(config)
        self.key = LimitKey(config.key_type, config.key)
        if config.group is not None:
            # Keyed by the limits too: routes that disagree on them must not silently share.
            group_key = (config.group, config.count, config.time_window)
            counter = _GROUPS.get(group_key)
            if counter is None:
                counter = _GROUPS[group_key] = WindowCounter(config.count, config.time_window)
            self.counter = counter
        else:
            self.counter = WindowCounter(config.count, config.time_window)
        # policy redis / redis-cluster: the counters live in Redis, shared by every gateway node.
        self.redis: RedisWindowCounter | None = None
        if config.policy != "local":
            self.redis = RedisWindowCounter(config, config.count, config.time_window, config.group)
        self._var = f"limit-count#{id(self)}"

    async def access(self, ctx: RequestContext) -> Reply | None:
        config = self.config
        key = self.key(ctx)
        if self.redis is None:
            allowed, remaining, reset = self.counter.take(key)
        else:
            taken = await self.redis.take(ctx.route_id, key)
            if taken is None:  # Redis is away and allow_degradation lets the request through uncounted
                return None
            allowed, remaining, reset = taken
        headers = {}
        if config.show_limit_quota_header:
            headers = {
                "X-RateLimit-Limit": str(config.count),
                "X-RateLimit-Remaining": str(remaining),
                "X-RateLimit-Reset": str(math.ceil(reset)),
            }
            ctx.vars[self._var] = headers
        if not allowed:
            raise refusal(config, "rate limit exceeded", reset, headers)
        return None

    async def header_filter(self, ctx: RequestContext, response: ProxyResponse) -> None:
        headers = ctx.vars.get(self._var)
        if headers:
            response.headers.update(headers)
