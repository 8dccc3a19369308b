"""Who may call the Admin API: the socket peer within allow_admin, then the admin key (constant time)."""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from gateway.admin.responses import error_response
from gateway.config.models import AdminSettings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
KEY_HEADER = "X-API-KEY"


class AdminKeyRequired(Exception):
    """The Admin API would listen beyond loopback without a key: the gateway refuses to start (THREATS 2)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name could resolve anywhere


def admin_key(settings: AdminSettings) -> tuple[str, bool]:
    """The key to require, and whether it was generated (then the caller prints it once)."""
    if settings.key is not None:
        return settings.key, False
    host = settings.listen.host
    if not is_loopback(host):
        raise AdminKeyRequired(
            f"the Admin API would listen on {host}:{settings.listen.port} without a key: "
            "set admin.key, or listen on a loopback address (127.0.0.1) to get a generated one"
        )
    return secrets.token_urlsafe(32), True


def peer_address(request: web.Request) -> str:
    # The socket's peer, never a forwarded header (THREATS 3); request.remote may be rewritten by middlewares.
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple | list) and peer:
        return str(peer[0])
    return ""


def allowed(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def auth_middleware(
    settings: AdminSettings, key: str
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    networks = [ipaddress.ip_network(cidr, strict=False) for cidr in settings.allow_admin]
    expected = key.encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not allowed(peer_address(request), networks):
            return error_response(403, "this address may not use the Admin API (allow_admin)")
        given = request.headers.get(KEY_HEADER)
        if given is None:
            return error_response(401, f"missing admin key ({KEY_HEADER} header)")
        if not hmac.compare_digest(given.encode(), expected):
            return error_response(401, "wrong admin key")
        return await handler(request)

    return check
