"""consumer-restriction: allow or refuse a request by its consumer, consumer group, service or route."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.plugins.base import Plugin, PluginConfig
from gateway.responses import Reply
from transcoder.status import Code, code_from_http_status

RestrictBy = Literal["consumer_name", "consumer_group_id", "service_id", "route_id"]
Method = Literal["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE"]


def no_value(restrict_by: str) -> str:
    """APISIX 3's words when the request has no value of the restricted kind (no consumer, no service)."""
    return f"The request is rejected, please check the {restrict_by} for this request"


class AllowedByMethods(PluginConfig):
    user: str = Field(min_length=1)
    methods: list[Method] = Field(min_length=1)


class ConsumerRestrictionConfig(PluginConfig):
    type: RestrictBy = "consumer_name"
    whitelist: list[str] | None = Field(default=None, min_length=1)
    blacklist: list[str] | None = Field(default=None, min_length=1)
    allowed_by_methods: list[AllowedByMethods] | None = Field(default=None, min_length=1)
    rejected_code: int = Field(default=403, ge=200, le=599)
    rejected_msg: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_list(self) -> ConsumerRestrictionConfig:
        # Both lists may be given (APISIX's anyOf): the blacklist is checked first.
        if self.whitelist is None and self.blacklist is None and self.allowed_by_methods is None:
            raise ValueError("give one of whitelist, blacklist or allowed_by_methods")
        return self


class ConsumerRestriction(Plugin[ConsumerRestrictionConfig]):
    name: ClassVar[str] = "consumer-restriction"
    priority: ClassVar[int] = 2400
    Config = ConsumerRestrictionConfig

    def __init__(self, config: ConsumerRestrictionConfig) -> None:
        super().__init__(config)
        # Sets, built once per route: membership is then one lookup per request.
        self._whitelist = frozenset(config.whitelist or ())
        self._blacklist = frozenset(config.blacklist or ())
        self._methods = {entry.user: frozenset(entry.methods) for entry in config.allowed_by_methods or ()}

    async def access(self, ctx: RequestContext) -> Reply | None:
        config = self.config
        value = _value_of(config.type, ctx)
        if value is None:
            raise GatewayError(401, Code.UNAUTHENTICATED, no_value(config.type))
        allowed = True
        whitelisted = False
        if config.blacklist is not None and value in self._blacklist:
            allowed = False
        if config.whitelist is not None:
            whitelisted = value in self._whitelist
            allowed = allowed and whitelisted
        # As in APISIX: a whitelisted value skips the method check, and a user not listed there is not limited.
        if self._methods and not whitelisted:
            methods = self._methods.get(value)
            if methods is not None and ctx.method.upper() not in methods:
                allowed = False
        if allowed:
            return None
        message = config.rejected_msg or f"The {config.type} is forbidden."
        if config.rejected_code < 400:
            # Not an error status: an answer, not a refusal (APISIX lets rejected_code be any status >= 200).
            return Reply(config.rejected_code, {"message": message})
        code = Code.PERMISSION_DENIED if config.rejected_code == 403 else code_from_http_status(config.rejected_code)
        raise GatewayError(config.rejected_code, code, message)


def _value_of(restrict_by: str, ctx: RequestContext) -> str | None:
    if restrict_by == "route_id":
        return ctx.route_id
    if restrict_by == "service_id":
        return ctx.service_id
    consumer = ctx.consumer
    if consumer is None:
        return None
    return consumer.username if restrict_by == "consumer_name" else consumer.group_id
