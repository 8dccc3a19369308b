"""jwt-auth: credential and route config validation, then the rewrite hook against every refusal in THREATS 7."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import time
from collections.abc import Iterable, Sequence
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import make_mocked_request
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from multidict import CIMultiDict

from gateway.config.loader import ConfigError, load_document
from gateway.consumers import ConsumerIndex
from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.plugins import jwt_auth
from gateway.plugins.jwt_auth import INVALID, MISSING, NO_KEY, VERIFY_FAILED, JwtAuth, JwtAuthConfig

UPSTREAM = {"id": "u", "scheme": "http", "nodes": {"127.0.0.1:1": 1}}
SECRET = "a-shared-secret-of-at-least-32-bytes!"
OTHER_SECRET = "another-secret-that-is-long-enough-too"


def pem_public(key: Any) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC384_KEY = ec.generate_private_key(ec.SECP384R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()


def document(plugin: dict[str, Any] | None = None, consumers: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    return {
        "upstreams": [UPSTREAM],
        "routes": [{"id": "r", "uri": "/*", "upstream_id": "u", "plugins": {"jwt-auth": plugin or {}}}],
        "consumers": list(consumers),
    }


def consumer(username: str, **credential: Any) -> dict[str, Any]:
    return {"username": username, "plugins": {"jwt-auth": credential}}


def issues(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_document(doc)
    return [str(issue) for issue in caught.value.issues]


def credential_issues(**credential: Any) -> list[str]:
    return issues(document(consumers=[consumer("jack", **credential)]))


CONSUMERS = load_document(
    document(
        consumers=[
            consumer("hs", key="hs-key", secret=SECRET),
            consumer("hs512", key="hs512-key", secret=SECRET * 2, algorithm="HS512"),
            consumer("b64", key="b64-key", secret=base64.b64encode(b"\x01" * 32).decode(), base64_secret=True),
            consumer("rs", key="rs-key", public_key=pem_public(RSA_KEY), algorithm="RS256"),
            consumer("ps", key="ps-key", public_key=pem_public(RSA_KEY), algorithm="PS256"),
            consumer("es", key="es-key", public_key=pem_public(EC_KEY), algorithm="ES256"),
            consumer("ed", key="ed-key", public_key=pem_public(ED_KEY), algorithm="EdDSA"),
            consumer("grace", key="grace-key", secret=SECRET, lifetime_grace_period=30),
            {"username": "anonymous"},
        ]
    )
).consumers


def hs_token(payload: dict[str, Any], secret: str | bytes = SECRET, algorithm: str = "HS256", **kw: Any) -> str:
    return jwt.encode(payload, secret, algorithm=algorithm, **kw)


def forge(header: dict[str, Any], payload: dict[str, Any], key: bytes, digest: Any = hashlib.sha256) -> str:
    """A token built by hand: pyjwt refuses to sign the attacks these tests need."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(key, signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64(signature)}"


def make_ctx(
    headers: Iterable[tuple[str, str]] = (), query: str = "", consumers: ConsumerIndex = CONSUMERS
) -> RequestContext:
    header_map = CIMultiDict(headers)
    request = make_mocked_request("GET", "/echo" + (f"?{query}" if query else ""), headers=header_map)
    return RequestContext(
        request=request,
        route_id="r",
        method="GET",
        path="/echo",
        query=query,
        headers=CIMultiDict(header_map),
        client_ip="127.0.0.1",
        consumers=consumers,
        body_limit=1024,
    )


async def accepted(token: str, config: JwtAuthConfig | None = None) -> str:
    ctx = make_ctx([("Authorization", f"Bearer {token}")])
    assert await JwtAuth(config or JwtAuthConfig()).rewrite(ctx) is None
    assert ctx.consumer is not None
    return ctx.consumer.username


