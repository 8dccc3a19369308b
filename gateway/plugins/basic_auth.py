"""basic-auth: identify the consumer by an HTTP Basic username and password (RFC 7617)."""

from __future__ import annotations

import binascii
import hmac
from base64 import b64decode
from typing import ClassVar

from pydantic import BaseModel, Field

from gateway.consumers import Consumer
from gateway.context import RequestContext
from gateway.plugins.base import Plugin, PluginConfig
from gateway.plugins.key_auth import NO_ANONYMOUS, realm_field, unauthenticated
from gateway.responses import Reply

# Compared against when the username is unknown, so an unknown user costs what a wrong password costs.
_DUMMY_PASSWORD = b"\x00" * 32


class BasicAuthConfig(PluginConfig):
    hide_credentials: bool = False  # remove the Authorization header before the request goes upstream
    anonymous_consumer: str | None = Field(default=None, min_length=1)  # requests that fail run as this
    realm: str = realm_field("basic")


class BasicAuthCredential(PluginConfig):
    # RFC 7617: the user-id cannot contain a colon, the password may.
    username: str = Field(min_length=1, pattern=r"^[^:\x00-\x1f\x7f]+$")
    password: str = Field(min_length=1)


class BasicAuth(Plugin[BasicAuthConfig]):
    name: ClassVar[str] = "basic-auth"
    priority: ClassVar[int] = 2520
    Config = BasicAuthConfig
    ConsumerConfig = BasicAuthCredential

    @classmethod
    def consumer_credential(cls, consumer_config: BaseModel) -> str | None:
        assert isinstance(consumer_config, BasicAuthCredential)
        return consumer_config.username

    async def rewrite(self, ctx: RequestContext) -> Reply | None:
        config = self.config
        consumer, message = self._authenticate(ctx)
        if consumer is None:
            challenge = f'Basic realm="{config.realm}"'
            if config.anonymous_consumer is None:
                raise unauthenticated(message, challenge)
            # APISIX: missing and wrong credentials alike fall back to the anonymous consumer.
            consumer = ctx.consumers.by_name.get(config.anonymous_consumer)
            if consumer is None:
                raise unauthenticated(NO_ANONYMOUS, challenge)
        ctx.consumer = consumer
        if config.hide_credentials:
            ctx.headers.popall("Authorization", None)
        return None

    def _authenticate(self, ctx: RequestContext) -> tuple[Consumer | None, str]:
        """(the consumer, "") or (None, why not)."""
        values = ctx.headers.getall("Authorization", [])
        if not values:
            return None, "Missing authorization in request"
        # Two Authorization headers are ambiguous: the upstream might read the other one.
        parsed = _parse_basic(values[0]) if len(values) == 1 else None
        if parsed is None:
            return None, "Invalid authorization in request"
        username, password = parsed
        consumer = ctx.consumers.find(self.name, username)
        expected = _DUMMY_PASSWORD
        if consumer is not None:
            credential = consumer.plugins[self.name]
            assert isinstance(credential, BasicAuthCredential)
            expected = credential.password.encode()
        matches = hmac.compare_digest(password.encode(), expected)
        if consumer is None or not matches:
            # One message for an unknown user and a wrong password: the answer must not confirm usernames.
            return None, "Invalid user authorization"
        return consumer, ""


def _parse_basic(value: str) -> tuple[str, str] | None:
    """`Basic base64(user:password)` -> (user, password); None for anything malformed."""
    scheme, _, encoded = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    encoded = encoded.strip()
    if not encoded:
        return None
    try:
        decoded = b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    username, sep, password = decoded.partition(":")
    if not sep or not username:
        return None
    return username, password
