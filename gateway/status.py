"""Liveness and readiness for load balancers and orchestrators, on a port of their own (APISIX's status API).

The listener opens once the gateway serves a config. `GET /status` answers 200 while the process
serves. `GET /status/ready` answers 200, and 503 from the moment the gateway was asked to stop (so a
load balancer drains it while requests in flight finish). A node that keeps serving its last good config while
its store is away, or after refusing a change, is still ready (taking every node out because etcd
is down would turn an etcd outage into a full one), but the answer says so: `"status": "degraded"`
with the reasons. Nothing here needs the admin key, and nothing here reveals configuration.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from gateway.reload import ConfigManager

_MANAGER = web.AppKey("manager", ConfigManager)
_STOPPING = web.AppKey("stopping", asyncio.Event)


def build_status_app(manager: ConfigManager, stopping: asyncio.Event) -> web.Application:
    app = web.Application()
    app[_MANAGER] = manager
    app[_STOPPING] = stopping
    app.router.add_get("/status", _alive)
    app.router.add_get("/status/ready", _ready)
    return app


async def _alive(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _ready(request: web.Request) -> web.Response:
    status, body = readiness(request.app[_MANAGER], stopping=request.app[_STOPPING].is_set())
    return web.json_response(body, status=status)


def readiness(manager: ConfigManager, *, stopping: bool) -> tuple[int, dict[str, Any]]:
    """The HTTP status and body of /status/ready."""
    if stopping:
        return 503, {"status": "error", "error": "shutting down"}
    reasons: list[str] = []
    store_error = getattr(manager.store, "error", None)
    if store_error:
        reasons.append(f"serving the last good config: {store_error}")
    if manager.last_error is not None:
        paths = ", ".join(issue.path for issue in manager.last_error.issues[:5])
        reasons.append(f"serving the last good config: the store's latest change was refused ({paths})")
    body: dict[str, Any] = {"status": "degraded" if reasons else "ok", "config_revision": manager.revision}
    if reasons:
        body["reasons"] = reasons
    return 200, body
