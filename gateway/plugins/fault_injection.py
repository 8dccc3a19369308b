"""fault-injection: delay requests or answer them with a chosen error, for a sampled share of the traffic."""

from __future__ import annotations

import asyncio
import random
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from gateway.context import RequestContext
from gateway.plugins.base import Plugin, PluginConfig
from gateway.plugins.proxy_rewrite import HeaderOps, checked_header_value, scalar
from gateway.plugins.variables import Expression, Template, check_template, compile_expression
from gateway.responses import Reply

# Sampling needs no secrecy; one generator so tests can seed or replace it.
sampler = random.Random()


def check_vars(value: list[Any] | None) -> list[Any] | None:
    # A list of expressions: the fault applies when any one of them matches (APISIX's OR of ANDs).
    if value is not None:
        if not value:
            raise ValueError("vars needs at least one expression")
        for index, expression in enumerate(value):
            try:
                compile_expression(expression)
            except ValueError as exc:
                raise ValueError(f"vars[{index}]: {exc}") from None
    return value


class Abort(PluginConfig):
    http_status: int = Field(ge=200, le=599)
    body: str | None = None  # may use $var
    headers: dict[str, str] = Field(default_factory=dict)  # values may use $var
    percentage: int | None = Field(default=None, ge=0, le=100)  # None: every request
    vars: list[Any] | None = None

    @field_validator("vars")
    @classmethod
    def _check_vars(cls, value: list[Any] | None) -> list[Any] | None:
        return check_vars(value)

    @field_validator("body")
    @classmethod
    def _check_body(cls, value: str | None) -> str | None:
        if value is not None:
            check_template(value)
        return value

    @field_validator("headers", mode="before")
    @classmethod
    def _numbers(cls, value: Any) -> Any:
        # APISIX takes numbers as header values.
        if isinstance(value, dict):
            return {name: scalar(v) for name, v in value.items()}
        return value

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        HeaderOps(set=value)  # the same name and value rules as the rewrite plugins
        return value


class Delay(PluginConfig):
    duration: float = Field(ge=0, le=600)  # seconds
    percentage: int | None = Field(default=None, ge=0, le=100)
    vars: list[Any] | None = None

    @field_validator("vars")
    @classmethod
    def _check_vars(cls, value: list[Any] | None) -> list[Any] | None:
        return check_vars(value)


class FaultInjectionConfig(PluginConfig):
    abort: Abort | None = None
    delay: Delay | None = None

    @model_validator(mode="after")
    def _something(self) -> FaultInjectionConfig:
        if self.abort is None and self.delay is None:
            raise ValueError("give abort, delay or both")
        return self


def _compile(raw: list[Any] | None) -> list[Expression] | None:
    return [compile_expression(e) for e in raw] if raw is not None else None


def _applies(percentage: int | None, expressions: list[Expression] | None, ctx: RequestContext) -> bool:
    if expressions is not None and not any(e.matches(ctx) for e in expressions):
        return False
    return percentage is None or sampler.randint(1, 100) <= percentage


class FaultInjection(Plugin[FaultInjectionConfig]):
    name: ClassVar[str] = "fault-injection"
    priority: ClassVar[int] = 11000
    Config = FaultInjectionConfig

    def __init__(self, config: FaultInjectionConfig) -> None:
        super().__init__(config)
        abort, delay = config.abort, config.delay
        self._abort_vars = _compile(abort.vars) if abort else None
        self._delay_vars = _compile(delay.vars) if delay else None
        self._body = Template.parse(abort.body) if abort and abort.body is not None else None
        self._headers = [(n, Template.parse(v)) for n, v in abort.headers.items()] if abort else []

    async def rewrite(self, ctx: RequestContext) -> Reply | None:
        # Both decisions are taken before either acts, and the delay comes first (APISIX's order).
        abort, delay = self.config.abort, self.config.delay
        do_delay = delay is not None and _applies(delay.percentage, self._delay_vars, ctx)
        do_abort = abort is not None and _applies(abort.percentage, self._abort_vars, ctx)
        if do_delay:
            assert delay is not None
            await asyncio.sleep(delay.duration)
        if not do_abort:
            return None
        assert abort is not None
        body = self._body.render(ctx) if self._body is not None else b""
        return Reply(abort.http_status, body, {n: checked_header_value(n, t.render(ctx)) for n, t in self._headers})
