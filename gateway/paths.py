"""Request-target normalisation: one path string that routing, plugins and upstreams all agree on."""

from __future__ import annotations

import re

from gateway.errors import GatewayError

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(r"%(?P<hex>[0-9A-Fa-f]{2})|%")
# Characters that may stand raw in a path (RFC 3986 pchar plus "/"); anything else must be escaped.
_RAW_OK = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*$")


def split_target(target: str) -> tuple[str, str]:
    """Split a request-target into its raw path and raw query string."""
    if not target.startswith("/"):
        # absolute-form (`GET http://host/path`) is legal HTTP/1.1; keep only its path.
        scheme_end = target.find("://")
        if scheme_end < 0:
            raise GatewayError.bad_request(f"request target must be a path: {target[:64]!r}")
        slash = target.find("/", scheme_end + 3)
        target = target[slash:] if slash >= 0 else "/"
    path, _, query = target.partition("?")
    path = path.partition("#")[0]
    return path, query


def normalize_path(raw: str) -> str:
    """RFC 3986 normalisation of a raw (still percent-encoded) path.

    Escapes of unreserved characters are decoded (`%41` -> `A`, `%2e` -> `.`), other escapes are
    upper-cased and kept (`%2f` -> `%2F`, so an encoded slash never becomes a separator), dot
    segments are removed and repeated slashes merged. Everything that routes, authorizes or
    proxies a request uses this one string, so `//admin`, `/a/../admin` and `/%2e%2e/admin`
    cannot mean one thing to the router and another to the upstream.
    """
    if not raw.startswith("/"):
        raise GatewayError.bad_request("path must start with '/'")
    if _RAW_OK.match(raw) is None:
        raise GatewayError.bad_request("path has characters that must be percent-encoded")
    if "%" in raw:
        raw = _ESCAPE.sub(_decode_unreserved, raw)
    if "//" not in raw and "/." not in raw:
        return raw
    segments: list[str] = []
    for segment in raw.split("/")[1:]:
        if segment == "..":
            if segments:
                segments.pop()
        elif segment not in (".", ""):
            segments.append(segment)
    trailing = raw.endswith(("/", "/.", "/.."))
    path = "/" + "/".join(segments)
    return path + "/" if trailing and segments else path


def _decode_unreserved(match: re.Match[str]) -> str:
    hex_digits = match.group("hex")
    if hex_digits is None:
        raise GatewayError.bad_request("path has a '%' that starts no valid percent-escape")
    if hex_digits in ("00",):
        raise GatewayError.bad_request("path has an encoded NUL byte")
    char = chr(int(hex_digits, 16))
    return char if char in _UNRESERVED else "%" + hex_digits.upper()
