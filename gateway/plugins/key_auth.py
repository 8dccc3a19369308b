"""key-auth: identify the consumer by an API key in a header or query argument."""

from __future__ import annotations

from typing import ClassVar
from urllib.parse import parse_qsl, urlencode

from pydantic import BaseModel, Field

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.plugins.base import Plugin, PluginConfig
from gateway.responses import Reply
from transcoder.status import Code


class KeyAuthConfig(PluginConfig):
    header: str = Field(default="apikey", min_length=1)
    query: str = Field(default="apikey", min_length=1)
    hide_credentials: bool = False  # remove the key before the request goes upstream
    anonymous_consumer: str | None = None  # let keyless requests through as this consumer


class KeyAuthCredential(PluginConfig):
    key: str = Field(min_length=1)


class KeyAuth(Plugin[KeyAuthConfig]):
    name: ClassVar[str] = "key-auth"
    priority: ClassVar[int] = 2500
    Config = KeyAuthConfig
    ConsumerConfig = KeyAuthCredential

    @classmethod
    def consumer_credential(cls, consumer_config: BaseModel) -> str | None:
        assert isinstance(consumer_config, KeyAuthCredential)
        return consumer_config.key

    async def rewrite(self, ctx: RequestContext) -> Reply | None:
        config = self.config
        # The header wins when both carry a key, as in APISIX.
        key = ctx.headers.get(config.header)
        if key is None:
            key = _query_value(ctx.query, config.query)
        if not key:
            if config.anonymous_consumer is not None:
                ctx.consumer = ctx.consumers.by_name.get(config.anonymous_consumer)
                if ctx.consumer is not None:
                    return None
            raise GatewayError(401, Code.UNAUTHENTICATED, "Missing API key in request")
        consumer = ctx.consumers.find(self.name, key)
        if consumer is None:
            # Same words whether or not a consumer exists: the answer must not confirm usernames.
            raise GatewayError(401, Code.UNAUTHENTICATED, "Invalid API key in request")
        ctx.consumer = consumer
        if config.hide_credentials:
            # Both places, so a second copy of the key never reaches the upstream either.
            ctx.headers.popall(config.header, None)
            if _query_value(ctx.query, config.query) is not None:
                ctx.query = _without_query(ctx.query, config.query)
        return None


def _query_value(query: str, name: str) -> str | None:
    if not query or name not in query:
        return None
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == name:
            return value
    return None


def _without_query(query: str, name: str) -> str:
    return urlencode([(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != name])