async def refused(token: str, config: JwtAuthConfig | None = None, message: str = VERIFY_FAILED) -> None:
    ctx = make_ctx([("Authorization", f"Bearer {token}")])
    with pytest.raises(GatewayError) as caught:
        await JwtAuth(config or JwtAuthConfig()).rewrite(ctx)
    assert (caught.value.status, caught.value.message) == (401, message)
    assert caught.value.headers["WWW-Authenticate"] == f'Bearer realm="{(config or JwtAuthConfig()).realm}"'
    assert ctx.consumer is None


def later(seconds: int) -> int:
    return int(time.time()) + seconds


# 1. config


def test_route_config_defaults_match_apisix() -> None:
    config = JwtAuthConfig()
    assert (config.header, config.query, config.cookie, config.key_claim_name) == ("authorization", "jwt", "jwt", "key")
    assert config.claims_to_verify is None  # exp and nbf checked when present
    assert config.realm == "jwt"
    assert config.hide_credentials is False
    assert JwtAuth.priority == 2510


def test_route_config_refuses_unknown_fields_and_bad_claims() -> None:
    found = issues(document({"claims_to_verify": ["exp", "iat"], "jwks_uri": "http://x"}))
    assert any(i.startswith("routes[0].plugins.jwt-auth.claims_to_verify[1]:") for i in found)
    assert any(i.startswith("routes[0].plugins.jwt-auth.jwks_uri:") for i in found)
    found = issues(document({"claims_to_verify": ["exp", "exp"]}))
    assert found[0].startswith("routes[0].plugins.jwt-auth:")
    assert issues(document({"header": ""}))[0].startswith("routes[0].plugins.jwt-auth.header:")


def test_hs_algorithms_need_a_secret_long_enough_for_the_hash() -> None:
    assert "secret is required with HS256" in credential_issues(key="k")[0]
    assert "HS256 needs at least 32" in credential_issues(key="k", secret="short")[0]
    assert "HS512 needs at least 64" in credential_issues(key="k", secret=SECRET, algorithm="HS512")[0]
    assert credential_issues(key="k", secret=SECRET, public_key=pem_public(RSA_KEY))[0].startswith(
        "consumers[0].plugins.jwt-auth:"
    )


def test_base64_secret_must_decode() -> None:
    found = credential_issues(key="k", secret="not base64 at all!", base64_secret=True)
    assert found[0].startswith("consumers[0].plugins.jwt-auth:") and "base64" in found[0]


def test_asymmetric_algorithms_need_a_public_key_of_the_matching_kind() -> None:
    assert "public_key is required with RS256" in credential_issues(key="k", algorithm="RS256")[0]
    assert "not a PEM public key" in credential_issues(key="k", algorithm="RS256", public_key="-----BEGIN junk")[0]
    assert "not an RSA key" in credential_issues(key="k", algorithm="RS256", public_key=pem_public(EC_KEY))[0]
    assert "secp256r1" in credential_issues(key="k", algorithm="ES256", public_key=pem_public(EC384_KEY))[0]
    assert "Ed25519" in credential_issues(key="k", algorithm="EdDSA", public_key=pem_public(RSA_KEY))[0]
    found = credential_issues(key="k", algorithm="RS256", public_key=pem_public(RSA_KEY), secret=SECRET)
    assert "secret is not used with RS256" in found[0]


def test_small_rsa_keys_are_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    assert "1024 bits" in credential_issues(key="k", algorithm="RS256", public_key=pem_public(small))[0]


def test_credential_fields_are_checked_with_their_paths() -> None:
    found = credential_issues(key="", secret=SECRET, algorithm="none", exp=0, lifetime_grace_period=-1, private_key="x")
    paths = sorted(i.split(":")[0] for i in found)
    assert paths == [
        "consumers[0].plugins.jwt-auth.algorithm",
        "consumers[0].plugins.jwt-auth.exp",
        "consumers[0].plugins.jwt-auth.key",
        "consumers[0].plugins.jwt-auth.lifetime_grace_period",
        "consumers[0].plugins.jwt-auth.private_key",
    ]


