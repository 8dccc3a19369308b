"""gRPC calls and the plugin pipeline: the request view plugins read, and metadata into and out of the gateway."""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any, cast
from urllib.parse import unquote

import grpc
from aiohttp import HttpVersion, web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from gateway.consumers import ConsumerIndex
from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.upstream.http import strip_hop_by_hop
from transcoder.status import Code

Metadata = Iterable[tuple[str, str | bytes]]

log = logging.getLogger("protogate.grpc")

# "/" service "/" method, proto identifiers only: nothing to normalise, so routing and forwarding see one string.
GRPC_METHOD = re.compile(r"/[A-Za-z_][A-Za-z0-9_.]*/[A-Za-z_][A-Za-z0-9_]*")

# gRPC's own keys, HTTP/2's forbidden ones and what the channel sets itself: never copied from one call to another.
_NOT_COPIED = frozenset(
    {
        "content-type",
        "content-length",
        "te",
        "host",
        "user-agent",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "transfer-encoding",
        "trailer",
        "upgrade",
        "expect",
        "accept-encoding",
        "content-encoding",
    }
)
# Lower-case letters, digits, "-" and "."; "_" is left out, as at the HTTP edge (THREATS 6).
_KEY = re.compile(r"[0-9a-z.\-]+")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")


@dataclass(frozen=True)
class GrpcRequestView:
    """What plugins read from `ctx.request` (an aiohttp request at the HTTP edge) for a native gRPC call.

    Plugins read `headers`, `remote`, `host`, `scheme`, `raw_path` and `cookies`; `read_body` reads
    `content_length` and `body_exists`. A gRPC call's messages are never a plugin's body.
    """

    method: str
    path: str
    headers: CIMultiDictProxy[str]
    remote: str | None
    host: str
    scheme: str = "http"
    version: HttpVersion = field(default_factory=lambda: HttpVersion(2, 0))
    query: MultiDictProxy[str] = field(default_factory=lambda: MultiDictProxy(MultiDict()))
    cookies: Mapping[str, str] = field(default_factory=dict)
    content_length: int | None = None
    body_exists: bool = False
    query_string: str = ""
    app: Any = None  # the HTTP edge's aiohttp app: what plugins find there (the plugin runners) serves calls too
    writer: None = None  # the access log reads an aiohttp writer's byte count; gRPC's is not known here

    @property
    def raw_path(self) -> str:
        return self.path

    @property
    def secure(self) -> bool:
        return self.scheme == "https"

    @property
    def raw_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        return tuple((name.encode(), value.encode()) for name, value in self.headers.items())


def call_context(
    *,
    route_id: str,
    service_id: str | None,
    grpc_method: str,
    metadata: Metadata,
    peer: str,
    authority: str,
    consumers: ConsumerIndex,
    drop: Iterable[str] = (),
    secure: bool = False,
    app: Any = None,
) -> RequestContext:
    """The RequestContext of a native gRPC call: POST to the method path, metadata as headers, the peer's IP."""
    headers = metadata_headers(metadata, drop)
    view = call_view(grpc_method, headers, peer, authority, secure=secure, app=app)
    client_ip = view.remote or ""
    return RequestContext(
        # RequestContext names an aiohttp request; a view with the attributes plugins use stands in for one.
        request=cast(web.Request, view),
        route_id=route_id,
        service_id=service_id,
        method="POST",
        path=grpc_method,
        query="",
        headers=headers,
        client_ip=client_ip,
        consumers=consumers,
        body_limit=0,
    )


def call_view(
    grpc_method: str, headers: CIMultiDict[str], peer: str, authority: str, *, secure: bool = False, app: Any = None
) -> GrpcRequestView:
    """What a native gRPC call looks like to plugins and the access log (`headers` gets the Host)."""
    if authority:
        headers["Host"] = authority
    client_ip = peer_ip(peer)
    return GrpcRequestView(
        method="POST",
        path=grpc_method,
        headers=CIMultiDictProxy(CIMultiDict(headers)),
        remote=client_ip or None,
        host=authority,
        scheme="https" if secure else "http",
        app=app,
        cookies=_cookies(headers.getall("Cookie", [])),
    )


