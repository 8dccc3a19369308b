"""The HTTPS edge: a context per `ssls` object, chosen by SNI in the handshake, swapped without a restart.

The listener's SSLContext has an SNI callback that hands each connection the context of the
ssl object whose `snis` match (exact names before `*.` wildcards; no match or no SNI: the
fallback). Contexts are rebuilt when the running config's `ssls` change (a reload) or when a
certificate, key or CA file changes on disk (checked at most once a second, on a handshake).
A rebuild that fails keeps the old context serving and logs why.

Mutual TLS: Python's ssl module cannot change the verify mode per SNI (OpenSSL's SSL_set_SSL_CTX
keeps the first context's), so while any ssl object has `client.ca` every handshake asks for an
optional certificate. An mTLS host's context trusts its own CA only; the other hosts' contexts
trust every configured client CA, so that a client sending its certificate everywhere is not
turned away there (one from an unknown CA is: OpenSSL cannot be told to ignore it). Whether a
certificate is required is decided per request (`TlsEdge.check_request`), against the ssl object
of the Host as well as of the SNI, so a client cannot reach an mTLS host through another host's
handshake; only an mTLS host's verified certificate is handed to the request.
"""

from __future__ import annotations

import logging
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config.models import Hsts, Ssl, TlsListen
from gateway.errors import GatewayError
from gateway.tls import CertBundle, TlsMaterialError, file_stamp, harden, load_bundle, load_ca, load_into
from transcoder.status import Code

log = logging.getLogger("protogate.tls")

CHECK_INTERVAL = 1.0  # seconds between two looks at the certificate files' mtimes
# APISIX's words (nginx's 400 for a missing client certificate).
NO_CLIENT_CERT = "No required SSL certificate was sent"


class EdgeContext(ssl.SSLContext):
    """A server context that knows the ssl object it was built from (read back from a connection)."""

    ssl_id: str = ""
    mtls: bool = False
    skip_mtls: tuple[re.Pattern[str], ...] = ()
    depth: int = 1


@dataclass
class SslEntry:
    config: Ssl
    base_dir: Path
    context: EdgeContext
    bundle: CertBundle
    stamps: tuple[tuple[int, int] | None, ...]
    client_ca: bytes | None  # this host's own client CA (mutual TLS)
    trusted: bytes  # what a host without client CA verifies presented certificates with: every client CA
    failed_stamps: tuple[tuple[int, int] | None, ...] | None = None  # the file state whose rebuild failed

    @property
    def id(self) -> str:
        return self.config.id


def _stamps(config: Ssl, base_dir: Path) -> tuple[tuple[int, int] | None, ...]:
    ca = config.client.ca if config.client is not None else None
    return tuple(file_stamp(value, base_dir) for value in (config.cert, config.key, ca))


def client_ca_of(config: Ssl, base_dir: Path) -> bytes | None:
    return load_ca(config.client.ca, base_dir, "client.ca") if config.client is not None else None


def ssl_issues(config: Ssl, base_dir: Path) -> list[tuple[str, str]]:
    """(field, message) for each thing wrong with an ssl object's material; [] when it can serve."""
    try:
        build_entry(config, base_dir)
    except TlsMaterialError as exc:
        return [(exc.field, exc.message)]
    except ssl.SSLError as exc:
        return [("cert", f"OpenSSL refused the certificate or key: {exc.reason or exc}")]
    return []


def build_entry(config: Ssl, base_dir: Path, trusted: bytes = b"") -> SslEntry:
    stamps = _stamps(config, base_dir)  # before reading: a change while reading is seen next time
    bundle = load_bundle(config.cert, config.key, base_dir, passphrase_env=config.key_passphrase_env)
    context = EdgeContext(ssl.PROTOCOL_TLS_SERVER)
    harden(context)
    context.set_alpn_protocols(["http/1.1"])
    load_into(context, bundle)
    context.ssl_id = config.id
    client_ca = client_ca_of(config, base_dir)
    if config.client is not None and client_ca is not None:
        context.load_verify_locations(cadata=client_ca.decode())
        context.verify_mode = ssl.CERT_OPTIONAL
        context.mtls = True
        context.depth = config.client.depth
        context.skip_mtls = tuple(re.compile(p) for p in config.client.skip_mtls_uri_regex)
        trusted = b""
    elif trusted:
        context.load_verify_locations(cadata=trusted.decode())
    return SslEntry(config, base_dir, context, bundle, stamps, client_ca, trusted)


