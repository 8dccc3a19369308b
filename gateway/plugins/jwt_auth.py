"""jwt-auth: identify the consumer by a JSON Web Token signed with that consumer's own key."""

from __future__ import annotations

import binascii
from base64 import b64decode
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qsl, urlencode

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pydantic import BaseModel, Field, PrivateAttr, model_validator

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.plugins.base import Plugin, PluginConfig
from gateway.responses import Reply
from transcoder.status import Code

Algorithm = Literal[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA"
]
# RFC 7518 3.2: an HMAC key MUST be at least as long as the hash output.
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
_EC_CURVES: dict[str, type[ec.EllipticCurve]] = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}
_RSA_MIN_BITS = 2048
# A token is refused unparsed past this size: no header or claim set worth having is bigger.
MAX_TOKEN_BYTES = 8192
MISSING = "Missing JWT token in request"
# One message for every other refusal: it must not tell a caller which check failed or whether a key exists.
INVALID = "JWT token invalid"


class JwtAuthConfig(PluginConfig):
    header: str = Field(default="authorization", min_length=1)
    query: str = Field(default="jwt", min_length=1)
    cookie: str = Field(default="jwt", min_length=1)
    hide_credentials: bool = False  # remove the token (header, query argument or cookie) before proxying
    key_claim_name: str = Field(default="key", min_length=1)  # the claim naming the consumer's credential
    claims_to_verify: list[Literal["exp", "nbf"]] = Field(default_factory=lambda: ["exp", "nbf"])
    anonymous_consumer: str | None = Field(default=None, min_length=1)  # requests without a token run as this
    store_in_ctx: bool = False  # keep the verified claims in ctx.vars["jwt_auth_payload"] for later plugins

    @model_validator(mode="after")
    def _unique_claims(self) -> JwtAuthConfig:
        if len(set(self.claims_to_verify)) != len(self.claims_to_verify):
            raise ValueError("claims_to_verify lists a claim twice")
        return self


class JwtAuthCredential(PluginConfig):
    key: str = Field(min_length=1)
    secret: str | None = Field(default=None, min_length=1)  # HS*: the shared secret
    public_key: str | None = Field(default=None, min_length=1)  # RS*, PS*, ES*, EdDSA: a PEM public key
    algorithm: Algorithm = "HS256"
    exp: int = Field(default=86400, ge=1)  # lifetime of tokens APISIX signs; kept for compatibility, unused here
    base64_secret: bool = False
    lifetime_grace_period: int = Field(default=0, ge=0)  # seconds of clock skew allowed on exp and nbf
    # The verifying key, parsed once at load so a request never parses PEM.
    _verifying_key: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _key_matches_algorithm(self) -> JwtAuthCredential:
        if self.algorithm.startswith("HS"):
            if self.public_key is not None:
                raise ValueError(f"public_key is not used with {self.algorithm}; give secret")
            self._verifying_key = _hmac_key(self.algorithm, self.secret, self.base64_secret)
        else:
            if self.secret is not None or self.base64_secret:
                raise ValueError(f"secret is not used with {self.algorithm}; give public_key")
            self._verifying_key = _public_key(self.algorithm, self.public_key)
        return self

    @property
    def verifying_key(self) -> Any:
        return self._verifying_key


def _hmac_key(algorithm: str, secret: str | None, base64_secret: bool) -> bytes:
    if secret is None:
        raise ValueError(f"secret is required with {algorithm}")
    if base64_secret:
        try:
            key = b64decode(secret, validate=True)
        except binascii.Error:
            raise ValueError("secret is not valid base64 (base64_secret is true)") from None
    else:
        key = secret.encode()
    minimum = _HMAC_MIN_BYTES[algorithm]
    if len(key) < minimum:
        raise ValueError(f"secret is {len(key)} bytes; {algorithm} needs at least {minimum} (RFC 7518 3.2)")
    return key


def _public_key(algorithm: str, pem: str | None) -> Any:
    if pem is None:
        raise ValueError(f"public_key is required with {algorithm}")
    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError):
        raise ValueError("public_key is not a PEM public key") from None
    if algorithm[:2] in ("RS", "PS"):
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError(f"public_key is not an RSA key, which {algorithm} needs")
        if key.key_size < _RSA_MIN_BITS:
            raise ValueError(f"public_key has {key.key_size} bits; RSA keys need at least {_RSA_MIN_BITS}")
    elif algorithm in _EC_CURVES:
        curve = _EC_CURVES[algorithm]
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, curve):
            raise ValueError(f"public_key is not an EC key on {curve.name}, which {algorithm} needs")
    elif not isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        raise ValueError("public_key is not an Ed25519 or Ed448 key, which EdDSA needs")
    return key


