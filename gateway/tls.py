"""TLS material: certificates and keys from files or inline PEM, checked at load; client TLS for upstreams and runners.

A config value that starts with `-----BEGIN` is PEM; anything else is a path relative to the config
file. An encrypted key takes its passphrase from the environment variable the config names, so no
secret sits in the document. The edge's per-SNI contexts live in gateway/tls_edge.py.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

_PEM = "-----BEGIN"
# Forward-secret AEAD suites only for TLS 1.2 (TLS 1.3 suites are all modern and set by OpenSSL).
MODERN_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!SHA1:!kRSA"


class TlsMaterialError(Exception):
    """A certificate, key or CA that cannot be used; `field` names the config field it came from."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def is_inline(value: str) -> bool:
    return value.lstrip().startswith(_PEM)


def material_path(value: str, base_dir: Path) -> Path | None:
    """The file a value names (None for inline PEM)."""
    if is_inline(value):
        return None
    path = Path(value)
    return path if path.is_absolute() else base_dir / path


def read_material(value: str, base_dir: Path, field: str, *, secret: bool = False) -> bytes:
    path = material_path(value, base_dir)
    if path is None:
        return value.strip().encode() + b"\n"
    try:
        return path.read_bytes()
    except OSError as exc:
        if secret:  # a key pasted without its -----BEGIN line is taken for a path: never echo it (logs, Admin API)
            reason = exc.strerror or type(exc).__name__
            raise TlsMaterialError(
                field, f"not PEM (no -----BEGIN line), nor a file that can be read: {reason}"
            ) from None
        raise TlsMaterialError(field, f"cannot read {path}: {exc.strerror or exc}") from None