def hsts_value(hsts: Hsts | None) -> str | None:
    if hsts is None:
        return None
    value = f"max-age={hsts.max_age}"
    if hsts.include_subdomains:
        value += "; includeSubDomains"
    if hsts.preload:
        value += "; preload"
    return value


@dataclass
class _Snapshot:
    entries: dict[str, SslEntry] = field(default_factory=dict)
    exact: dict[str, SslEntry] = field(default_factory=dict)
    wildcard: dict[str, SslEntry] = field(default_factory=dict)  # "example.com" for "*.example.com"
    fallback: SslEntry | None = None


class TlsEdge:
    """The per-SNI contexts of the HTTPS listener, following the running config's `ssls`."""

    def __init__(
        self,
        current: Callable[[], tuple[list[Ssl], Path]],
        settings: TlsListen,
        *,
        check_interval: float = CHECK_INTERVAL,
    ) -> None:
        self._current = current  # the running config's ssl objects and the directory their paths are relative to
        self.settings = settings
        self.hsts = hsts_value(settings.hsts)
        self._check_interval = check_interval
        self._built_from: list[Ssl] | None = None
        self._snapshot = _Snapshot()
        self._next_file_check = 0.0
        # The HTTPS listener's SNI callback runs on the event loop, the gRPC listener's certificate fetcher
        # on a gRPC core thread: one rebuild at a time.
        self._lock = threading.Lock()
        self.listener: ssl.SSLContext | None = None
        self.refresh(force=True)

    # -- the listener

    def listener_context(self) -> ssl.SSLContext:
        """The context the HTTPS site is built with; its SNI callback picks each connection's context."""
        context = EdgeContext(ssl.PROTOCOL_TLS_SERVER)
        harden(context)
        context.set_alpn_protocols(["http/1.1"])
        fallback = self._snapshot.fallback
        if fallback is not None:  # never used for a handshake (the callback always switches) but OpenSSL wants one
            load_into(context, fallback.bundle)
        context.sni_callback = self._sni
        self.listener = context
        self._listener_verify()
        return context

    def _listener_verify(self) -> None:
        if self.listener is not None:
            mtls = any(entry.context.mtls for entry in self._snapshot.entries.values())
            self.listener.verify_mode = ssl.CERT_OPTIONAL if mtls else ssl.CERT_NONE

    def _sni(self, connection: Any, server_name: str | None, _listener: ssl.SSLContext) -> int | None:
        try:
            self.refresh()
            entry = self.select(server_name)
            if entry is None:
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            connection.context = entry.context
        except Exception:  # an exception here would only surface as a failed handshake
            log.exception("choosing the certificate for %r failed", server_name)
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        return None

    # -- choosing

    def select(self, server_name: str | None, *, fallback: bool = True) -> SslEntry | None:
        snapshot = self._snapshot
        if server_name:
            name = server_name.lower().rstrip(".")
            entry = snapshot.exact.get(name)
            if entry is not None:
                return entry
            _, dot, parent = name.partition(".")
            if dot:
                entry = snapshot.wildcard.get(parent)
                if entry is not None:
                    return entry
        return snapshot.fallback if fallback else None

    def certificate_of(self, ssl_id: str) -> CertBundle | None:
        entry = self._snapshot.entries.get(ssl_id)
        return entry.bundle if entry is not None else None

    @property
    def generation(self) -> object:
        """Changes (by identity) whenever a certificate, key or CA is rebuilt, added or dropped."""
        return self._snapshot

    def serving(self) -> list[SslEntry]:
        """The entries that serve, the fallback first (the one a server without SNI support presents)."""
        snapshot = self._snapshot
        fallback = snapshot.fallback
        rest = [entry for entry in snapshot.entries.values() if entry is not fallback]
        return [fallback, *rest] if fallback is not None else rest

    # -- following the config and the files

    def refresh(self, *, force: bool = False) -> None:
        """Rebuild what changed: the config's ssl objects (checked by identity, cheap), files (once a second)."""
        ssls, base_dir = self._current()
        now = time.monotonic()
        files_due = force or now >= self._next_file_check
        if ssls is self._built_from and not files_due:
            return
        with self._lock:
            self._refresh(ssls, base_dir, now, files_due=files_due)

    def _refresh(self, ssls: list[Ssl], base_dir: Path, now: float, *, files_due: bool) -> None:
        if files_due:
            self._next_file_check = now + self._check_interval
        old = self._snapshot.entries
        entries: dict[str, SslEntry] = {}
        changed = ssls is not self._built_from
        # mTLS hosts first: the others trust every client CA they name.
        ordered = sorted(ssls, key=lambda c: c.client is None)
        trusted = b""
        for config in ordered:
            if config.client is None and not trusted:
                trusted = b"".join(e.client_ca for e in entries.values() if e.client_ca is not None)
            previous = old.get(config.id)
            if (
                previous is not None
                and previous.config == config
                and previous.base_dir == base_dir
                and (config.client is not None or previous.trusted == trusted)
            ):
                stamps = _stamps(config, base_dir)
                if stamps == previous.stamps or stamps == previous.failed_stamps:
                    entries[config.id] = previous
                    continue
            try:
                entries[config.id] = build_entry(config, base_dir, trusted)
            except (TlsMaterialError, ssl.SSLError, OSError) as exc:
                if previous is None:
                    log.error("ssl %s cannot serve: %s", config.id, exc)
                    continue
                previous.failed_stamps = _stamps(config, base_dir)
                entries[config.id] = previous
                log.error("ssl %s: the new certificate was refused, the old one keeps serving: %s", config.id, exc)
                continue
            changed = True
            if previous is not None:
                log.info("ssl %s: new certificate for %s", config.id, ", ".join(config.snis))
        self._built_from = ssls
        if changed or entries.keys() != old.keys():
            self._snapshot = self._index(entries, ssls)
            self._listener_verify()

    def _index(self, entries: dict[str, SslEntry], ssls: list[Ssl]) -> _Snapshot:
        snapshot = _Snapshot(entries=entries)
        for config in ssls:  # in config order: the first object listing a name serves it
            entry = entries.get(config.id)
            if entry is None:
                continue
            for sni in config.snis:
                if sni.startswith("*."):
                    snapshot.wildcard.setdefault(sni[2:], entry)
                else:
                    snapshot.exact.setdefault(sni, entry)
        fallback_sni = self.settings.fallback_sni
        if fallback_sni is not None:
            snapshot.fallback = snapshot.exact.get(fallback_sni.lower()) or snapshot.wildcard.get(
                fallback_sni.lower().partition(".")[2]
            )
        if snapshot.fallback is None:
            snapshot.fallback = next((entries[c.id] for c in ssls if c.id in entries), None)
        return snapshot

    # -- per request

    def check_request(self, request: Any, path: str) -> tuple[dict[str, Any] | None, GatewayError | None]:
        """The verified client certificate of a request's connection (getpeercert()'s dict, or None), and the
        refusal when the Host (or the SNI) is an mTLS host and no certificate from its CA came with it."""
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        by_host = self.select(_host_name(request.host), fallback=False)
        if ssl_object is None:  # plain HTTP
            if by_host is not None and by_host.context.mtls and not _skipped(by_host.context, path):
                return None, GatewayError(400, Code.FAILED_PRECONDITION, f"{NO_CLIENT_CERT} (this host needs HTTPS)")
            return None, None
        used = ssl_object.context
        cert = (ssl_object.getpeercert() or None) if isinstance(used, EdgeContext) and used.mtls else None
        required = by_host.context if by_host is not None and by_host.context.mtls else None
        if required is None and isinstance(used, EdgeContext) and used.mtls:
            required = used
        if required is None:
            return cert, None
        if not isinstance(used, EdgeContext) or used.ssl_id != required.ssl_id:
            # A certificate verified against another ssl object's CA says nothing about this host's clients.
            message = "the TLS server name does not select this host's certificate; connect with SNI of the Host"
            return None, GatewayError(421, Code.FAILED_PRECONDITION, message)
        if cert is None:
            if _skipped(required, path):
                return None, None
            return None, GatewayError(400, Code.FAILED_PRECONDITION, NO_CLIENT_CERT)
        chain = _verified_chain_length(ssl_object)
        if chain is not None and chain - 2 > required.depth:  # leaf and CA are not counted, as nginx's depth
            return None, GatewayError(400, Code.FAILED_PRECONDITION, "the client certificate chain is too deep")
        return cert, None


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host[1 : host.find("]")]
    return host.rpartition(":")[0] if ":" in host else host


def _skipped(context: EdgeContext, path: str) -> bool:
    return any(pattern.search(path) for pattern in context.skip_mtls)


def _verified_chain_length(ssl_object: Any) -> int | None:
    get_chain = getattr(ssl_object, "get_verified_chain", None)  # Python 3.13+
    if get_chain is None:
        return None
    try:
        return len(get_chain())
    except (ssl.SSLError, ValueError):
        return None