def test_two_consumers_cannot_share_a_key() -> None:
    found = issues(
        document(consumers=[consumer("a", key="same", secret=SECRET), consumer("b", key="same", secret=SECRET)])
    )
    assert found == ["consumers[1].plugins.jwt-auth: the same credential as 'a'"]


# 2. hooks: accepted tokens


@pytest.mark.parametrize(
    ("username", "token"),
    [
        ("hs", lambda: hs_token({"key": "hs-key", "exp": later(60)})),
        ("hs512", lambda: hs_token({"key": "hs512-key"}, SECRET * 2, "HS512")),
        ("b64", lambda: hs_token({"key": "b64-key"}, b"\x01" * 32)),
        ("rs", lambda: jwt.encode({"key": "rs-key"}, RSA_KEY, algorithm="RS256")),
        ("ps", lambda: jwt.encode({"key": "ps-key"}, RSA_KEY, algorithm="PS256")),
        ("es", lambda: jwt.encode({"key": "es-key"}, EC_KEY, algorithm="ES256")),
        ("ed", lambda: jwt.encode({"key": "ed-key"}, ED_KEY, algorithm="EdDSA")),
    ],
)
async def test_each_algorithm_verifies_with_the_consumers_key(username: str, token: Any) -> None:
    assert await accepted(token()) == username


async def test_the_token_may_come_raw_in_the_header_or_in_the_query_or_a_cookie() -> None:
    token = hs_token({"key": "hs-key"})
    plugin = JwtAuth(JwtAuthConfig())
    for ctx in (
        make_ctx([("Authorization", token)]),
        make_ctx([("Authorization", f"bearer {token}")]),
        make_ctx(query=f"a=1&jwt={token}"),
        make_ctx([("Cookie", f"theme=dark; jwt={token}; x=y")]),
    ):
        await plugin.rewrite(ctx)
        assert ctx.consumer is not None and ctx.consumer.username == "hs"


async def test_claims_that_pyjwt_would_check_but_apisix_does_not_are_left_alone() -> None:
    token = hs_token({"key": "hs-key", "aud": "someone", "iss": "x", "sub": 12, "iat": later(3600)})
    assert await accepted(token) == "hs"


async def test_a_custom_key_claim_and_the_kid_header_name_the_credential() -> None:
    assert await accepted(hs_token({"user": "hs-key"}), JwtAuthConfig(key_claim_name="user")) == "hs"
    assert await accepted(hs_token({"sub": "x"}, headers={"kid": "hs-key"})) == "hs"


async def test_store_in_ctx_keeps_the_verified_claims() -> None:
    ctx = make_ctx([("Authorization", hs_token({"key": "hs-key", "role": "admin"}))])
    await JwtAuth(JwtAuthConfig(store_in_ctx=True)).rewrite(ctx)
    assert ctx.vars["jwt_auth_payload"] == {"key": "hs-key", "role": "admin"}


async def test_hide_credentials_removes_the_token_wherever_it_came_from() -> None:
    token = hs_token({"key": "hs-key"})
    plugin = JwtAuth(JwtAuthConfig(hide_credentials=True))
    ctx = make_ctx([("Authorization", token), ("X-Other", "kept")])
    await plugin.rewrite(ctx)
    assert "Authorization" not in ctx.headers and ctx.headers["X-Other"] == "kept"
    ctx = make_ctx(query=f"a=1&jwt={token}&b=2")
    await plugin.rewrite(ctx)
    assert ctx.query == "a=1&b=2"
    ctx = make_ctx([("Cookie", f"theme=dark; jwt={token}; x=y")])
    await plugin.rewrite(ctx)
    assert ctx.headers.getall("Cookie") == ["theme=dark; x=y"]
    ctx = make_ctx([("Cookie", f"jwt={token}")])
    await plugin.rewrite(ctx)
    assert "Cookie" not in ctx.headers


