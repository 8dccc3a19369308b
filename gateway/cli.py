"""The `protogate` command: run a gateway from a config file, validate one, or print its OpenAPI document."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from gateway import __version__
from gateway.app import build_app
from gateway.config.loader import ConfigError, LoadedConfig, load_config
from gateway.edge import EdgeRunner
from gateway.grpc_proxy import GrpcProxyServer
from gateway.keys import RUNTIME
from gateway.runner.supervisor import RunnerStartError
from gateway.telemetry import start_metrics_endpoint

log = logging.getLogger("protogate")

KEEPALIVE_TIMEOUT = 75.0  # seconds an idle keep-alive connection is kept (nginx's default; aiohttp's is an hour)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(args.func(args))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="protogate", description="A gRPC-aware API gateway.")
    parser.add_argument("--version", action="version", version=f"protogate {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="serve traffic from a config file", description="Serve traffic.")
    run.add_argument("-c", "--config", required=True, type=Path, help="YAML config file")
    run.add_argument(
        "--listen", type=_listen, help="HOST:PORT to serve on, overriding gateway.listen (port 0 picks one)"
    )
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.set_defaults(func=_run)

    validate = commands.add_parser(
        "validate", help="check a config file", description="Exit 0 if valid; else print every error, exit 1."
    )
    validate.add_argument("-c", "--config", required=True, type=Path, help="YAML config file")
    validate.add_argument(
        "--with-runners",
        action="store_true",
        help="also start the plugin_runners and have them check every ext-plugin config (default: structure only)",
    )
    validate.set_defaults(func=_validate)

    openapi = commands.add_parser(
        "openapi",
        help="print the OpenAPI document of the transcoded routes",
        description="Print the OpenAPI 3.1 document (JSON) for the grpc-transcode routes of a config.",
    )
    openapi.add_argument("-c", "--config", required=True, type=Path, help="YAML config file")
    openapi.add_argument("--route", action="append", help="only this route id (repeatable; default: all)")
    openapi.add_argument("-o", "--output", type=Path, help="write to this file instead of stdout")
    openapi.set_defaults(func=_openapi)
    return parser


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (port 0-65535), not {value!r}")
    return host.strip("[]"), int(port)


def _load_or_report(path: Path) -> LoadedConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        _report(path, exc)
        return None


def _report(path: Path, exc: ConfigError) -> None:
    count = len(exc.issues)
    print(f"{path}: invalid config ({count} error{'s' if count != 1 else ''}):", file=sys.stderr)
    for issue in exc.issues:
        print(f"  {issue}", file=sys.stderr)


def _validate(args: argparse.Namespace) -> int:
    loaded = _load_or_report(args.config)
    if loaded is None:
        return 1
    if args.with_runners and loaded.config.plugin_runners:
        from gateway.runner.startup import check_with_runners

        try:
            issues = asyncio.run(check_with_runners(loaded))
        except RunnerStartError as exc:
            print(f"protogate: {exc}", file=sys.stderr)
            return 1
        if issues:
            _report(args.config, ConfigError(issues))
            return 1
    config = loaded.config
    counts = f"{len(config.routes)} routes, {len(config.upstreams)} upstreams, {len(config.protos)} protos"
    print(f"{args.config}: ok ({counts})")
    return 0


def _openapi(args: argparse.Namespace) -> int:
    from gateway.openapi_endpoint import route_openapi

    loaded = _load_or_report(args.config)
    if loaded is None:
        return 1
    listen = loaded.config.gateway.listen
    host = f"[{listen.host}]" if ":" in listen.host else listen.host
    title = ", ".join(args.route) if args.route else "protogate"
    try:
        document = route_openapi(loaded, args.route, title=title, server_url=f"http://{host}:{listen.port}")
    except ValueError as exc:
        print(f"protogate openapi: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    loaded = _load_or_report(args.config)
    if loaded is None:
        return 1
    host, port = loaded.config.gateway.listen.host, loaded.config.gateway.listen.port
    if args.listen:
        listen_host, port = args.listen
        host = listen_host or host
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # uvloop is not on every platform; the default loop still works
        runner = asyncio.Runner()
    with runner:
        return runner.run(_serve(loaded, host, port))


async def _serve(loaded: LoadedConfig, host: str, port: int) -> int:
    settings = loaded.config.gateway
    app = build_app(loaded)
    # These go straight to each connection's handler (EdgeProtocol). `handler_args=` would be wrong here:
    # AppRunner forwards unknown kwargs, and aiohttp then silently drops every custom handler setting.
    web_runner = EdgeRunner(
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
    try:
        await web_runner.setup()  # starts the plugin runners and prepares every ext-plugin config with them
    except ConfigError as exc:
        await _cleanup_quietly(web_runner)
        _report(Path(exc.source or "config"), exc)
        return 1
    except RunnerStartError as exc:
        await _cleanup_quietly(web_runner)
        print(f"protogate: {exc}", file=sys.stderr)
        return 1
    site = web.TCPSite(web_runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await web_runner.cleanup()
        print(f"protogate: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return 1
    grpc_server: GrpcProxyServer | None = None
    if settings.grpc_listen is not None:
        # Read per call, so the listener follows the app's runtime (built by the app's cleanup_ctx in setup()).
        grpc_server = GrpcProxyServer(lambda: app[RUNTIME], settings.grpc_listen.host, settings.grpc_listen.port)
        try:
            await grpc_server.start()
        except OSError as exc:
            await web_runner.cleanup()
            print(f"protogate: {exc}", file=sys.stderr)
            return 1
    try:
        metrics_runner = await start_metrics_endpoint(app)  # its own port; None when metrics are off
    except OSError as exc:
        await web_runner.cleanup()
        print(f"protogate: cannot serve metrics: {exc}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before the ready line: a SIGTERM right after it is graceful
        loop.add_signal_handler(sig, stop.set)
    if grpc_server is not None:
        print(f"protogate {__version__} grpc listening on {grpc_server.address}", flush=True)
    bound = _bound_address(site)
    print(f"protogate {__version__} listening on http://{bound}", flush=True)
    await stop.wait()
    log.info("shutting down")
    if metrics_runner is not None:
        await metrics_runner.cleanup()
    if grpc_server is not None:
        await grpc_server.stop(10.0)
    await web_runner.cleanup()
    return 0


async def _cleanup_quietly(web_runner: EdgeRunner) -> None:
    try:
        await web_runner.cleanup()
    except Exception:  # a failed start-up may leave nothing to clean; the first error is the one to report
        log.debug("cleanup after a failed start-up", exc_info=True)


def _bound_address(site: web.TCPSite) -> str:
    server = site._server  # aiohttp exposes no public accessor for the bound socket
    if server is not None and server.sockets:  # type: ignore[union-attr]
        host, port = server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return site.name


if __name__ == "__main__":
    sys.exit(main())
