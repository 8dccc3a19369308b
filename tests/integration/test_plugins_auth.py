"""End to end: basic-auth, jwt-auth and consumer-restriction in the real gateway, on HTTP and transcoded gRPC routes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from gateway_harness import Client, Gateway, gateway_with_http_upstream

SECRET = "jack-shares-this-secret-with-the-gw"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PUBLIC = (
    RSA_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)
CHALLENGE = 'Basic realm="basic"'  # APISIX's default realm


def http_route(id_: str, plugins: dict[str, Any]) -> dict[str, Any]:
    return {"id": id_, "uri": "/*", "host": f"{id_}.test", "upstream_id": "echo", "plugins": plugins}


def grpc_route(id_: str, plugins: dict[str, Any]) -> dict[str, Any]:
    transcode = {"grpc-transcode": {"proto_id": "bookstore", "service": "bookstore.v1.Bookstore"}}
    return {
        "id": f"{id_}-grpc",
        "uri": "/v1/*",
        "host": f"{id_}.grpc",
        "upstream_id": "bookstore",
        "plugins": transcode | plugins,
    }


def config(upstream_port: int, bookstore_port: int, descriptor_set: Path) -> dict[str, Any]:
    return {
        "protos": [{"id": "bookstore", "descriptor_set": str(descriptor_set)}],
        "upstreams": [
            {"id": "echo", "scheme": "http", "nodes": {f"127.0.0.1:{upstream_port}": 1}},
            {"id": "bookstore", "scheme": "grpc", "nodes": {f"127.0.0.1:{bookstore_port}": 1}},
        ],
        "consumer_groups": [{"id": "gold"}],
        "consumers": [
            {
                "username": "jack",
                "group_id": "gold",
                "plugins": {
                    "basic-auth": {"username": "jack2019", "password": "s3cret"},
                    "jwt-auth": {"key": "jack-key", "secret": SECRET},
                },
            },
            {
                "username": "rose",
                "plugins": {
                    "basic-auth": {"username": "rose2020", "password": "r0se"},
                    "jwt-auth": {"key": "rose-key", "public_key": RSA_PUBLIC, "algorithm": "RS256"},
                },
            },
            {
                "username": "mark",
                "plugins": {
                    "basic-auth": {"username": "mark", "password": "m4rk"},
                    # A consumer's own restriction: mark may use every route but this one. (As in APISIX it
                    # replaces a route's consumer-restriction for mark, so it lives on a consumer of its own.)
                    "consumer-restriction": {"type": "route_id", "blacklist": ["forbidden"]},
                },
            },
            {"username": "anonymous"},
        ],
        "routes": [
            http_route("open", {}),
            http_route("basic", {"basic-auth": {}}),
            http_route("basic-hide", {"basic-auth": {"hide_credentials": True}}),
            http_route("anon", {"basic-auth": {"anonymous_consumer": "anonymous"}}),
            http_route("jwt", {"jwt-auth": {}}),
            http_route("jwt-hide", {"jwt-auth": {"hide_credentials": True}}),
            http_route("restricted", {"basic-auth": {}, "consumer-restriction": {"whitelist": ["jack"]}}),
            http_route(
                "group", {"jwt-auth": {}, "consumer-restriction": {"type": "consumer_group_id", "whitelist": ["gold"]}}
            ),
            http_route("forbidden", {"basic-auth": {}}),
            grpc_route("basic", {"basic-auth": {"hide_credentials": True}}),
            grpc_route("jwt", {"jwt-auth": {}}),
            grpc_route("restricted", {"jwt-auth": {}, "consumer-restriction": {"whitelist": ["jack"]}}),
        ],
    }


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, bookstore: int, bookstore_descriptor_set: Path
) -> Iterator[Gateway]:
    with gateway_with_http_upstream(
        tmp_path_factory.mktemp("plugins-auth"), "auth", lambda port: config(port, bookstore, bookstore_descriptor_set)
    ) as gateway:
        yield gateway


@pytest.fixture
def client(gateway: Gateway) -> Client:
    return Client(gateway)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def b64url(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def jack_token(**claims: Any) -> str:
    return jwt.encode({"key": "jack-key", **claims}, SECRET, algorithm="HS256")


def rose_token(**claims: Any) -> str:
    return jwt.encode({"key": "rose-key", **claims}, RSA_KEY, algorithm="RS256")


def echo(client: Client, host: str, path: str = "/echo", **headers: str) -> tuple[int, Any, Any]:
    return client.get(path, headers={"Host": host, **headers})


def upstream_headers(body: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in body["headers"] if key.lower() == name.lower()]


def metadata(client: Client, host: str, **headers: str) -> tuple[int, Any, Any]:
    return client.get("/v1/debug/metadata", headers={"Host": host, **headers})


# basic-auth


def test_basic_auth_lets_a_consumer_through_and_names_it_upstream(client: Client) -> None:
    status, _, body = echo(client, "basic.test", Authorization=basic("jack2019", "s3cret"))
    assert status == 200, body
    assert upstream_headers(body, "X-Consumer-Username") == ["jack"]
    assert upstream_headers(body, "Authorization") == [basic("jack2019", "s3cret")]


def test_basic_auth_refusals_are_401_with_a_basic_challenge_and_reveal_nothing(client: Client) -> None:
    answers = {
        "missing": echo(client, "basic.test"),
        "malformed": echo(client, "basic.test", Authorization="Basic %%%"),
        "wrong password": echo(client, "basic.test", Authorization=basic("jack2019", "nope")),
        "unknown user": echo(client, "basic.test", Authorization=basic("nobody", "s3cret")),
    }
    for status, headers, body in answers.values():
        assert status == 401, body
        assert headers["WWW-Authenticate"] == CHALLENGE
        assert body["code"] == 16
    assert answers["wrong password"][2] == answers["unknown user"][2]
    assert answers["missing"][2]["message"] == "Missing authorization in request"


def test_basic_auth_hide_credentials_keeps_the_password_from_the_upstream(client: Client) -> None:
    status, _, body = echo(client, "basic-hide.test", Authorization=basic("jack2019", "s3cret"))
    assert status == 200, body
    assert upstream_headers(body, "Authorization") == []
    assert upstream_headers(body, "X-Consumer-Username") == ["jack"]


def test_basic_auth_anonymous_consumer(client: Client) -> None:
    status, _, body = echo(client, "anon.test")
    assert status == 200, body
    assert upstream_headers(body, "X-Consumer-Username") == ["anonymous"]
    # APISIX: a wrong password falls back to the anonymous consumer as well.
    status, _, body = echo(client, "anon.test", Authorization=basic("jack2019", "nope"))
    assert status == 200, body
    assert upstream_headers(body, "X-Consumer-Username") == ["anonymous"]


def test_basic_auth_on_a_grpc_route(client: Client) -> None:
    status, _, body = metadata(client, "basic.grpc", Authorization=basic("rose2020", "r0se"))
    assert status == 200, body
    assert body["metadata"]["x-consumer-username"] == "rose"
    assert "authorization" not in body["metadata"]  # hide_credentials
    status, headers, body = metadata(client, "basic.grpc", Authorization=basic("rose2020", "wrong"))
    assert (status, headers["WWW-Authenticate"], body["code"]) == (401, CHALLENGE, 16)


# jwt-auth


def test_jwt_auth_accepts_header_query_and_cookie(client: Client) -> None:
    token = jack_token(exp=int(time.time()) + 60)
    for status, _, body in (
        echo(client, "jwt.test", Authorization=f"Bearer {token}"),
        echo(client, "jwt.test", f"/echo?jwt={token}"),
        echo(client, "jwt.test", Cookie=f"jwt={token}"),
        echo(client, "jwt.test", Authorization=rose_token()),
    ):
        assert status == 200, body
    assert upstream_headers(body, "X-Consumer-Username") == ["rose"]


def test_jwt_auth_refusals_are_401(client: Client) -> None:
    now = int(time.time())
    # Algorithm confusion: an HS256 token whose HMAC key is rose's public key, which anyone may know.
    signing_input = f"{b64url(json.dumps({'alg': 'HS256'}))}.{b64url(json.dumps({'key': 'rose-key'}))}"
    signature = hmac.new(RSA_PUBLIC.encode(), signing_input.encode(), hashlib.sha256).digest()
    public_key_as_secret = f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"
    tokens = {
        "alg none": jwt.encode({"key": "jack-key"}, None, algorithm="none"),
        "hs token for an rs consumer": public_key_as_secret,
        "wrong algorithm": jwt.encode({"key": "jack-key"}, SECRET * 2, algorithm="HS512"),
        "unknown key": jwt.encode({"key": "ghost"}, SECRET, algorithm="HS256"),
        "bad signature": jwt.encode({"key": "jack-key"}, SECRET[::-1], algorithm="HS256"),
        "expired": jack_token(exp=now - 10),
        "not yet valid": jack_token(nbf=now + 60),
    }
    # APISIX's messages, except that an unknown key gets the words of a bad signature.
    for name, token in tokens.items():
        status, headers, body = echo(client, "jwt.test", Authorization=f"Bearer {token}")
        assert (status, body["message"]) == (401, "failed to verify jwt"), name
        assert headers["WWW-Authenticate"] == 'Bearer realm="jwt"'
    status, _, body = echo(client, "jwt.test", Authorization="Bearer not.a.jwt")
    assert (status, body["message"]) == (401, "JWT token invalid")
    status, _, body = echo(client, "jwt.test", Authorization=jwt.encode({"sub": "x"}, SECRET, algorithm="HS256"))
    assert (status, body["message"]) == (401, "missing user key in JWT token")
    status, _, body = echo(client, "jwt.test")
    assert (status, body["message"]) == (401, "Missing JWT token in request")
    # A huge token is refused; the edge's header limit (431) comes before the plugin's own 8 KiB limit (401).
    status, _, _ = echo(client, "jwt.test", Authorization=f"Bearer {jack_token(pad='x' * 9000)}")
    assert status in (401, 431)


def test_jwt_auth_hide_credentials(client: Client) -> None:
    token = jack_token()
    status, _, body = echo(client, "jwt-hide.test", f"/echo?a=1&jwt={token}", Cookie=f"jwt={token}; theme=dark")
    assert status == 200, body
    assert token not in body["path"] and "a=1" in body["path"]
    # The query carried the token; the cookie was not read, so it stays as sent.
    assert upstream_headers(body, "Cookie") == [f"jwt={token}; theme=dark"]
    status, _, body = echo(client, "jwt-hide.test", Authorization=f"Bearer {token}")
    assert status == 200 and upstream_headers(body, "Authorization") == []


def test_jwt_auth_on_a_grpc_route(client: Client) -> None:
    status, _, body = metadata(client, "jwt.grpc", Authorization=f"Bearer {rose_token()}")
    assert status == 200, body
    assert body["metadata"]["x-consumer-username"] == "rose"
    status, _, body = metadata(client, "jwt.grpc", Authorization=f"Bearer {jack_token(exp=int(time.time()) - 5)}")
    assert (status, body["code"]) == (401, 16)


# consumer-restriction


def test_consumer_restriction_whitelist_on_an_http_route(client: Client) -> None:
    status, _, _ = echo(client, "restricted.test", Authorization=basic("jack2019", "s3cret"))
    assert status == 200
    status, _, body = echo(client, "restricted.test", Authorization=basic("rose2020", "r0se"))
    assert (status, body["message"], body["code"]) == (403, "The consumer_name is forbidden.", 7)


def test_consumer_restriction_by_group(client: Client) -> None:
    assert echo(client, "group.test", Authorization=jack_token())[0] == 200
    status, _, body = echo(client, "group.test", Authorization=rose_token())
    message = "The request is rejected, please check the consumer_group_id for this request"
    assert (status, body["message"]) == (401, message)


def test_consumer_restriction_on_a_consumer_blocks_it_from_one_route(client: Client) -> None:
    assert echo(client, "forbidden.test", Authorization=basic("jack2019", "s3cret"))[0] == 200
    assert echo(client, "basic.test", Authorization=basic("mark", "m4rk"))[0] == 200
    status, _, body = echo(client, "forbidden.test", Authorization=basic("mark", "m4rk"))
    assert (status, body["message"]) == (403, "The route_id is forbidden.")


def test_consumer_restriction_on_a_grpc_route(client: Client) -> None:
    status, _, body = metadata(client, "restricted.grpc", Authorization=jack_token())
    assert status == 200 and body["metadata"]["x-consumer-username"] == "jack"
    status, _, body = metadata(client, "restricted.grpc", Authorization=rose_token())
    assert (status, body["code"], body["message"]) == (403, 7, "The consumer_name is forbidden.")


# THREATS 4: identity headers a client sends are never what the upstream sees


def test_a_client_cannot_forge_the_consumer_identity(client: Client) -> None:
    forged = {"X-Consumer-Username": "admin", "X-Credential-Identifier": "admin"}
    status, _, body = echo(client, "open.test", **forged)
    assert status == 200, body
    assert upstream_headers(body, "X-Consumer-Username") == []
    assert upstream_headers(body, "X-Credential-Identifier") == []
    status, _, body = echo(client, "basic.test", Authorization=basic("jack2019", "s3cret"), **forged)
    assert status == 200, body
    assert upstream_headers(body, "X-Consumer-Username") == ["jack"]


def test_a_client_cannot_forge_the_consumer_identity_in_grpc_metadata(client: Client) -> None:
    status, _, body = metadata(
        client,
        "jwt.grpc",
        Authorization=jack_token(),
        **{"X-Consumer-Username": "admin", "Grpc-Metadata-X-Consumer-Username": "admin"},
    )
    assert status == 200, body
    assert body["metadata"]["x-consumer-username"] == "jack"
