"""TLS end to end: a real gateway process with an HTTPS listener, SNI, mutual TLS, hot swap, TLS upstreams."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from gateway_harness import QUICKSTART, start_protogate
from processes import BIN, REPO, Process, start
from tls_certs import CertificateAuthority, Issued, server_cert

HTTP_UPSTREAM = REPO / "tests" / "servers" / "http_upstream.py"


@dataclass
class Pki:
    directory: Path
    edge_ca: CertificateAuthority
    client_ca: CertificateAuthority
    rogue_ca: CertificateAuthority
    backend_ca: CertificateAuthority
    api: Issued
    shop: Issued
    wild: Issued
    default: Issued
    secure: Issued
    alice: Issued
    bob: Issued
    mallory: Issued  # CN alice, from another CA
    grpc_backend: Issued
    http_backend: Issued
    gateway_client: Issued  # the gateway's own certificate towards backends that want mutual TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    edge = CertificateAuthority(directory, "edge")
    clients = CertificateAuthority(directory, "clients")
    rogue = CertificateAuthority(directory / "rogue", "rogue")
    backend = CertificateAuthority(directory, "backend")
    return Pki(
        directory=directory,
        edge_ca=edge,
        client_ca=clients,
        rogue_ca=rogue,
        backend_ca=backend,
        api=server_cert(edge, "api.test"),
        shop=server_cert(edge, "shop.test"),
        wild=server_cert(edge, "*.wild.test"),
        default=server_cert(edge, "default.test"),
        secure=server_cert(edge, "secure.test"),
        alice=clients.issue("alice", uris=("spiffe://test/alice",), client=True),
        bob=clients.issue("bob", client=True),
        mallory=rogue.issue("alice", client=True, file_name="mallory"),
        grpc_backend=backend.issue("bookstore.internal", dns=("bookstore.internal",), ips=("127.0.0.1",)),
        http_backend=backend.issue("echo.internal", dns=("echo.internal",)),
        gateway_client=backend.issue("gateway", client=True),
    )


@dataclass
class TlsGateway:
    process: Process
    http_port: int
    https_port: int


def start_tls_gateway(path: Path, config: dict[str, Any]) -> TlsGateway:
    process, (https, plain) = start_protogate(config, path, "listening on https://", "listening on http://")
    return TlsGateway(process, int(plain.rsplit(":", 1)[1]), int(https.rsplit(":", 1)[1]))


@pytest.fixture
def gateways() -> Iterator[list[TlsGateway]]:
    started: list[TlsGateway] = []
    yield started
    for gateway in started:
        gateway.process.stop()


def _start_http_upstream(*args: str) -> tuple[Process, int]:
    process = start([str(BIN / "python"), str(HTTP_UPSTREAM), "--port", "0", *args])
    line = process.wait_for("listening on")
    return process, int(line.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def echo_upstream() -> Iterator[int]:
    process, port = _start_http_upstream("--name", "plain")
    yield port
    process.stop()


def client_context(pki: Pki, client: Issued | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.edge_ca.cert))
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    return context


def served_certificate(port: int, context: ssl.SSLContext, server_name: str | None) -> bytes:
    """The DER certificate the gateway presents for a server name (None: a client that sends no SNI)."""
    if server_name is None:
        context.check_hostname = False
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with context.wrap_socket(raw, server_hostname=server_name) as tls:
        der = tls.getpeercert(binary_form=True)
        assert tls.selected_alpn_protocol() in (None, "http/1.1")
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    assert der is not None
    return der


def https_get(
    port: int, context: ssl.SSLContext, server_name: str, path: str, host: str | None = None
) -> tuple[int, http.client.HTTPMessage, Any]:
    # The socket is wrapped here, so that the SNI is the name given while the connection goes to loopback.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    conn.sock = context.wrap_socket(raw, server_hostname=server_name)
    try:
        conn.request("GET", path, headers={"Host": host or server_name})
        response = conn.getresponse()
        raw_body = response.read()
        body = json.loads(raw_body) if "json" in (response.getheader("Content-Type") or "") else raw_body
        return response.status, response.headers, body
    finally:
        conn.close()


def http_get(port: int, path: str, host: str) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def ssl_object(ssl_id: str, cert: Issued, snis: list[str], **extra: Any) -> dict[str, Any]:
    return {"id": ssl_id, "cert": str(cert.cert), "key": str(cert.key), "snis": snis, **extra}


def edge_config(pki: Pki, echo_port: int) -> dict[str, Any]:
    upstream = {"id": "echo", "nodes": {f"127.0.0.1:{echo_port}": 1}, "timeout": {"connect": 1, "read": 3}}
    return {
        "gateway": {
            "tls_listen": {
                "host": "127.0.0.1",
                "port": 0,
                "fallback_sni": "default.test",
                "hsts": {"max_age": 600, "include_subdomains": True},
            }
        },
        "store": {"poll_interval": 0.2},
        "ssls": [
            ssl_object("api", pki.api, ["api.test"]),
            ssl_object("shop", pki.shop, ["shop.test"]),
            ssl_object("wild", pki.wild, ["*.wild.test"]),
            ssl_object("default", pki.default, ["default.test"]),
            ssl_object("secure", pki.secure, ["secure.test"], client={"ca": str(pki.client_ca.cert)}),
        ],
        "upstreams": [upstream],
        "consumers": [
            {"username": "alice", "plugins": {"mtls-auth": {"san": "spiffe://test/alice"}}},
            {"username": "bob", "plugins": {"mtls-auth": {"cn": "bob"}}},
        ],
        "routes": [
            {
                "id": "secure",
                "host": "secure.test",
                "uri": "/echo/*",
                "upstream_id": "echo",
                "plugins": {
                    "mtls-auth": {},
                    "limit-count": {
                        "count": 2,
                        "time_window": 60,
                        "key_type": "var",
                        "key": "consumer_name",
                        "rejected_code": 429,
                    },
                },
            },
            {"id": "plain", "uri": "/echo/*", "upstream_id": "echo"},
            {
                "id": "to-https",
                "uri": "/login",
                "upstream_id": "echo",
                "plugins": {"redirect": {"http_to_https": True}},
            },
        ],
    }


@pytest.fixture
def edge(pki: Pki, echo_upstream: int, tmp_path: Path, gateways: list[TlsGateway]) -> TlsGateway:
    gateway = start_tls_gateway(tmp_path / "edge.yaml", edge_config(pki, echo_upstream))
    gateways.append(gateway)
    return gateway


def test_sni_picks_the_certificate_of_each_host(pki: Pki, edge: TlsGateway) -> None:
    context = client_context(pki)
    assert served_certificate(edge.https_port, context, "api.test") == pki.api.der
    assert served_certificate(edge.https_port, context, "shop.test") == pki.shop.der
    assert served_certificate(edge.https_port, context, "a.wild.test") == pki.wild.der
    assert served_certificate(edge.https_port, client_context(pki), None) == pki.default.der  # no SNI: fallback
    context.check_hostname = False
    assert served_certificate(edge.https_port, context, "unknown.test") == pki.default.der


def test_listen_entries_with_tls_open_https_listeners_beside_plain_ones(
    pki: Pki, echo_upstream: int, tmp_path: Path, gateways: list[TlsGateway]
) -> None:
    config = edge_config(pki, echo_upstream)
    # APISIX style: `listen` entries, some with tls; tls_listen keeps only the HTTPS settings.
    config["gateway"]["listen"] = [
        {"host": "127.0.0.1", "port": 0},
        {"host": "127.0.0.1", "port": 0, "tls": True},
        {"host": "127.0.0.1", "port": 0, "tls": True},
    ]
    config["gateway"]["tls_listen"] = {"fallback_sni": "default.test", "hsts": {"max_age": 600}}
    path = tmp_path / "entries.yaml"
    path.write_text(yaml.safe_dump(config))
    process = start([str(BIN / "protogate"), "run", "-c", str(path)])
    gateways.append(TlsGateway(process, 0, 0))
    https_ports = [int(process.wait_for("listening on https://").rsplit(":", 1)[1]) for _ in range(2)]
    plain_port = int(process.wait_for("listening on http://").rsplit(":", 1)[1])
    assert len(set(https_ports)) == 2
    for port in https_ports:
        assert served_certificate(port, client_context(pki), "shop.test") == pki.shop.der
        assert served_certificate(port, client_context(pki), None) == pki.default.der
        status, headers, _ = https_get(port, client_context(pki), "api.test", "/echo/x")
        assert (status, headers["Strict-Transport-Security"]) == (200, "max-age=600")
    assert http_get(plain_port, "/echo/x", "api.test")[0] == 200


def test_https_answers_with_hsts_and_plain_http_redirects(pki: Pki, edge: TlsGateway) -> None:
    status, headers, body = https_get(edge.https_port, client_context(pki), "api.test", "/echo/x")
    assert status == 200 and body["path"] == "/echo/x"
    assert headers["Strict-Transport-Security"] == "max-age=600; includeSubDomains"
    forwarded = dict((name.lower(), value) for name, value in body["headers"])
    assert forwarded["x-forwarded-proto"] == "https"
    status, headers, _ = http_get(edge.http_port, "/login?next=1", "api.test")
    assert status == 301 and headers["Location"] == "https://api.test/login?next=1"
    assert "Strict-Transport-Security" not in headers  # never over plain HTTP (RFC 6797 7.2)


def test_mtls_host_maps_the_certificate_to_a_consumer_limited_per_consumer(pki: Pki, edge: TlsGateway) -> None:
    alice = client_context(pki, pki.alice)
    for _ in range(2):
        status, _, body = https_get(edge.https_port, alice, "secure.test", "/echo/a")
        assert status == 200
        assert ["X-Consumer-Username", "alice"] in body["headers"]
    status, _, body = https_get(edge.https_port, alice, "secure.test", "/echo/a")
    assert status == 429
    status, _, body = https_get(edge.https_port, client_context(pki, pki.bob), "secure.test", "/echo/b")
    assert status == 200 and ["X-Consumer-Username", "bob"] in body["headers"]  # bob has his own count


def test_mtls_host_refuses_a_client_without_certificate_and_other_hosts_do_not(pki: Pki, edge: TlsGateway) -> None:
    anonymous = client_context(pki)
    status, _, body = https_get(edge.https_port, anonymous, "secure.test", "/echo/a")
    assert status == 400 and body["message"] == "No required SSL certificate was sent"
    status, _, _ = https_get(edge.https_port, anonymous, "api.test", "/echo/a")
    assert status == 200
    # A client that presents its certificate everywhere is served on a host without mTLS too.
    status, _, _ = https_get(edge.https_port, client_context(pki, pki.bob), "api.test", "/echo/a")
    assert status == 200
    # A handshake for another host does not open the mTLS host, nor does plain HTTP.
    status, _, _ = https_get(edge.https_port, client_context(pki, pki.alice), "api.test", "/echo/a", host="secure.test")
    assert status == 421
    status, _, _ = http_get(edge.http_port, "/echo/a", "secure.test")
    assert status == 400


def test_client_certificate_from_another_ca_is_refused(pki: Pki, edge: TlsGateway) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        https_get(edge.https_port, client_context(pki, pki.mallory), "secure.test", "/echo/a")
    status, _, _ = https_get(edge.https_port, client_context(pki, pki.alice), "secure.test", "/echo/ok")
    assert status == 200  # and the listener keeps serving


def _wait_for_certificate(port: int, context: ssl.SSLContext, name: str, der: bytes, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if served_certificate(port, context, name) == der:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} still gets the old certificate after {timeout}s")
        time.sleep(0.1)


def test_certificate_files_swapped_on_disk_serve_the_next_connection(
    pki: Pki, echo_upstream: int, tmp_path: Path, gateways: list[TlsGateway]
) -> None:
    live = CertificateAuthority(tmp_path / "live", "live")
    first = server_cert(live, "api.test")
    config = edge_config(pki, echo_upstream)
    config["ssls"] = [ssl_object("api", first, ["api.test"])]
    del config["gateway"]["tls_listen"]["fallback_sni"]
    gateway = start_tls_gateway(tmp_path / "swap.yaml", config)
    gateways.append(gateway)
    context = ssl.create_default_context(cafile=str(live.cert))
    assert served_certificate(gateway.https_port, context, "api.test") == first.der

    renewed = live.issue("renewed", dns=("api.test",))
    first.cert.write_bytes(renewed.cert.read_bytes())
    first.key.write_bytes(renewed.key.read_bytes())
    _wait_for_certificate(gateway.https_port, context, "api.test", renewed.der)

    # A broken renewal (a key of another certificate) is refused: the last good one keeps serving.
    first.key.write_bytes(live.issue("other", dns=("x.test",)).key.read_bytes())
    time.sleep(1.3)
    assert served_certificate(gateway.https_port, context, "api.test") == renewed.der
    assert "the new certificate was refused" in "".join(gateway.process.output)


def test_certificate_changed_in_the_config_file_serves_the_next_connection(
    pki: Pki, echo_upstream: int, tmp_path: Path, gateways: list[TlsGateway]
) -> None:
    config = edge_config(pki, echo_upstream)
    path = tmp_path / "reload.yaml"
    gateway = start_tls_gateway(path, config)
    gateways.append(gateway)
    context = client_context(pki)
    assert served_certificate(gateway.https_port, context, "api.test") == pki.api.der

    renewed = pki.edge_ca.issue("api-renewed", dns=("api.test",))
    config["ssls"][0] = {"id": "api", "cert": renewed.cert_pem, "key": renewed.key_pem, "snis": ["api.test"]}
    path.write_text(yaml.safe_dump(config))
    _wait_for_certificate(gateway.https_port, context, "api.test", renewed.der)

    # A key that does not match is refused at load, with its field path; the running one keeps serving.
    config["ssls"][0] = {"id": "api", "cert": renewed.cert_pem, "key": pki.shop.key_pem, "snis": ["api.test"]}
    path.write_text(yaml.safe_dump(config))
    gateway.process.wait_for("ssls[0].key: the key does not match the certificate", timeout=10)
    assert served_certificate(gateway.https_port, context, "api.test") == renewed.der


def test_encrypted_key_takes_its_passphrase_from_the_environment(
    pki: Pki, echo_upstream: int, tmp_path: Path, gateways: list[TlsGateway], monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = pki.edge_ca.issue("locked", dns=("api.test",), passphrase="s3cret")
    config = edge_config(pki, echo_upstream)
    config["ssls"] = [ssl_object("api", locked, ["api.test"], key_passphrase_env="API_KEY_PASSPHRASE")]
    del config["gateway"]["tls_listen"]["fallback_sni"]
    monkeypatch.setenv("API_KEY_PASSPHRASE", "s3cret")
    gateway = start_tls_gateway(tmp_path / "locked.yaml", config)
    gateways.append(gateway)
    assert served_certificate(gateway.https_port, client_context(pki), "api.test") == locked.der


# -- upstreams over TLS


@pytest.fixture(scope="module")
def grpcs_backend(pki: Pki, bookstore_descriptor_set: Path) -> Iterator[int]:
    cert = pki.grpc_backend
    process = start(
        [
            str(BIN / "python"),
            str(QUICKSTART / "server.py"),
            "--port",
            "0",
            "--name",
            "tls-backend",
            "--tls-cert",
            str(cert.cert),
            "--tls-key",
            str(cert.key),
            "--tls-client-ca",
            str(pki.backend_ca.cert),
        ]
    )
    line = process.wait_for("listening on")
    yield int(line.rsplit(":", 1)[1])
    process.stop()


@pytest.fixture(scope="module")
def https_backend(pki: Pki) -> Iterator[int]:
    cert = pki.http_backend
    process, port = _start_http_upstream("--name", "tls", "--tls-cert", str(cert.cert), "--tls-key", str(cert.key))
    yield port
    process.stop()


def _transcode_route(route_id: str, upstream_id: str, host: str) -> dict[str, Any]:
    return {
        "id": route_id,
        "host": host,
        "uri": "/v1/*",
        "upstream_id": upstream_id,
        "plugins": {"grpc-transcode": {"proto_id": "bookstore", "service": "bookstore.v1.Bookstore"}},
    }


def test_grpcs_and_https_upstreams_verify_their_backends(
    pki: Pki,
    grpcs_backend: int,
    https_backend: int,
    bookstore_descriptor_set: Path,
    tmp_path: Path,
    gateways: list[TlsGateway],
) -> None:
    def grpcs(upstream_id: str, server_name: str) -> dict[str, Any]:
        tls = {
            "ca": str(pki.backend_ca.cert),
            "server_name": server_name,
            "client_cert": str(pki.gateway_client.cert),
            "client_key": str(pki.gateway_client.key),
        }
        nodes = {f"127.0.0.1:{grpcs_backend}": 1}
        return {"id": upstream_id, "scheme": "grpcs", "nodes": nodes, "tls": tls, "timeout": {"connect": 1, "read": 3}}

    def https(upstream_id: str, server_name: str) -> dict[str, Any]:
        tls = {"ca": str(pki.backend_ca.cert), "server_name": server_name}
        nodes = {f"127.0.0.1:{https_backend}": 1}
        return {"id": upstream_id, "scheme": "https", "nodes": nodes, "tls": tls, "timeout": {"connect": 1, "read": 3}}

    config = {
        "gateway": {"tls_listen": {"host": "127.0.0.1", "port": 0}},
        "ssls": [ssl_object("api", pki.api, ["api.test"])],
        "protos": [{"id": "bookstore", "descriptor_set": str(bookstore_descriptor_set)}],
        "upstreams": [
            grpcs("books", "bookstore.internal"),
            grpcs("books-wrong-name", "wrong.internal"),
            https("echo", "echo.internal"),
            https("echo-wrong-name", "wrong.internal"),
        ],
        "routes": [
            _transcode_route("books", "books", "ok.test"),
            _transcode_route("books-wrong", "books-wrong-name", "bad.test"),
            {"id": "echo", "host": "echo.test", "uri": "/echo/*", "upstream_id": "echo"},
            {"id": "echo-wrong", "host": "bad-echo.test", "uri": "/echo/*", "upstream_id": "echo-wrong-name"},
        ],
    }
    gateway = start_tls_gateway(tmp_path / "upstreams.yaml", config)
    gateways.append(gateway)

    status, _, body = http_get(gateway.http_port, "/v1/shelves", "ok.test")
    assert status == 200, body
    assert json.loads(body)["shelves"]
    status, _, body = http_get(gateway.http_port, "/echo/hi", "echo.test")
    assert status == 200 and json.loads(body)["server"] == "tls"

    status, _, body = http_get(gateway.http_port, "/v1/shelves", "bad.test")
    assert status == 503, body
    gateway.process.wait_for("TLS handshake failed", timeout=5)
    status, _, body = http_get(gateway.http_port, "/echo/hi", "bad-echo.test")
    assert status == 502 and json.loads(body)["message"] == "upstream connection failed"
    line = gateway.process.wait_for("upstream connection failed", timeout=5)
    assert "certificate verify failed" in line.lower() or "hostname mismatch" in line.lower(), line


def test_grpcs_backend_requiring_a_client_certificate_refuses_a_gateway_without_one(
    pki: Pki, grpcs_backend: int, bookstore_descriptor_set: Path, tmp_path: Path, gateways: list[TlsGateway]
) -> None:
    tls = {"ca": str(pki.backend_ca.cert), "server_name": "bookstore.internal"}
    config = {
        "gateway": {"tls_listen": {"host": "127.0.0.1", "port": 0}},
        "ssls": [ssl_object("api", pki.api, ["api.test"])],
        "protos": [{"id": "bookstore", "descriptor_set": str(bookstore_descriptor_set)}],
        "upstreams": [
            {
                "id": "books",
                "scheme": "grpcs",
                "nodes": {f"127.0.0.1:{grpcs_backend}": 1},
                "tls": tls,
                "timeout": {"connect": 1, "read": 3},
            }
        ],
        "routes": [_transcode_route("books", "books", "api.test")],
    }
    gateway = start_tls_gateway(tmp_path / "nocert.yaml", config)
    gateways.append(gateway)
    status, _, _ = https_get(gateway.https_port, client_context(pki), "api.test", "/v1/shelves")
    assert status == 503
