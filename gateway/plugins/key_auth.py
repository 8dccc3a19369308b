"""key-auth: identify the consumer by an API key in a header or query argument."""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode

from pydantic import BaseModel, Field

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.plugins.base import Plugin, PluginConfig
from gateway.responses import Reply
from transcoder.status import Code

# APISIX's realm schema: printable ASCII without `"` and `\`, so the challenge header stays well formed.
REALM_PATTERN = r"^[\x20-\x21\x23-\x5b\x5d-\x7e]+$"
# When the anonymous consumer a route names does not exist (APISIX's words).
NO_ANONYMOUS = "Invalid user authorization"


def realm_field(default: str) -> Any:
    """The `realm` of an auth plugin's WWW-Authenticate challenge (APISIX 3.15)."""
    return Field(default=default, min_length=1, max_length=128, pattern=REALM_PATTERN)


def unauthenticated(message: str, challenge: str) -> GatewayError:
    return GatewayError(401, Code.UNAUTHENTICATED, message, headers={"WWW-Authenticate": challenge})


class KeyAuthConfig(PluginConfig):
    header: str = Field(default="apikey", min_length=1)
    query: str = Field(default="apikey", min_length=1)
    hide_credentials: bool = False  # remove the key before the request goes upstream
    anonymous_consumer: str | None = Field(default=None, min_length=1)  # requests that fail run as this
    realm: str = realm_field("key")


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
        # The header wins when both carry a key, as in APISIX; a present but empty key is an invalid one.
        key = ctx.headers.get(config.header)
        if key is None:
            key = _query_value(ctx.query, config.query)
        consumer = ctx.consumers.find(self.name, key) if key else None
        if consumer is None:
            # Same words whether or not a consumer exists: the answer must not confirm usernames.
            message = "Missing API key in request" if key is None else "Invalid API key in request"
            if config.anonymous_consumer is None:
                raise unauthenticated(message, f'apikey realm="{config.realm}"')
            # APISIX: a missing or a wrong key both fall back to the anonymous consumer.
            consumer = ctx.consumers.by_name.get(config.anonymous_consumer)
            if consumer is None:
                raise unauthenticated(NO_ANONYMOUS, f'apikey realm="{config.realm}"')
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
