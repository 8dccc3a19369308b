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
from gateway.plugins.base import Plugin, PluginConfig
from gateway.plugins.key_auth import NO_ANONYMOUS, realm_field, unauthenticated
from gateway.responses import Reply

Algorithm = Literal[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA"
]
# RFC 7518 3.2: an HMAC key MUST be at least as long as the hash output.
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
_EC_CURVES: dict[str, type[ec.EllipticCurve]] = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}
_RSA_MIN_BITS = 2048
# A token is refused unparsed past this size: no header or claim set worth having is bigger.
MAX_TOKEN_BYTES = 8192
# APISIX's messages. One deliberate difference: an unknown key gets VERIFY_FAILED, the words of a bad signature,
# where APISIX says "Invalid user key in JWT token": the answer must not tell a caller whether a key exists.
MISSING = "Missing JWT token in request"
INVALID = "JWT token invalid"  # not a JWT at all
NO_KEY = "missing user key in JWT token"
VERIFY_FAILED = "failed to verify jwt"
_DEFAULT_CLAIMS = ("exp", "nbf")


class JwtAuthConfig(PluginConfig):
    header: str = Field(default="authorization", min_length=1)
    query: str = Field(default="jwt", min_length=1)
    cookie: str = Field(default="jwt", min_length=1)
    hide_credentials: bool = False  # remove the token (header, query argument or cookie) before proxying
    key_claim_name: str = Field(default="key", min_length=1)  # the claim naming the consumer's credential
    # Not set (or empty): exp and nbf are checked when the token has them. Set: the listed claims are required.
    claims_to_verify: list[Literal["exp", "nbf"]] | None = None
    anonymous_consumer: str | None = Field(default=None, min_length=1)  # requests that fail run as this
    store_in_ctx: bool = False  # keep the verified claims in ctx.vars["jwt_auth_payload"] for later plugins
    realm: str = realm_field("jwt")

    @model_validator(mode="after")
    def _unique_claims(self) -> JwtAuthConfig:
        claims = self.claims_to_verify or []
        if len(set(claims)) != len(claims):
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
            consumer, message, claims = None, MISSING, None
        else:
            where, token = found
            if config.hide_credentials:
                # As in APISIX, the token goes before it is checked: a failure that falls back to the
                # anonymous consumer does not pass it on either.
                self._hide(ctx, where)
            consumer, message, claims = self._verify(ctx, token)
        if consumer is None:
            challenge = f'Bearer realm="{config.realm}"'
            if config.anonymous_consumer is None:
                raise unauthenticated(message, challenge)
            # APISIX: a missing and a failed token alike fall back to the anonymous consumer.
            consumer = ctx.consumers.by_name.get(config.anonymous_consumer)
            if consumer is None:
                raise unauthenticated(NO_ANONYMOUS, challenge)
        ctx.consumer = consumer
        if config.store_in_ctx and claims is not None:
            ctx.vars["jwt_auth_payload"] = claims
        return None

    def _find_token(self, ctx: RequestContext) -> tuple[str, str] | None:
        """(where, token): the header first, then the query argument, then the cookie, as in APISIX."""
        config = self.config
        values = ctx.headers.getall(config.header, [])
        if values:
            # Two copies are ambiguous (the upstream might act on the one not verified here): an empty
            # token, which no check passes. A present but empty header is a token too, as in APISIX.
            value = values[0].strip() if len(values) == 1 else ""
            scheme, _, rest = value.partition(" ")
            if scheme.lower() == "bearer":
                value = rest.strip()
            return "header", value
        value = _query_value(ctx.query, config.query)
        if value is not None:
            return "query", value
        value = _cookie_value(ctx.headers.getall("Cookie", []), config.cookie)
        if value:
            return "cookie", value
        return None

    def _verify(self, ctx: RequestContext, token: str) -> tuple[Any, str, dict[str, Any] | None]:
        """(consumer, "", claims) for a good token, else (None, why not, None)."""
        if not token or len(token) > MAX_TOKEN_BYTES:
            return None, INVALID, None
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return None, INVALID, None
        # The key claim names the credential (APISIX); a `kid` header is accepted when the claim is absent.
        key = unverified.get(self.config.key_claim_name, header.get("kid"))
        if key is None:
            return None, NO_KEY, None
        consumer = ctx.consumers.find(self.name, key) if isinstance(key, str) and key else None
        if consumer is None:
            return None, VERIFY_FAILED, None
        credential = consumer.plugins[self.name]
        assert isinstance(credential, JwtAuthCredential)
        listed = self.config.claims_to_verify
        # APISIX: listed claims must be present and valid; with none listed, exp and nbf are checked if present.
        verify = listed or _DEFAULT_CLAIMS
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
                    "require": list(listed or ()),
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
            return None, VERIFY_FAILED, None
        return consumer, "", claims

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
