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
from gateway.plugins.limit_keys import MAX_KEYS, LimitConfig, LimitKey, refusal
from gateway.responses import Reply


class LimitReqConfig(LimitConfig):
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


class LimitReq(Plugin[LimitReqConfig]):
    name: ClassVar[str] = "limit-req"
    priority: ClassVar[int] = 1001
    Config = LimitReqConfig

    def __init__(self, config: LimitReqConfig) -> None:
        super().__init__(config)
        self.key = LimitKey(config.key_type, config.key)
        self.bucket = LeakyBucket(config.rate, config.burst)

    async def access(self, ctx: RequestContext) -> Reply | None:
        config = self.config
        allowed, seconds = self.bucket.take(self.key(ctx))
        if not allowed:
            raise refusal(config, "rate limit exceeded", seconds)
        # Delay burst requests so they reach the upstream at `rate`, as nginx does without nodelay.
        if seconds >= 0.001 and not config.nodelay:
            await asyncio.sleep(seconds)
        return None
