"""gateway/tls_grpc.py: the gRPC listener's certificates, their hot swap, and the per-call mTLS check."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from tls_certs import CertificateAuthority, Issued, server_cert

from gateway.config.loader import ConfigError, load_document
from gateway.config.models import Ssl, TlsListen
from gateway.errors import GatewayError
from gateway.tls_edge import TlsEdge
from gateway.tls_grpc import GrpcTls, peercert_dict


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("grpc-tls")
    edge = CertificateAuthority(directory, "edge")
    clients = CertificateAuthority(directory, "clients")
    partners = CertificateAuthority(directory, "partners")
    return {
        "edge": edge,
        "clients": clients,
        "partners": partners,
        "api": server_cert(edge, "api.test"),
        "secure": server_cert(edge, "secure.test"),
        "partner": server_cert(edge, "partner.test"),
        "alice": clients.issue("alice", uris=("spiffe://test/alice",), ips=("10.0.0.1", "2001:db8::1"), client=True),
        "carol": partners.issue("carol", dns=("carol.partner.test",), client=True),
    }


def _ssl(ssl_id: str, cert: Issued, snis: list[str], client_ca: CertificateAuthority | None = None) -> Ssl:
    document: dict[str, Any] = {"id": ssl_id, "cert": str(cert.cert), "key": str(cert.key), "snis": snis}
    if client_ca is not None:
        document["client"] = {"ca": str(client_ca.cert)}
    return Ssl.model_validate(document)


class Holder:
    """Stands in for the running config the edge follows."""

    def __init__(self, ssls: list[Ssl]) -> None:
        self.ssls = ssls

    def __call__(self) -> tuple[list[Ssl], Path]:
        return self.ssls, Path()


def _pem(issued: Issued) -> bytes:
    return issued.certificate.public_bytes(serialization.Encoding.PEM)


def _call(server_name: str | None, client: Issued | None = None) -> dict[str, list[bytes]]:
    """An auth context as grpcio hands it to a servicer."""
    context: dict[str, list[bytes]] = {"transport_security_type": [b"ssl"]}
    if server_name is not None:
        context["ssl_requested_server_name"] = [server_name.encode()]
    if client is not None:
        context["x509_pem_cert"] = [_pem(client)]
    return context


def test_peercert_dict_has_getpeercerts_subject_and_names(pki: dict[str, Any]) -> None:
    for name in ("alice", "carol"):
        issued: Issued = pki[name]
        expected = ssl._ssl._test_decode_cert(str(issued.cert))  # type: ignore[attr-defined]
        got = peercert_dict(issued.certificate)
        assert got["subject"] == expected["subject"]
        assert got["subjectAltName"] == expected["subjectAltName"]


def test_credentials_follow_the_config_and_keep_the_last_set_when_none_serves(pki: dict[str, Any]) -> None:
    holder = Holder([_ssl("api", pki["api"], ["api.test"])])
    tls = GrpcTls(TlsEdge(holder, TlsListen()), require_client_cert=False)
    assert tls.credentials() is not None
    assert tls._fetch() is None  # nothing changed: gRPC core keeps what it has
    holder.ssls = [*holder.ssls, _ssl("secure", pki["secure"], ["secure.test"], pki["clients"])]
    assert tls._fetch() is not None  # a reload added a certificate
    assert tls._fetch() is None
    holder.ssls = []
    assert tls._fetch() is None  # a listener cannot serve without a certificate: the last set stays


def test_required_client_certificates_need_a_client_ca(pki: dict[str, Any]) -> None:
    holder = Holder([_ssl("api", pki["api"], ["api.test"])])
    with pytest.raises(ValueError, match="no certificate"):
        GrpcTls(TlsEdge(holder, TlsListen()), require_client_cert=True).credentials()


def test_each_call_is_checked_against_the_ssl_object_of_its_sni(pki: dict[str, Any]) -> None:
    holder = Holder(
        [
            _ssl("api", pki["api"], ["api.test"]),
            _ssl("secure", pki["secure"], ["secure.test"], pki["clients"]),
            _ssl("partner", pki["partner"], ["partner.test"], pki["partners"]),
        ]
    )
    tls = GrpcTls(TlsEdge(holder, TlsListen()), require_client_cert=True)
    tls.credentials()
    assert tls.check_call(_call("api.test", pki["alice"])) is None  # not an mTLS host: no certificate handed on
    assert tls.check_call(_call(None)) is None  # no SNI: the fallback, api
    cert = tls.check_call(_call("secure.test", pki["alice"]))
    assert cert is not None and ("URI", "spiffe://test/alice") in cert["subjectAltName"]
    assert tls.check_call(_call("partner.test", pki["carol"])) is not None
    with pytest.raises(GatewayError, match="not issued by this host's CA") as refused:
        tls.check_call(_call("secure.test", pki["carol"]))
    assert refused.value.status == 401
    with pytest.raises(GatewayError, match=r"No required SSL certificate was sent$"):
        tls.check_call(_call("secure.test"))


def test_a_listener_that_asks_no_certificate_says_so_on_mtls_hosts(pki: dict[str, Any]) -> None:
    holder = Holder([_ssl("secure", pki["secure"], ["secure.test"], pki["clients"])])
    tls = GrpcTls(TlsEdge(holder, TlsListen()), require_client_cert=False)
    with pytest.raises(GatewayError, match="require_client_cert off"):
        tls.check_call(_call("secure.test"))


def _issues(document: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_document(document, base_dir=Path())
    return [str(issue) for issue in caught.value.issues]


def test_loader_refuses_a_tls_grpc_listener_it_cannot_serve(pki: dict[str, Any]) -> None:
    api = {"id": "api", "cert": str(pki["api"].cert), "key": str(pki["api"].key), "snis": ["api.test"]}
    (found,) = _issues({"gateway": {"grpc_listen": {"port": 0, "tls": True}}})
    assert found.startswith("gateway.grpc_listen.tls:") and "ssls" in found
    (found,) = _issues({"gateway": {"grpc_listen": {"port": 0, "require_client_cert": True}}})
    assert found.startswith("gateway.grpc_listen") and "require_client_cert needs tls" in found
    document = {"gateway": {"grpc_listen": {"port": 0, "tls": True, "require_client_cert": True}}, "ssls": [api]}
    (found,) = _issues(document)
    assert found.startswith("gateway.grpc_listen.require_client_cert:") and "client.ca" in found
    load_document({"gateway": {"grpc_listen": {"port": 0, "tls": True}}, "ssls": [api]}, base_dir=Path())