def metadata_headers(metadata: Metadata, drop: Iterable[str] = ()) -> CIMultiDict[str]:
    """A call's metadata as the header mapping plugins read: binary values base64 (as gRPC-Web sends them)."""
    dropped = {name.lower() for name in drop}
    headers: CIMultiDict[str] = CIMultiDict()
    for key, value in metadata:
        lower = key.lower()
        if lower in dropped or not _KEY.fullmatch(lower):
            continue
        if isinstance(value, bytes):
            headers.add(lower, base64.b64encode(value).decode("ascii"))
        elif _PRINTABLE.fullmatch(value):
            headers.add(lower, value)
    return headers


def upstream_metadata(
    headers: CIMultiDict[str], asserted: Iterable[tuple[str, str]], client_ip: str
) -> list[tuple[str, str | bytes]]:
    """The metadata a proxied call sends upstream: the request's headers as plugins left them.

    Hop-by-hop fields (and whatever Connection names) go first; then the gateway's own assertions
    (x-consumer-username) are added, so a client can neither forge nor strip them (THREATS 4, 5).
    The client's IP is appended to x-forwarded-for. A "-bin" value that is not base64 is refused.
    """
    kept = CIMultiDict(headers)
    strip_hop_by_hop(kept)
    own = list(asserted)
    own_keys = {key for key, _ in own}
    pairs: list[tuple[str, str | bytes]] = []
    forwarded_for: list[str] = []
    for name, value in kept.items():
        key = name.lower()
        if key == "x-forwarded-for":
            forwarded_for.append(value)
            continue
        if key in own_keys or key in _NOT_COPIED or key.startswith("grpc-") or not _KEY.fullmatch(key):
            continue
        if key.endswith("-bin"):
            pairs.append((key, decode_binary(value, key)))
        elif _PRINTABLE.fullmatch(value):
            pairs.append((key, value))
    chain = ", ".join([*forwarded_for, client_ip] if client_ip else forwarded_for)
    if chain and _PRINTABLE.fullmatch(chain):
        pairs.append(("x-forwarded-for", chain))
    pairs.extend(own)
    return pairs


def passed_metadata(metadata: Metadata | None) -> list[tuple[str, str | bytes]]:
    """An upstream's initial or trailing metadata as it may go to the client (status keys travel separately)."""
    kept: list[tuple[str, str | bytes]] = []
    for key, value in metadata or ():
        lower = key.lower()
        if lower in _NOT_COPIED or not _KEY.fullmatch(lower):
            continue
        if lower.startswith("grpc-") and lower != "grpc-status-details-bin":
            continue
        kept.append((lower, value))
    return kept


def decode_binary(value: str, key: str) -> bytes:
    """A "-bin" value: base64 in either alphabet, padded or not (clients differ)."""
    text = value.strip().replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise GatewayError(400, Code.INVALID_ARGUMENT, f"metadata {key} is not base64") from None


def peer_ip(peer: str) -> str:
    """The IP in a gRPC peer string (`ipv4:1.2.3.4:5`, `ipv6:%5B::1%5D:5`); "" for a Unix socket or anything else."""
    kind, _, rest = unquote(peer).partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6" and rest.startswith("["):
        return rest[1 : rest.find("]")]
    return ""


def _cookies(values: list[str]) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    for value in values:
        try:
            jar.load(value)
        except CookieError:
            continue
    return {name: morsel.value for name, morsel in jar.items()}


def unavailable_details(code: grpc.StatusCode, details: str, address: str) -> str:
    """The channel's own connect errors name internal addresses: those go to the log, not to the client."""
    if code == grpc.StatusCode.UNAVAILABLE and any(tag in details for tag in ("ipv4:", "ipv6:", "unix:", address)):
        log.warning("gRPC upstream %s unavailable: %s", address, details)
        return "upstream unavailable"
    return details
