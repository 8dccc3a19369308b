"""TLS on the native gRPC listener: a real gateway process, grpcio clients over TLS, SNI, mutual TLS, hot swap."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from gateway_harness import QUICKSTART, start_protogate
from google.protobuf import empty_pb2
from processes import Process
from tls_certs import CertificateAuthority, Issued, server_cert


@dataclass
class Pki:
    edge_ca: CertificateAuthority
    api: Issued
    wild: Issued
    secure: Issued
    partner: Issued
    alice: Issued  # from the clients CA: secure.test's clients
    bob: Issued
    carol: Issued  # from the partner CA: partner.test's clients
    mallory: Issued  # CN alice from a CA no ssl object trusts
    clients_ca: CertificateAuthority
    partner_ca: CertificateAuthority


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("grpcs-pki")
    edge = CertificateAuthority(directory, "edge")
    clients = CertificateAuthority(directory, "clients")
    partners = CertificateAuthority(directory, "partners")
    rogue = CertificateAuthority(directory / "rogue", "rogue")
    return Pki(
        edge_ca=edge,
        api=server_cert(edge, "api.test"),
        wild=server_cert(edge, "*.wild.test"),
        secure=server_cert(edge, "secure.test"),
        partner=server_cert(edge, "partner.test"),
        alice=clients.issue("alice", uris=("spiffe://test/alice",), client=True),
        bob=clients.issue("bob", client=True),
        carol=partners.issue("carol", client=True),
        mallory=rogue.issue("alice", client=True, file_name="mallory"),
        clients_ca=clients,
        partner_ca=partners,
    )


@pytest.fixture(scope="module")
def pb(bookstore_descriptor_set: Path) -> Iterator[SimpleNamespace]:
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(QUICKSTART / "generated"))
        from bookstore.v1 import bookstore_pb2, bookstore_pb2_grpc

        yield SimpleNamespace(m=bookstore_pb2, grpc=bookstore_pb2_grpc)


def ssl_object(ssl_id: str, issued: Issued, snis: list[str], client_ca: Path | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": ssl_id, "cert": str(issued.cert), "key": str(issued.key), "snis": snis}
    if client_ca is not None:
        entry["client"] = {"ca": str(client_ca)}
    return entry


def grpcs_config(pki: Pki, bookstore: int, *, require_client_cert: bool) -> dict[str, Any]:
    return {
        "gateway": {
            "grpc_listen": {"host": "127.0.0.1", "port": 0, "tls": True, "require_client_cert": require_client_cert}
        },
        "store": {"poll_interval": 0.2},
        "ssls": [
            ssl_object("api", pki.api, ["api.test"]),
            ssl_object("wild", pki.wild, ["*.wild.test"]),
            ssl_object("secure", pki.secure, ["secure.test"], pki.clients_ca.cert),
            ssl_object("partner", pki.partner, ["partner.test"], pki.partner_ca.cert),
        ],
        "upstreams": [{"id": "bookstore", "scheme": "grpc", "nodes": {f"127.0.0.1:{bookstore}": 1}}],
        "consumers": [
            {"username": "alice", "plugins": {"mtls-auth": {"san": "spiffe://test/alice"}}},
            {"username": "bob", "plugins": {"mtls-auth": {"cn": "bob"}}},
            {"username": "carol", "plugins": {"mtls-auth": {"cn": "carol"}}},
        ],
        "routes": [
            {
                "id": "echo",
                "uri": "/bookstore.v1.Bookstore/EchoHeaders",
                "upstream_id": "bookstore",
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
            {"id": "bookstore", "uri": "/bookstore.v1.Bookstore/*", "upstream_id": "bookstore"},
        ],
    }


@dataclass
class GrpcsGateway:
    process: Process
    port: int
    path: Path


def start_grpcs_gateway(path: Path, config: dict[str, Any]) -> GrpcsGateway:
    process, (line, _) = start_protogate(config, path, "grpc listening on", "listening on http://")
    assert line.endswith("(tls)"), line
    return GrpcsGateway(process, int(line.removesuffix(" (tls)").rsplit(":", 1)[1]), path)


@pytest.fixture
def gateways() -> Iterator[list[GrpcsGateway]]:
    started: list[GrpcsGateway] = []
    yield started
    for gateway in started:
        gateway.process.stop()


@pytest.fixture
def optional_certs(pki: Pki, bookstore: int, tmp_path: Path, gateways: list[GrpcsGateway]) -> GrpcsGateway:
    """A listener that asks no client for a certificate: mTLS hosts must refuse every call."""
    gateway = start_grpcs_gateway(tmp_path / "optional.yaml", grpcs_config(pki, bookstore, require_client_cert=False))
    gateways.append(gateway)
    return gateway


@pytest.fixture
def required_certs(pki: Pki, bookstore: int, tmp_path: Path, gateways: list[GrpcsGateway]) -> GrpcsGateway:
    gateway = start_grpcs_gateway(tmp_path / "required.yaml", grpcs_config(pki, bookstore, require_client_cert=True))
    gateways.append(gateway)
    return gateway


def channel(pki: Pki, port: int, server_name: str, client: Issued | None = None) -> grpc.Channel:
    key = client.key.read_bytes() if client is not None else None
    chain = client.cert.read_bytes() if client is not None else None
    credentials = grpc.ssl_channel_credentials(pki.edge_ca.cert.read_bytes(), key, chain)
    # The SNI and the name the gateway's certificate is checked against.
    options = [("grpc.ssl_target_name_override", server_name)]
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=options)


def echo(pb: SimpleNamespace, pki: Pki, port: int, server_name: str, client: Issued | None = None) -> dict[str, str]:
    with channel(pki, port, server_name, client) as ch:
        reply = pb.grpc.BookstoreStub(ch).EchoHeaders(empty_pb2.Empty(), timeout=10)
    return dict(reply.metadata)


def served_certificate(port: int, pki: Pki, server_name: str | None) -> bytes:
    """The DER certificate the listener presents for a server name (None: no SNI), read over a plain TLS socket."""
    context = ssl.create_default_context(cafile=str(pki.edge_ca.cert))
    context.check_hostname = False
    context.set_alpn_protocols(["h2"])  # gRPC servers finish only h2 handshakes
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def rpc_error(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_sni_picks_each_hosts_certificate_and_calls_reach_the_backend(
    pb: SimpleNamespace, pki: Pki, optional_certs: GrpcsGateway
) -> None:
    port = optional_certs.port
    assert served_certificate(port, pki, "api.test") == pki.api.der
    assert served_certificate(port, pki, "x.wild.test") == pki.wild.der
    assert served_certificate(port, pki, "secure.test") == pki.secure.der
    assert served_certificate(port, pki, None) == pki.api.der  # the fallback: the first ssl object
    with channel(pki, port, "api.test") as ch:
        shelves = pb.grpc.BookstoreStub(ch).ListShelves(pb.m.ListShelvesRequest(), timeout=10)
    assert shelves.shelves
    with channel(pki, port, "x.wild.test") as ch:
        assert pb.grpc.BookstoreStub(ch).ListShelves(pb.m.ListShelvesRequest(), timeout=10).shelves


def test_plaintext_client_gets_no_answer_from_a_tls_listener(pb: SimpleNamespace, optional_certs: GrpcsGateway) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{optional_certs.port}") as ch:
        err = rpc_error(lambda: pb.grpc.BookstoreStub(ch).ListShelves(pb.m.ListShelvesRequest(), timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_host_refuses_calls_when_the_listener_asks_no_certificate(
    pb: SimpleNamespace, pki: Pki, optional_certs: GrpcsGateway
) -> None:
    port = optional_certs.port
    err = rpc_error(lambda: echo(pb, pki, port, "secure.test", pki.alice))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "require_client_cert" in (err.details() or "")
    # Another host of the same listener serves without a certificate.
    with channel(pki, port, "api.test") as ch:
        assert pb.grpc.BookstoreStub(ch).ListShelves(pb.m.ListShelvesRequest(), timeout=10).shelves


def test_certificate_maps_to_a_consumer_limited_per_consumer(
    pb: SimpleNamespace, pki: Pki, required_certs: GrpcsGateway
) -> None:
    port = required_certs.port
    for _ in range(2):
        assert echo(pb, pki, port, "secure.test", pki.alice)["x-consumer-username"] == "alice"
    err = rpc_error(lambda: echo(pb, pki, port, "secure.test", pki.alice))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # bob has a budget of his own; the CN maps him.
    assert echo(pb, pki, port, "secure.test", pki.bob)["x-consumer-username"] == "bob"
    assert echo(pb, pki, port, "partner.test", pki.carol)["x-consumer-username"] == "carol"


def test_required_certificates_refuse_clients_without_one_or_from_an_unknown_ca(
    pb: SimpleNamespace, pki: Pki, required_certs: GrpcsGateway
) -> None:
    port = required_certs.port
    for client in (None, pki.mallory):
        err = rpc_error(lambda client=client: echo(pb, pki, port, "api.test", client))
        assert err.code() == grpc.StatusCode.UNAVAILABLE  # the handshake fails: no call reaches a route
    # Hosts without client.ca take any trusted client but hand its certificate to no plugin.
    with channel(pki, port, "api.test", pki.alice) as ch:
        assert pb.grpc.BookstoreStub(ch).ListShelves(pb.m.ListShelvesRequest(), timeout=10).shelves
    err = rpc_error(lambda: echo(pb, pki, port, "api.test", pki.alice))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.details() == "Missing client certificate"


def test_mtls_host_refuses_a_certificate_of_another_hosts_ca(
    pb: SimpleNamespace, pki: Pki, required_certs: GrpcsGateway
) -> None:
    err = rpc_error(lambda: echo(pb, pki, required_certs.port, "secure.test", pki.carol))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "not issued by this host's CA" in (err.details() or "")


def test_certificate_swapped_on_disk_serves_the_next_connection(
    pki: Pki, optional_certs: GrpcsGateway, tmp_path: Path
) -> None:
    port = optional_certs.port
    assert served_certificate(port, pki, "api.test") == pki.api.der
    original = pki.api.cert.read_bytes(), pki.api.key.read_bytes()
    renewed = server_cert(pki.edge_ca, "api.test", file_name="api-renewed")
    pki.api.key.write_bytes(renewed.key.read_bytes())  # key first: a mismatched pair is refused, not served
    pki.api.cert.write_bytes(renewed.cert.read_bytes())
    try:
        deadline = time.monotonic() + 15
        while served_certificate(port, pki, "api.test") != renewed.der:
            assert time.monotonic() < deadline, "the renewed certificate was not served"
            time.sleep(0.2)  # the gateway looks at the files at most once a second
        assert served_certificate(port, pki, "secure.test") == pki.secure.der
    finally:  # the module's other gateways read these files too
        pki.api.cert.write_bytes(original[0])
        pki.api.key.write_bytes(original[1])
