"""Test-only: the gateway with gRPC-Web and the native gRPC listener wired in, until runtime.py and cli.py do it.

Run: ``python tests/servers/grpc_gateway.py -c CONFIG --listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0``.
It applies, in this process, the same wiring the lead's patches add (a grpc upstream without
grpc-transcode -> GrpcWebTarget; with it -> GrpcWebSwitch; refusals of gRPC-Web requests re-sent as
gRPC-Web; a GrpcProxyServer beside the HTTP edge) and prints the ready lines `protogate run` will:
``protogate VERSION grpc listening on HOST:PORT`` and ``protogate VERSION listening on http://HOST:PORT``.

`start_grpc_gateway` starts `protogate run` itself once GatewaySettings has `grpc_listen`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

TESTS = Path(__file__).resolve().parent.parent
# Run as a script: the repo first (tests/gateway must never shadow the gateway package), tests/ for `processes`.
sys.path[:0] = [str(TESTS.parent)]
if str(TESTS) not in sys.path:
    sys.path.append(str(TESTS))

from processes import BIN, Process, start  # noqa: E402


def wired() -> bool:
    """True once `protogate run` serves gRPC itself (GatewaySettings has grpc_listen)."""
    from gateway.config.models import GatewaySettings

    return "grpc_listen" in GatewaySettings.model_fields


def start_grpc_gateway(config: dict[str, Any], path: Path) -> tuple[Process, str, str]:
    """Start a gateway serving HTTP and native gRPC on OS-picked ports: (process, http address, grpc address)."""
    if wired():
        document = {**config, "gateway": {**config.get("gateway", {}), "grpc_listen": "127.0.0.1:0"}}
        path.write_text(yaml.safe_dump(document))
        args = [str(BIN / "protogate"), "run", "-c", str(path), "--listen", "127.0.0.1:0"]
    else:
        path.write_text(yaml.safe_dump(config))
        args = [
            str(BIN / "python"),
            __file__,
            "-c",
            str(path),
            "--listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
        ]
    process = start(args)
    try:
        found: dict[str, str] = {}
        while len(found) < 2:  # either order
            line = process.wait_for("listening on ")
            if "grpc listening on " in line:
                found["grpc"] = line.rsplit("listening on ", 1)[1].strip()
            elif "listening on http://" in line:
                found["http"] = line.rsplit("http://", 1)[1].strip()
    except BaseException:
        process.stop()
        raise
    return process, found["http"], found["grpc"]


def _wire() -> None:
    import gateway.app as app_module
    from gateway.config.models import Upstream
    from gateway.grpc_web import GrpcWebSwitch, GrpcWebTarget, as_grpc_web
    from gateway.runtime import RouteTarget, Runtime
    from gateway.transcode import TranscodeTarget

    class WiredRuntime(Runtime):
        def _target(self, route_id: str, upstream: Upstream) -> RouteTarget:
            if upstream.scheme == "grpc" and self.loaded.plugin_config(route_id, "grpc-transcode") is None:
                return GrpcWebTarget(self._grpc_upstream(upstream))
            target = super()._target(route_id, upstream)
            if isinstance(target, TranscodeTarget):
                return GrpcWebSwitch(GrpcWebTarget(target.upstream), target)
            return target

    send = app_module.send_response

    async def send_response(request: Any, response: Any) -> Any:
        return await send(request, as_grpc_web(request.headers.get("Content-Type"), response))

    app_module.Runtime = WiredRuntime  # type: ignore[misc]
    app_module.send_response = send_response  # type: ignore[assignment]


async def _serve(config: Path, host: str, port: int, grpc_host: str, grpc_port: int) -> int:
    from aiohttp import web

    from gateway import __version__
    from gateway.app import build_app
    from gateway.cli import KEEPALIVE_TIMEOUT, _bound_address
    from gateway.config.loader import load_config
    from gateway.edge import EdgeRunner
    from gateway.grpc_proxy import GrpcProxyServer
    from gateway.keys import RUNTIME

    loaded = load_config(config)
    settings = loaded.config.gateway
    app = build_app(loaded)
    runner = EdgeRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=10.0,
        max_line_size=settings.max_uri_size,
        max_field_size=settings.max_header_size,
        max_headers=settings.max_header_count,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
        header_timeout=settings.client_header_timeout,
        body_timeout=settings.client_body_timeout,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    grpc_server = GrpcProxyServer(lambda: app[RUNTIME], grpc_host, grpc_port)
    await grpc_server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"protogate {__version__} grpc listening on {grpc_server.address}", flush=True)
    print(f"protogate {__version__} listening on http://{_bound_address(site)}", flush=True)
    await stop.wait()
    await grpc_server.stop(5.0)
    await runner.cleanup()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", required=True, type=Path)
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--grpc-listen", default="127.0.0.1:0")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    grpc_host, _, grpc_port = args.grpc_listen.rpartition(":")
    _wire()
    import uvloop

    return uvloop.run(_serve(args.config, host, int(port), grpc_host, int(grpc_port)))


if __name__ == "__main__":
    sys.exit(main())