# 2. hooks: refusals (THREATS 7)


async def test_no_token_is_missing_and_an_empty_one_is_invalid() -> None:
    with pytest.raises(GatewayError) as caught:
        await JwtAuth(JwtAuthConfig()).rewrite(make_ctx())
    assert (caught.value.status, caught.value.message) == (401, MISSING)
    assert caught.value.headers["WWW-Authenticate"] == 'Bearer realm="jwt"'
    # APISIX: a header that is there but empty (or just "Bearer ") is a token, and not a valid one.
    await refused("", message=INVALID)


async def test_an_anonymous_consumer_stands_in_for_a_missing_or_failed_token() -> None:
    config = JwtAuthConfig(anonymous_consumer="anonymous", hide_credentials=True)
    ctx = make_ctx()
    await JwtAuth(config).rewrite(ctx)
    assert ctx.consumer is not None and ctx.consumer.username == "anonymous"
    # APISIX: an expired or forged token falls back to the anonymous consumer too, and is not passed on.
    ctx = make_ctx([("Authorization", f"Bearer {hs_token({'key': 'hs-key'}, OTHER_SECRET)}")])
    await JwtAuth(config).rewrite(ctx)
    assert ctx.consumer is not None and ctx.consumer.username == "anonymous"
    assert "Authorization" not in ctx.headers
    assert await accepted(hs_token({"key": "hs-key"}), config) == "hs"


async def test_an_anonymous_consumer_that_does_not_exist_does_not_open_the_route() -> None:
    with pytest.raises(GatewayError) as caught:
        await JwtAuth(JwtAuthConfig(anonymous_consumer="ghost")).rewrite(make_ctx())
    assert (caught.value.status, caught.value.message) == (401, "Invalid user authorization")


async def test_alg_none_is_refused() -> None:
    await refused(jwt.encode({"key": "hs-key"}, None, algorithm="none"))
    await refused(forge({"alg": "none"}, {"key": "hs-key"}, b"")[:-43])


async def test_an_hs_token_signed_with_the_rsa_public_key_is_refused() -> None:
    # Algorithm confusion: the attacker knows the public key and uses it as an HMAC secret.
    token = forge({"alg": "HS256", "typ": "JWT"}, {"key": "rs-key"}, pem_public(RSA_KEY).encode())
    await refused(token)


async def test_an_algorithm_other_than_the_consumers_is_refused() -> None:
    await refused(hs_token({"key": "hs-key"}, SECRET * 2, "HS512"))  # consumer hs is HS256
    await refused(jwt.encode({"key": "rs-key"}, RSA_KEY, algorithm="RS512"))
    await refused(jwt.encode({"key": "rs-key"}, RSA_KEY, algorithm="PS256"))


async def test_unknown_key_and_bad_signature_get_the_same_answer() -> None:
    # APISIX says "Invalid user key in JWT token" for an unknown key; protogate does not tell which keys exist.
    await refused(hs_token({"key": "nobody"}))
    await refused(hs_token({"key": "hs-key"}, OTHER_SECRET))
    await refused(hs_token({"key": 42}))
    await refused(hs_token({"x": 1}, headers={"kid": "nobody"}))
    # A token without the key claim says so, as in APISIX: the caller already knows what it sent.
    await refused(hs_token({"sub": "no key claim"}), message=NO_KEY)


async def test_expired_and_not_yet_valid_tokens_are_refused() -> None:
    await refused(hs_token({"key": "hs-key", "exp": later(-5)}))
    await refused(hs_token({"key": "hs-key", "nbf": later(60)}))
    await refused(hs_token({"key": "hs-key", "exp": "tomorrow"}))


async def test_the_grace_period_allows_clock_skew_and_no_more() -> None:
    assert await accepted(hs_token({"key": "grace-key", "exp": later(-10)})) == "grace"
    assert await accepted(hs_token({"key": "grace-key", "nbf": later(10)})) == "grace"
    await refused(hs_token({"key": "grace-key", "exp": later(-60)}))