def file_stamp(value: str | None, base_dir: Path) -> tuple[int, int] | None:
    """(mtime_ns, size) of the file a value names; None for inline PEM, absent values and missing files."""
    if value is None:
        return None
    path = material_path(value, base_dir)
    if path is None:
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _certificates(data: bytes, field: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise TlsMaterialError(field, f"not a PEM certificate: {exc}") from None
    if not certs:
        raise TlsMaterialError(field, "no PEM certificate found")
    return certs


def _passphrase(env: str | None, field: str) -> bytes | None:
    if env is None:
        return None
    value = os.environ.get(env)
    if value is None:
        raise TlsMaterialError(field, f"environment variable {env} (the key's passphrase) is not set")
    return value.encode()


@dataclass(frozen=True)
class CertBundle:
    """A certificate chain (leaf first) and its private key, checked to belong together."""

    chain_pem: bytes
    key_pem: bytes  # as configured: possibly encrypted
    password: bytes | None
    chain: tuple[x509.Certificate, ...]
    plain_key_pem: bytes  # unencrypted PKCS#8, in memory only (grpc takes no passphrase)

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    def names(self) -> list[str]:
        """The leaf's DNS names (SAN), else its CN."""
        try:
            san = self.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            dns = [str(name) for name in san.get_values_for_type(x509.DNSName)]
        except x509.ExtensionNotFound:
            dns = []
        if dns:
            return dns
        return [str(attr.value) for attr in self.leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def load_bundle(
    cert: str, key: str, base_dir: Path, *, passphrase_env: str | None = None, fields: tuple[str, str] = ("cert", "key")
) -> CertBundle:
    """Read, parse and cross-check a certificate chain and its key; TlsMaterialError names the field at fault."""
    cert_field, key_field = fields
    chain_pem = read_material(cert, base_dir, cert_field)
    chain = _certificates(chain_pem, cert_field)
    for index in range(len(chain) - 1):
        try:
            chain[index].verify_directly_issued_by(chain[index + 1])
        except Exception as exc:  # ValueError (names), TypeError (key types), InvalidSignature: no common base
            message = f"certificate {index + 1} of the chain is not issued by certificate {index + 2}"
            raise TlsMaterialError(cert_field, f"{message} ({type(exc).__name__})") from None
    key_pem = read_material(key, base_dir, key_field, secret=True)
    password = _passphrase(passphrase_env, "key_passphrase_env")
    try:
        private_key = serialization.load_pem_private_key(key_pem, password=password)
    except TypeError:
        if password is None:
            message = "the key is encrypted: name the variable with its passphrase in key_passphrase_env"
            raise TlsMaterialError(key_field, message) from None
        raise TlsMaterialError(key_field, "the key is not encrypted, but key_passphrase_env is set") from None
    except ValueError:
        hint = " or the passphrase is wrong" if password is not None else ""
        raise TlsMaterialError(key_field, f"not a PEM private key{hint}") from None
    public = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private_key.public_key().public_bytes(*public) != chain[0].public_key().public_bytes(*public):
        raise TlsMaterialError(key_field, "the key does not match the certificate (the first one in cert)")
    plain = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return CertBundle(chain_pem, key_pem, password, tuple(chain), plain)


def load_ca(value: str, base_dir: Path, field: str) -> bytes:
    """A CA bundle (one or more PEM certificates), checked to parse."""
    data = read_material(value, base_dir, field)
    _certificates(data, field)
    return data


@contextlib.contextmanager
def _pem_file(*parts: bytes) -> Iterator[str]:
    # ssl.SSLContext.load_cert_chain only reads files. The key is written as configured (still encrypted
    # when it was), into a private file that is removed as soon as OpenSSL has read it.
    fd, name = tempfile.mkstemp(prefix="protogate-tls-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                out.write(part if part.endswith(b"\n") else part + b"\n")
        yield name
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)


def load_into(context: ssl.SSLContext, bundle: CertBundle) -> None:
    """Give a context the bundle's chain and key."""
    with _pem_file(bundle.chain_pem, bundle.key_pem) as name:
        context.load_cert_chain(name, password=bundle.password)


def harden(context: ssl.SSLContext) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(MODERN_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION


@dataclass(frozen=True)
class ClientTls:
    """What an upstream or runner connection presents and trusts, read and checked once."""

    ca: bytes | None  # None: the system's trust store
    bundle: CertBundle | None  # the client certificate, for mutual TLS
    server_name: str | None
    verify: bool = True

    def ssl_context(self) -> ssl.SSLContext:
        """For aiohttp: verification as configured, TLS 1.2 minimum, the client certificate if any."""
        context = ssl.create_default_context(cadata=self.ca.decode() if self.ca is not None else None)
        harden(context)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.bundle is not None:
            load_into(context, self.bundle)
        return context

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        if self.bundle is None:
            return grpc.ssl_channel_credentials(root_certificates=self.ca)
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.bundle.plain_key_pem, certificate_chain=self.bundle.chain_pem
        )

    def grpc_options(self) -> tuple[tuple[str, object], ...]:
        if self.server_name is None:
            return ()
        # The name the backend's certificate is checked against (and sent as SNI and :authority).
        return (("grpc.ssl_target_name_override", self.server_name), ("grpc.default_authority", self.server_name))


def client_tls(
    *,
    ca: str | None,
    client_cert: str | None,
    client_key: str | None,
    key_passphrase_env: str | None,
    server_name: str | None,
    verify: bool,
    base_dir: Path,
) -> ClientTls:
    """Read and check a `tls` block (an upstream's or a runner's); TlsMaterialError names the field."""
    ca_pem = load_ca(ca, base_dir, "ca") if ca is not None else None
    bundle = None
    if client_cert is not None and client_key is not None:
        bundle = load_bundle(
            client_cert, client_key, base_dir, passphrase_env=key_passphrase_env, fields=("client_cert", "client_key")
        )
    return ClientTls(ca_pem, bundle, server_name, verify)


def client_tls_of(block: object, base_dir: Path) -> ClientTls:
    """client_tls() from a config model with the tls block's fields (UpstreamTls, RunnerTls)."""
    return client_tls(
        ca=getattr(block, "ca", None),
        client_cert=getattr(block, "client_cert", None),
        client_key=getattr(block, "client_key", None),
        key_passphrase_env=getattr(block, "key_passphrase_env", None),
        server_name=getattr(block, "server_name", None),
        verify=getattr(block, "verify", True),
        base_dir=base_dir,
    )


_TLS_WORDS = ("ssl", "tls", "handshake", "certificate", "verification", "peer name", "tsi_")


def tls_failure(details: str) -> bool:
    """True when a gRPC or connection error's text is about the TLS handshake (worth a log line of its own)."""
    lowered = details.lower()
    return any(word in lowered for word in _TLS_WORDS)