class JwtAuth(Plugin[JwtAuthConfig]):
    name: ClassVar[str] = "jwt-auth"
    priority: ClassVar[int] = 2510
    Config = JwtAuthConfig
    ConsumerConfig = JwtAuthCredential

    @classmethod
    def consumer_credential(cls, consumer_config: BaseModel) -> str | None:
        assert isinstance(consumer_config, JwtAuthCredential)
        return consumer_config.key

    async def rewrite(self, ctx: RequestContext) -> Reply | None:
        config = self.config
        found = self._find_token(ctx)
        if found is None:
            if config.anonymous_consumer is not None:
                ctx.consumer = ctx.consumers.by_name.get(config.anonymous_consumer)
                if ctx.consumer is not None:
                    return None
            raise GatewayError(401, Code.UNAUTHENTICATED, MISSING)
        where, token = found
        claims, consumer = self._verify(ctx, token)
        ctx.consumer = consumer
        if config.store_in_ctx:
            ctx.vars["jwt_auth_payload"] = claims
        if config.hide_credentials:
            self._hide(ctx, where)
        return None

    def _find_token(self, ctx: RequestContext) -> tuple[str, str] | None:
        """(where, token): the header first, then the query argument, then the cookie, as in APISIX."""
        config = self.config
        values = ctx.headers.getall(config.header, [])
        if len(values) > 1:
            # Two copies are ambiguous: the upstream might act on the one not verified here.
            raise GatewayError(401, Code.UNAUTHENTICATED, INVALID)
        if values:
            value = values[0].strip()
            scheme, _, rest = value.partition(" ")
            if scheme.lower() == "bearer":
                value = rest.strip()
            return ("header", value) if value else None
        value = _query_value(ctx.query, config.query)
        if value:
            return "query", value
        value = _cookie_value(ctx.headers.getall("Cookie", []), config.cookie)
        if value:
            return "cookie", value
        return None

    def _verify(self, ctx: RequestContext, token: str) -> tuple[dict[str, Any], Any]:
        if len(token) > MAX_TOKEN_BYTES:
            raise GatewayError(401, Code.UNAUTHENTICATED, INVALID)
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise GatewayError(401, Code.UNAUTHENTICATED, INVALID) from None
        # The key claim names the credential (APISIX); a `kid` header is accepted when the claim is absent.
        key = unverified.get(self.config.key_claim_name, header.get("kid"))
        consumer = ctx.consumers.find(self.name, key) if isinstance(key, str) and key else None
        if consumer is None:
            raise GatewayError(401, Code.UNAUTHENTICATED, INVALID)
        credential = consumer.plugins[self.name]
        assert isinstance(credential, JwtAuthCredential)
        verify = self.config.claims_to_verify
        try:
            # Only the consumer's own algorithm: `none`, a different one, or an HS token "signed" with an
            # RSA public key (algorithm confusion) all fail here.
            claims = jwt.decode(
                token,
                key=credential.verifying_key,
                algorithms=[credential.algorithm],
                leeway=credential.lifetime_grace_period,
                options={
                    "verify_signature": True,
                    "verify_exp": "exp" in verify,
                    "verify_nbf": "nbf" in verify,
                    # APISIX checks only exp and nbf; audience, issuer and the like are the upstream's business.
                    "verify_iat": False,
                    "verify_aud": False,
                    "verify_iss": False,
                    "verify_sub": False,
                    "verify_jti": False,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.PyJWTError:
            raise GatewayError(401, Code.UNAUTHENTICATED, INVALID) from None
        return claims, consumer

    def _hide(self, ctx: RequestContext, where: str) -> None:
        config = self.config
        if where == "header":
            ctx.headers.popall(config.header, None)
        elif where == "query":
            pairs = parse_qsl(ctx.query, keep_blank_values=True)
            ctx.query = urlencode([(k, v) for k, v in pairs if k != config.query])
        else:
            kept = [
                part
                for value in ctx.headers.popall("Cookie", [])
                for part in (p.strip() for p in value.split(";"))
                if part and part.partition("=")[0].strip() != config.cookie
            ]
            if kept:
                ctx.headers["Cookie"] = "; ".join(kept)


def _query_value(query: str, name: str) -> str | None:
    if not query or name not in query:
        return None
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == name:
            return value
    return None


def _cookie_value(headers: list[str], name: str) -> str | None:
    # A plain split, not http.cookies: SimpleCookie drops a whole header over one odd cookie.
    for header in headers:
        for part in header.split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key.strip() == name:
                return value.strip().strip('"')
    return None
