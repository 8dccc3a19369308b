"""TLS on the native gRPC listener: the `ssls` certificates served by gRPC core, mutual TLS checked per call.

gRPC core picks the certificate itself: it holds one key/certificate pair per ssl object and, in the
handshake, presents the first pair whose certificate names match the client's SNI (the fallback pair,
listed first, when none does). Certificates follow the running config without a restart: gRPC asks
for the current set before each handshake, and gets a new one only when TlsEdge rebuilt something.

Mutual TLS: grpcio can either require a client certificate on every connection or never ask for
one (no optional request as the HTTPS listener has). With `require_client_cert` every handshake
needs a certificate from one of the configured client CAs; each call is then checked against the
ssl object its SNI selects, as on the HTTPS edge: an mTLS host admits only certificates issued by
its own `client.ca`, and only an mTLS host's certificate is handed to the pipeline (mtls-auth).
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from gateway.errors import GatewayError
from gateway.tls_edge import NO_CLIENT_CERT, SslEntry, TlsEdge
from transcoder.status import Code

log = logging.getLogger("protogate.tls")

# ssl.getpeercert()'s names for the subject attributes plugins read; the dotted OID for any other.
_ATTRIBUTE_NAMES = {
    NameOID.COMMON_NAME: "commonName",
    NameOID.ORGANIZATION_NAME: "organizationName",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "organizationalUnitName",
    NameOID.COUNTRY_NAME: "countryName",
    NameOID.STATE_OR_PROVINCE_NAME: "stateOrProvinceName",
    NameOID.LOCALITY_NAME: "localityName",
    NameOID.EMAIL_ADDRESS: "emailAddress",
}


class GrpcTls:
    """The gRPC listener's server credentials and per-call client-certificate check, following TlsEdge."""

    def __init__(self, edge: TlsEdge, *, require_client_cert: bool) -> None:
        self._edge = edge
        self.require_client_cert = require_client_cert
        self._served: object = None  # the TlsEdge generation gRPC core was last given
        self._served_cas: bytes | None = None

    def credentials(self) -> grpc.ServerCredentials:
        """Dynamic credentials: gRPC core calls the fetcher before each handshake, on one of its threads."""
        initial = self._configuration()
        if initial is None:
            raise ValueError("the gRPC listener has no certificate to serve: add an ssls object")
        return grpc.dynamic_ssl_server_credentials(
            initial, self._fetch, require_client_authentication=self.require_client_cert
        )

    def _configuration(self) -> Any:
        generation = self._edge.generation
        entries = self._edge.serving()
        if not entries:
            return None
        pairs = [(entry.bundle.plain_key_pem, entry.bundle.chain_pem) for entry in entries]
        cas = b"".join(entry.client_ca for entry in entries if entry.client_ca is not None) or None
        if self.require_client_cert and cas is None:
            return None  # gRPC core cannot verify client certificates without a CA: keep the last set
        self._served, self._served_cas = generation, cas
        return grpc.ssl_server_certificate_configuration(pairs, root_certificates=cas)

    def _fetch(self) -> Any:
        # An exception here would fail the handshake with no word of why: log and keep what serves.
        try:
            self._edge.refresh()
            if self._edge.generation is self._served:
                return None
            configuration = self._configuration()
            if configuration is None:
                log.error("grpc listener: no ssl object can serve (or none has client.ca): the last ones keep serving")
                self._served = self._edge.generation  # said once per change, not on every handshake
            return configuration
        except Exception:
            log.exception("grpc listener: reading the certificates failed; the last ones keep serving")
            return None

    def check_call(self, auth_context: dict[str, list[bytes]]) -> dict[str, Any] | None:
        """The client certificate a call may use (getpeercert()'s shape), or None; GatewayError when the
        ssl object the SNI selects needs a certificate from its own client CA and none came with the call."""
        server_name = _first(auth_context, "ssl_requested_server_name")
        entry = self._edge.select(server_name.decode("ascii", "replace") if server_name else None)
        if entry is None or not entry.context.mtls:
            return None
        pem = _first(auth_context, "x509_pem_cert")
        if pem is None:
            hint = "" if self.require_client_cert else " (the gRPC listener has require_client_cert off)"
            raise GatewayError(401, Code.UNAUTHENTICATED, NO_CLIENT_CERT + hint)
        certificate = x509.load_pem_x509_certificate(pem)
        if self._served_cas != entry.client_ca and not _issued_by(certificate, entry):
            # The handshake trusted every configured client CA; this host trusts its own only.
            raise GatewayError(401, Code.UNAUTHENTICATED, "the client certificate is not issued by this host's CA")
        return peercert_dict(certificate)


def _first(auth_context: dict[str, list[bytes]], key: str) -> bytes | None:
    values = auth_context.get(key)
    return values[0] if values else None


def _issued_by(certificate: x509.Certificate, entry: SslEntry) -> bool:
    """True when a certificate in the host's client.ca bundle signed this one (gRPC gives the leaf only)."""
    assert entry.client_ca is not None
    for issuer in x509.load_pem_x509_certificates(entry.client_ca):
        try:
            certificate.verify_directly_issued_by(issuer)
        except Exception:  # ValueError (names differ), TypeError (key types), InvalidSignature
            continue
        return True
    return False


def peercert_dict(certificate: x509.Certificate) -> dict[str, Any]:
    """The parts of ssl.getpeercert()'s dict plugins read: subject RDNs and subjectAltName pairs."""
    subject = tuple(
        tuple((_ATTRIBUTE_NAMES.get(attr.oid, attr.oid.dotted_string), str(attr.value)) for attr in rdn)
        for rdn in certificate.subject.rdns
    )
    try:
        san = list(certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        san = []
    # In the certificate's order, as getpeercert() (mtls-auth takes the first name a consumer has).
    names = tuple(pair for pair in map(_general_name, san) if pair is not None)
    return {"subject": subject, "subjectAltName": names}


def _general_name(name: x509.GeneralName) -> tuple[str, str] | None:
    if isinstance(name, x509.DNSName):
        return "DNS", name.value
    if isinstance(name, x509.UniformResourceIdentifier):
        return "URI", name.value
    if isinstance(name, x509.RFC822Name):
        return "email", name.value
    if isinstance(name, x509.IPAddress):
        return "IP Address", _ip(name.value)
    return None  # directory names, other names: no plugin matches them


def _ip(value: Any) -> str:
    # getpeercert() writes IPv6 addresses in full, uppercase (OpenSSL's form), IPv4 dotted.
    if isinstance(value, ipaddress.IPv6Address):
        return ":".join(f"{int(group, 16):X}" for group in value.exploded.split(":"))
    return str(value)
