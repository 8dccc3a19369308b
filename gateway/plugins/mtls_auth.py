"""mtls-auth: identify the consumer by the client certificate the TLS handshake verified.

The handshake does the cryptography (the `ssls` object's `client.ca`); this plugin only maps the
verified certificate to a consumer, by a subjectAltName value first, then by the subject's CN.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field, model_validator

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.plugins.base import Plugin, PluginConfig
from gateway.responses import Reply
from transcoder.status import Code


class MtlsAuthConfig(PluginConfig):
    anonymous_consumer: str | None = None  # let requests without a client certificate through as this consumer


class MtlsAuthCredential(PluginConfig):
    """A consumer's certificate identity: exactly one of a subject CN and a subjectAltName value."""

    cn: str | None = Field(default=None, min_length=1)
    san: str | None = Field(default=None, min_length=1)  # a DNS name, URI (spiffe://...), email or IP address

    @model_validator(mode="after")
    def _one(self) -> MtlsAuthCredential:
        if (self.cn is None) == (self.san is None):
            raise ValueError("give exactly one of cn and san")
        return self


class MtlsAuth(Plugin[MtlsAuthConfig]):
    name: ClassVar[str] = "mtls-auth"
    priority: ClassVar[int] = 2530  # before the other auth plugins: no secret to read from the request
    Config = MtlsAuthConfig
    ConsumerConfig = MtlsAuthCredential

    @classmethod
    def consumer_credential(cls, consumer_config: BaseModel) -> str | None:
        assert isinstance(consumer_config, MtlsAuthCredential)
        return f"cn:{consumer_config.cn}" if consumer_config.cn is not None else f"san:{consumer_config.san}"

    async def rewrite(self, ctx: RequestContext) -> Reply | None:
        cert = ctx.client_cert
        if cert is None:
            if self.config.anonymous_consumer is not None:
                ctx.consumer = ctx.consumers.by_name.get(self.config.anonymous_consumer)
                if ctx.consumer is not None:
                    return None
            raise GatewayError(401, Code.UNAUTHENTICATED, "Missing client certificate")
        for credential in certificate_identities(cert):
            consumer = ctx.consumers.find(self.name, credential)
            if consumer is not None:
                ctx.consumer = consumer
                return None
        raise GatewayError(401, Code.UNAUTHENTICATED, "Invalid client certificate")


def certificate_identities(cert: dict[str, Any]) -> list[str]:
    """The credentials a verified certificate (ssl.getpeercert()'s dict) presents: its SAN values, then its CN."""
    identities = [f"san:{value}" for _, value in cert.get("subjectAltName", ())]
    for rdn in cert.get("subject", ()):
        identities.extend(f"cn:{value}" for key, value in rdn if key == "commonName")
    return identities