async def test_claims_to_verify_can_leave_exp_or_nbf_unchecked() -> None:
    expired = hs_token({"key": "hs-key", "exp": later(-60), "nbf": later(-120)})
    early = hs_token({"key": "hs-key", "exp": later(600), "nbf": later(60)})
    assert await accepted(expired, JwtAuthConfig(claims_to_verify=["nbf"])) == "hs"
    await refused(early, JwtAuthConfig(claims_to_verify=["nbf"]))
    assert await accepted(early, JwtAuthConfig(claims_to_verify=["exp"])) == "hs"


async def test_listed_claims_are_required_and_unlisted_ones_checked_when_present() -> None:
    # APISIX: with claims_to_verify set, a token without a listed claim is refused; without it (or with []),
    # exp and nbf are checked only when the token has them.
    bare = hs_token({"key": "hs-key"})
    assert await accepted(bare) == "hs"
    assert await accepted(bare, JwtAuthConfig(claims_to_verify=[])) == "hs"
    await refused(bare, JwtAuthConfig(claims_to_verify=["exp"]))
    await refused(hs_token({"key": "hs-key", "exp": later(-60)}), JwtAuthConfig(claims_to_verify=[]))
    assert await accepted(hs_token({"key": "hs-key", "exp": later(60)}), JwtAuthConfig(claims_to_verify=["exp"]))


async def test_a_huge_token_is_refused_before_it_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a huge token was parsed")

    monkeypatch.setattr(jwt_auth.jwt, "get_unverified_header", never)
    monkeypatch.setattr(jwt_auth.jwt, "decode", never)
    await refused(hs_token({"key": "hs-key", "pad": "x" * 9000}), message=INVALID)


@pytest.mark.parametrize(
    "token",
    [
        "abc",
        "a.b.c",
        "..",
        "e30.e30.",  # {} . {} . empty signature
        "bm90IGpzb24.e30.c2ln",  # header is not JSON
        base64.urlsafe_b64encode(b'{"alg":"HS256"}').decode().rstrip("=") + ".W10.c2ln",  # payload is a list
        "eyJhbGciOiJIUzI1NiJ9.eyJrZXkiOiJocy1rZXkifQ.!!!",
        "\u00e9\u00e9.\u00e9.\u00e9",
    ],
)
async def test_malformed_tokens_are_401_not_500(token: str) -> None:
    try:
        await refused(token, message=INVALID)
    except AssertionError:
        await refused(token, message=NO_KEY)  # parses, as `{}.{}.`, but names no key


async def test_two_token_headers_are_refused() -> None:
    token = hs_token({"key": "hs-key"})
    with pytest.raises(GatewayError) as caught:
        await JwtAuth(JwtAuthConfig()).rewrite(make_ctx([("Authorization", token), ("Authorization", token)]))
    assert caught.value.status == 401


async def test_mutated_tokens_only_ever_get_401() -> None:
    # A seeded random loop over a valid token: a mutation either still verifies or is a 401, never another error.
    rng = random.Random(1234)
    valid = hs_token({"key": "hs-key", "exp": later(600), "nbf": later(-600)})
    alphabet = 'ABCxyz019-_.=+/ "{}'
    plugin = JwtAuth(JwtAuthConfig())
    for _ in range(400):
        chars = list(valid)
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(len(chars))
            action = rng.random()
            if action < 0.5:
                chars[position] = rng.choice(alphabet)
            elif action < 0.75:
                del chars[position]
            else:
                chars.insert(position, rng.choice(alphabet))
        mutated = "".join(chars)
        ctx = make_ctx([("Authorization", mutated)])
        try:
            await plugin.rewrite(ctx)
        except GatewayError as err:
            assert err.status == 401
        else:
            assert ctx.consumer is not None and ctx.consumer.username == "hs"
