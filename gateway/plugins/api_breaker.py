"""api-breaker: stop calling an upstream that keeps failing, for a time that doubles while it keeps failing.

APISIX's algorithm, per route (APISIX keeps one breaker per `$host$uri`; one per route protects the upstream
as soon as any of its paths keeps failing): every answer with an unhealthy status counts; each `failures`-th
one (re)opens the breaker at that moment. While open, requests get `break_response_code` without calling the
upstream, for 2^max(1, floor(count / failures)) seconds (at most `max_breaker_sec`); after that requests go
through again, and `successes` healthy answers in a row close the breaker and clear the count.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, ClassVar

from pydantic import Field, field_validator

from gateway.context import RequestContext
from gateway.plugins.base import Plugin, PluginConfig
from gateway.plugins.proxy_rewrite import HeaderOps, checked_header_value
from gateway.plugins.variables import Template
from gateway.responses import ProxyResponse, Reply

Status = Annotated[int, Field(ge=200, le=599)]


class BreakHeader(PluginConfig):
    key: str = Field(min_length=1)
    value: str = Field(min_length=1)  # may use $var


class Unhealthy(PluginConfig):
    http_statuses: list[Status] = Field(default_factory=lambda: [500], min_length=1)
    failures: int = Field(default=3, ge=1)


class Healthy(PluginConfig):
    http_statuses: list[Status] = Field(default_factory=lambda: [200], min_length=1)
    successes: int = Field(default=3, ge=1)


class ApiBreakerConfig(PluginConfig):
    break_response_code: int = Field(ge=200, le=599)
    break_response_body: str | None = None
    break_response_headers: list[BreakHeader] = Field(default_factory=list)
    max_breaker_sec: int = Field(default=300, ge=3)
    unhealthy: Unhealthy = Unhealthy()
    healthy: Healthy = Healthy()

    @field_validator("break_response_headers")
    @classmethod
    def _check_headers(cls, value: list[BreakHeader]) -> list[BreakHeader]:
        HeaderOps(set={h.key: h.value for h in value})  # the same name, value and $var rules as the rewrite plugins
        return value


class Breaker:
    """The counts of one route's breaker; `clock` is replaceable for tests."""

    def __init__(self, config: ApiBreakerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.unhealthy_count = 0
        self.healthy_count = 0
        self.opened_at: float | None = None

    def is_open(self) -> bool:
        if self.opened_at is None or self.unhealthy_count == 0:
            return False
        failures = self.config.unhealthy.failures
        breaker_time = min(2 ** max(1, self.unhealthy_count // failures), self.config.max_breaker_sec)
        return self.clock() <= self.opened_at + breaker_time

    def record(self, status: int) -> None:
        config = self.config
        if status in config.unhealthy.http_statuses:
            self.unhealthy_count += 1
            self.healthy_count = 0
            if self.unhealthy_count % config.unhealthy.failures == 0:
                self.opened_at = self.clock()
            return
        if status not in config.healthy.http_statuses or self.unhealthy_count == 0:
            return
        self.healthy_count += 1
        if self.healthy_count >= config.healthy.successes:
            self.unhealthy_count = self.healthy_count = 0
            self.opened_at = None


class ApiBreaker(Plugin[ApiBreakerConfig]):
    name: ClassVar[str] = "api-breaker"
    priority: ClassVar[int] = 1005
    Config = ApiBreakerConfig

    def __init__(self, config: ApiBreakerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(config)
        self.breaker = Breaker(config, clock)
        self._headers = [(h.key, Template.parse(h.value)) for h in config.break_response_headers]
        self._var = f"api-breaker#{id(self)}"

    async def access(self, ctx: RequestContext) -> Reply | None:
        if not self.breaker.is_open():
            return None
        config = self.config
        headers = {name: checked_header_value(name, t.render(ctx)) for name, t in self._headers}
        return Reply(config.break_response_code, config.break_response_body or b"", headers)

    async def before_proxy(self, ctx: RequestContext) -> Reply | None:
        ctx.vars[self._var] = True  # the request goes to the upstream: its answer counts
        return None

    async def log(self, ctx: RequestContext, response: ProxyResponse) -> None:
        if not ctx.vars.get(self._var):
            return
        # The upstream's answer, or the gateway's 502/503/504 for an upstream it could not get one from.
        if response.source == "upstream" or (response.source == "gateway" and response.status in (502, 503, 504)):
            self.breaker.record(response.status)
