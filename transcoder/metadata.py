"""HTTP headers <-> gRPC metadata, with grpc-gateway's default mapping; Grpc-Timeout parsing."""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Iterable

from transcoder.errors import TranscodeError
from transcoder.status import Code

METADATA_HEADER_PREFIX = "grpc-metadata-"  # Grpc-Metadata-Foo: foo, in both directions
PERMANENT_HEADER_PREFIX = "grpcgateway-"  # permanent HTTP headers travel under this prefix
RESPONSE_HEADER_PREFIX = "Grpc-Metadata-"
RESPONSE_TRAILER_PREFIX = "Grpc-Trailer-"

# grpc-gateway's isPermanentHTTPHeader: the IANA permanent request headers it forwards.
PERMANENT_HEADERS: frozenset[str] = frozenset(
    h.lower()
    for h in (
        "Accept",
        "Accept-Charset",
        "Accept-Language",
        "Accept-Ranges",
        "Authorization",
        "Cache-Control",
        "Content-Type",
        "Cookie",
        "Date",
        "Expect",
        "From",
        "Host",
        "If-Match",
        "If-Modified-Since",
        "If-None-Match",
        "If-Schedule-Tag-Match",
        "If-Unmodified-Since",
        "Max-Forwards",
        "Origin",
        "Pragma",
        "Referer",
        "User-Agent",
        "Via",
        "Warning",
    )
)
# W3C trace context passes unprefixed, so the backend's tracer continues the gateway's trace.
_PASS_THROUGH = frozenset({"traceparent", "tracestate"})
# Keys gRPC owns or HTTP/2 forbids: the channel refuses them or they would clash with its own.
_RESERVED_KEYS = frozenset(
    {
        "content-type",
        "te",
        "connection",
        "host",
        "user-agent",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)
# The gateway writes these itself from the request's peer and Host.
_FORWARDED_KEYS = frozenset({"x-forwarded-for", "x-forwarded-host"})

_VALID_KEY = re.compile(r"[0-9a-z_.\-]+")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
_GRPC_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def request_metadata(
    headers: Iterable[tuple[str, str]], *, peer_ip: str | None, host: str | None
) -> list[tuple[str, str | bytes]]:
    """gRPC metadata for an HTTP request's headers, as grpc-gateway's annotateContext builds it.

    Grpc-Metadata-X becomes x; permanent headers become grpcgateway-<name>, Authorization also plain
    authorization; traceparent/tracestate pass as they are; the rest is dropped. "-bin" values are
    base64-decoded; a value that does not decode raises TranscodeError(INVALID_ARGUMENT).
    x-forwarded-host and x-forwarded-for are added last.
    """
    pairs: list[tuple[str, str | bytes]] = []
    forwarded_for: list[str] = []
    forwarded_host: str | None = None
    for name, value in headers:
        lower = name.lower()
        if lower == "x-forwarded-for":
            forwarded_for.append(value)
            continue
        if lower == "x-forwarded-host":
            forwarded_host = forwarded_host or value
            continue
        if lower == "authorization":
            _add(pairs, "authorization", value, name)
        if lower in PERMANENT_HEADERS:
            _add(pairs, PERMANENT_HEADER_PREFIX + lower, value, name)
        elif lower.startswith(METADATA_HEADER_PREFIX):
            key = lower[len(METADATA_HEADER_PREFIX) :]
            if key not in _FORWARDED_KEYS:
                _add(pairs, key, value, name)
        elif lower in _PASS_THROUGH:
            _add(pairs, lower, value, name)
    # A client-sent X-Forwarded-Host names the host it first asked for; it wins over ours.
    forwarded_host = forwarded_host or host
    if forwarded_host and _PRINTABLE_ASCII.fullmatch(forwarded_host):
        pairs.append(("x-forwarded-host", forwarded_host))
    # Without a peer address (a Unix socket) the client's chain is still passed on as it came.
    chain = ", ".join([*forwarded_for, peer_ip] if peer_ip else forwarded_for)
    if chain and _PRINTABLE_ASCII.fullmatch(chain):
        pairs.append(("x-forwarded-for", chain))
    return pairs


def response_header_metadata(metadata: Iterable[tuple[str, str | bytes]]) -> list[tuple[str, str]]:
    """HTTP headers for a call's initial metadata: key foo-bar -> Grpc-Metadata-Foo-Bar."""
    return _response_headers(metadata, RESPONSE_HEADER_PREFIX)


def response_trailer_metadata(metadata: Iterable[tuple[str, str | bytes]]) -> list[tuple[str, str]]:
    """HTTP headers for a call's trailing metadata: key foo-bar -> Grpc-Trailer-Foo-Bar."""
    return _response_headers(metadata, RESPONSE_TRAILER_PREFIX)


HTTP_CODE_KEY = "x-http-code"
_HTTP_CODE = re.compile(r"[2-5][0-9][0-9]")


def http_status_override(
    metadata: Iterable[tuple[str, str | bytes]],
) -> tuple[int | None, list[tuple[str, str | bytes]]]:
    """grpc-gateway's documented status pattern: a backend picks the HTTP status of a successful answer by
    sending the initial metadata `x-http-code: 201` (its docs' forward-response option reads that key).

    Returns (the status, or None to keep 200; the metadata without the key). Only 200-599 is honoured; any
    other value is left in the metadata, so it shows up as a Grpc-Metadata-X-Http-Code header to debug.
    """
    pairs = list(metadata)
    for key, value in pairs:
        if key.lower() == HTTP_CODE_KEY:  # the first one decides, as metadata.MD.Get(...)[0] does
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
            if _HTTP_CODE.fullmatch(text.strip()) is None:
                return None, pairs
            return int(text), [pair for pair in pairs if pair[0].lower() != HTTP_CODE_KEY]
    return None, pairs


def parse_grpc_timeout(value: str) -> float:
    """A Grpc-Timeout header value (gRPC over HTTP/2: 1-8 digits and a unit H M S m u n) in seconds."""
    found = _GRPC_TIMEOUT.fullmatch(value)
    if found is None:
        raise TranscodeError(Code.INVALID_ARGUMENT, f'invalid Grpc-Timeout header "{value}"')
    return int(found.group(1)) * _TIMEOUT_UNITS[found.group(2)]


@functools.lru_cache(maxsize=1024)  # the same few metadata keys come back on every answer
def canonical_header_name(name: str) -> str:
    """Go textproto's canonical form: the first letter and each letter after "-" upper case."""
    return "-".join(word[:1].upper() + word[1:].lower() for word in name.split("-"))


def _add(pairs: list[tuple[str, str | bytes]], key: str, value: str, header: str) -> None:
    if not _VALID_KEY.fullmatch(key) or key.startswith("grpc-") or key in _RESERVED_KEYS:
        return
    if key.endswith("-bin"):
        pairs.append((key, _decode_binary(value, header)))
    elif _PRINTABLE_ASCII.fullmatch(value):
        # gRPC's ASCII-Value is printable ASCII; anything else would make the channel refuse the call.
        pairs.append((key, value))


def _decode_binary(value: str, header: str) -> bytes:
    """Base64 in either alphabet, padded or not: clients differ, and grpc-gateway accepts both paddings."""
    text = value.strip().replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise TranscodeError(Code.INVALID_ARGUMENT, f"invalid binary header {header}: not base64") from None


def _response_headers(metadata: Iterable[tuple[str, str | bytes]], prefix: str) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for key, value in metadata:
        lower = key.lower()
        # content-type and the status travel in their own fields, not as metadata headers.
        if lower == "content-type" or lower.startswith("grpc-status") or lower == "grpc-message":
            continue
        # Guards the header name against injection; gRPC itself only ever sends such keys.
        if not _VALID_KEY.fullmatch(lower):
            continue
        if lower.endswith("-bin"):
            raw = value if isinstance(value, bytes) else value.encode("utf-8")
            text = base64.b64encode(raw).decode("ascii")
        else:
            if isinstance(value, bytes):
                try:
                    text = value.decode("ascii")
                except UnicodeDecodeError:
                    continue
            else:
                text = value
            if not _PRINTABLE_ASCII.fullmatch(text):
                continue  # CR/LF would split the HTTP header
        headers.append((prefix + canonical_header_name(lower), text))
    return headers
