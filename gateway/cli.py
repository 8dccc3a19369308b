"""The `protogate` command: run a gateway from a config file, validate one, or print its OpenAPI document."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import ValidationError

from gateway import __version__
from gateway.app import build_app
from gateway.config.loader import (
    ConfigError,
    ConfigIssue,
    LoadedConfig,
    load_document,
    read_config_document,
    schema_issues,
)
from gateway.config.models import AdminSettings, Config, ListenAddress, Ssl, TlsListen
from gateway.edge import EdgeRunner
from gateway.grpc_proxy import GrpcProxyServer
from gateway.keys import CONFIG_MANAGER, TELEMETRY, TLS_EDGE
from gateway.runner.supervisor import RunnerStartError
from gateway.store.base import ConfigStore, Snapshot
from gateway.telemetry import start_metrics_endpoint
from gateway.tls_grpc import GrpcTls

if TYPE_CHECKING:
    from gateway.reload import ConfigManager
    from gateway.tls_edge import TlsEdge

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
        "--listen",
        type=_listen,
        metavar="HOST:PORT",
        help="serve plain HTTP here instead of the first gateway.listen (PORT alone keeps its host; 0 picks one)",
    )
    run.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        metavar="LEVEL",
        help="debug, info (the default), warning or error",
    )
    run.set_defaults(func=_run)

    validate = commands.add_parser(
        "validate",
        help="check a config file",
        description="Run the checks `run` does at start-up (the store's resources included): "
        "exit 0 if the config would start, else print every error with its field path and exit 1.",
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

    export = commands.add_parser(
        "export",
        help="print the config with the store's resources, as YAML `protogate run` accepts",
        description="Print the config file's settings and the resources its store holds now (standalone form).",
    )
    export.add_argument("-c", "--config", required=True, type=Path, help="YAML config file")
    export.add_argument("-o", "--output", type=Path, help="write to this file instead of stdout")
    export.set_defaults(func=_export)
    return parser


def _listen(value: str) -> tuple[str, int]:
    """HOST:PORT, [V6]:PORT, or a bare PORT (host "": the first listener's)."""
    host, sep, port = value.rpartition(":")
    if not port.isdigit() or int(port) > 65535 or (not sep and not value.isdigit()):
        raise argparse.ArgumentTypeError(f"expected HOST:PORT or PORT (port 0-65535), not {value!r}")
    return host.strip("[]"), int(port)


def _load_or_report(path: Path) -> LoadedConfig | None:
    """The config `run` would serve (the store's resources included), or None once the errors are printed."""

    async def load() -> LoadedConfig | None:
        started = await _open_config(path)
        if started is None:
            return None
        loaded, store, _, _ = started
        await store.close()
        return loaded

    return asyncio.run(load())


def _report(path: Path, exc: ConfigError) -> None:
    count = len(exc.issues)
    if count == 1 and not exc.issues[0].path:  # the file as a whole: unreadable, not YAML, not a mapping
        print(f"{path}: {exc.issues[0].message}", file=sys.stderr)
        return
    print(f"{path}: invalid config ({count} error{'s' if count != 1 else ''}):", file=sys.stderr)
    for issue in exc.issues:
        print(f"  {issue}", file=sys.stderr)


def _start_up_issues(config: Config) -> list[ConfigIssue]:
    """What `run` refuses after the document loads, so that `validate` refuses it too."""
    from gateway.admin.auth import AdminKeyRequired, admin_key

    issues = []
    if config.admin is not None:
        try:
            admin_key(config.admin)
        except AdminKeyRequired as exc:
            issues.append(ConfigIssue("admin.key", str(exc)))
    return issues


def _validate(args: argparse.Namespace) -> int:
    loaded = _load_or_report(args.config)
    if loaded is None:
        return 1
    issues = _start_up_issues(loaded.config)
    if issues:
        _report(args.config, ConfigError(issues))
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
    listen = loaded.config.gateway.listen[0]
    host = f"[{listen.host}]" if ":" in listen.host else listen.host
    title = ", ".join(args.route) if args.route else "protogate"
    server_url = f"{'https' if listen.tls else 'http'}://{host}:{listen.port}"
    try:
        document = route_openapi(loaded, args.route, title=title, server_url=server_url)
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
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # uvloop is not on every platform; the default loop still works
        runner = asyncio.Runner()
    with runner:
        return runner.run(_start(args))


async def _start(args: argparse.Namespace) -> int:
    """Read the config file, open its store, load what the store holds, then serve it."""
    from gateway.reload import settings_of

    started = await _open_config(args.config)
    if started is None:
        return 1
    loaded, store, snapshot, document = started
    plain = loaded.config.gateway.http_addresses()
    if args.listen:  # in place of the first plain listener (or as one, when all are HTTPS)
        listen_host, port = args.listen
        first_host = plain[0][0] if plain else "0.0.0.0"
        plain = [(listen_host or first_host, port), *plain[1:]]
    try:
        return await _serve(loaded, plain, document_settings=settings_of(document), store=store, snapshot=snapshot)
    finally:
        await store.close()  # closed twice when the manager took it: both stores allow that


async def _open_config(path: Path) -> tuple[LoadedConfig, ConfigStore, Snapshot, dict[str, Any]] | None:
    from gateway.reload import open_store, settings_of, with_objects
    from gateway.store.base import RESOURCE_KINDS, StoreError

    try:
        document = await asyncio.to_thread(read_config_document, path)
        store_settings = Config.model_validate({"store": document.get("store") or {}}).store
    except ConfigError as exc:
        _report(path, exc)
        return None
    except ValidationError:
        _report(path, ConfigError([i for i in schema_issues(document) if i.path.startswith("store")]))
        return None
    if store_settings.type != "standalone":
        inline = [kind for kind in RESOURCE_KINDS if document.get(kind)]
        if inline:
            where = ", ".join(inline)
            print(
                f"protogate: {path}: with store type {store_settings.type} the resources live in the store; "
                f"move {where} there (or use the Admin API)",
                file=sys.stderr,
            )
            return None
    try:
        store = open_store(store_settings, path)
        snapshot = await store.snapshot()
    except (StoreError, ValueError) as exc:
        # In standalone mode the store is this file: its shape errors have field paths, so give those.
        issues = schema_issues(document) if store_settings.type == "standalone" else []
        if issues:
            _report(path, ConfigError(issues))
        else:
            print(f"protogate: cannot read the config store ({store_settings.type}): {exc}", file=sys.stderr)
        return None
    whole = with_objects(settings_of(document), snapshot.objects)
    try:
        loaded = await asyncio.to_thread(load_document, whole, base_dir=path.parent)
    except ConfigError as exc:
        await store.close()
        source = path if store_settings.type == "standalone" else Path(f"{path} (store: {store_settings.type})")
        _report(source, exc)
        return None
    return loaded, store, snapshot, document


def _export(args: argparse.Namespace) -> int:
    import yaml

    from gateway.reload import settings_of, with_objects

    async def read() -> dict[str, Any] | None:
        started = await _open_config(args.config)
        if started is None:
            return None
        _, store, snapshot, document = started
        await store.close()
        settings = settings_of(document)
        settings.pop("store", None)  # the export is a standalone config: its resources are in it
        return with_objects(settings, snapshot.objects)

    exported = asyncio.run(read())
    if exported is None:
        return 1
    text = yaml.safe_dump(exported, sort_keys=False, allow_unicode=True)
    if args.output is None:
        sys.stdout.write(text)
    else:
        # The export holds private keys and credentials: readable by its owner only, whatever the umask.
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
    return 0


async def _serve(
    loaded: LoadedConfig,
    plain: list[tuple[str, int]],
    *,
    document_settings: dict[str, Any] | None = None,
    store: ConfigStore | None = None,
    snapshot: Snapshot | None = None,
) -> int:
    from gateway.admin.auth import AdminKeyRequired, admin_key

    admin = loaded.config.admin
    try:
        key, generated = admin_key(admin) if admin is not None else ("", False)
    except AdminKeyRequired as exc:
        print(f"protogate: {exc}", file=sys.stderr)
        return 1
    settings = loaded.config.gateway
    app = build_app(loaded, document_settings)
    grpc_tls = settings.grpc_listen is not None and settings.grpc_listen.tls
    https = settings.https_addresses()
    if https or grpc_tls:
        app[TLS_EDGE] = _tls_edge(app, loaded, settings.tls_listen)
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
    sites: list[tuple[str, web.TCPSite]] = []
    listener_context = app[TLS_EDGE].listener_context() if https else None  # one SNI context for every HTTPS port
    for scheme, addresses in (("http", plain), ("https", https)):
        for host, port in addresses:
            context = listener_context if scheme == "https" else None
            site = web.TCPSite(web_runner, host, port, ssl_context=context, reuse_address=True)
            try:
                await site.start()
            except OSError as exc:
                await web_runner.cleanup()
                print(f"protogate: cannot listen on {host}:{port}: {_os_reason(exc)}", file=sys.stderr)
                return 1
            sites.append((scheme, site))
    grpc_server: GrpcProxyServer | None = None
    if settings.grpc_listen is not None:
        # Read per call, so the listener follows the app's runtime (built by the app's cleanup_ctx in setup()).
        grpc_listen = settings.grpc_listen
        tls = GrpcTls(app[TLS_EDGE], require_client_cert=grpc_listen.require_client_cert) if grpc_listen.tls else None
        grpc_server = GrpcProxyServer(
            lambda: app[CONFIG_MANAGER].runtime, grpc_listen.host, grpc_listen.port, tls, app[TELEMETRY], app
        )
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
        where = loaded.config.telemetry.prometheus.export_addr
        print(f"protogate: cannot serve metrics on {where.host}:{where.port}: {_os_reason(exc)}", file=sys.stderr)
        return 1
    manager = app[CONFIG_MANAGER]
    if store is not None and snapshot is not None:
        await manager.follow(store, snapshot)  # file edits, etcd events: applied as they come
    admin_runner: web.AppRunner | None = None
    if admin is not None:
        admin_runner, admin_address, failure = await _start_admin(manager, admin, key)
        if admin_runner is None:
            if metrics_runner is not None:
                await metrics_runner.cleanup()
            if grpc_server is not None:
                await grpc_server.stop(None)
            await web_runner.cleanup()
            print(
                f"protogate: cannot serve the Admin API on {admin.listen.host}:{admin.listen.port}: {failure}",
                file=sys.stderr,
            )
            return 1
        if generated:
            print(f"protogate admin key (generated for this run, shown once): {key}", flush=True)
        print(f"protogate {__version__} admin API on http://{admin_address}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before the ready line: a SIGTERM right after it is graceful
        loop.add_signal_handler(sig, stop.set)
    status_runner: web.AppRunner | None = None
    if settings.status_listen is not None:
        try:
            status_runner, status_address = await _start_status(manager, settings.status_listen, stop)
        except OSError as exc:
            for runner in (admin_runner, metrics_runner):
                if runner is not None:
                    await runner.cleanup()
            if grpc_server is not None:
                await grpc_server.stop(None)
            await web_runner.cleanup()
            where = f"{settings.status_listen.host}:{settings.status_listen.port}"
            print(f"protogate: cannot serve status on {where}: {_os_reason(exc)}", file=sys.stderr)
            return 1
        print(f"protogate {__version__} status on http://{status_address}/status/ready", flush=True)
    if grpc_server is not None:
        secure = " (tls)" if grpc_server.tls is not None else ""
        print(f"protogate {__version__} grpc listening on {grpc_server.address}{secure}", flush=True)
    # HTTPS first: the plain listeners' lines come last, and the last line says the gateway is ready.
    for scheme, site in sorted(sites, key=lambda pair: pair[0] == "http"):
        print(f"protogate {__version__} listening on {scheme}://{_bound_address(site)}", flush=True)
    await stop.wait()
    log.info("shutting down")
    if admin_runner is not None:
        await admin_runner.cleanup()
    if metrics_runner is not None:
        await metrics_runner.cleanup()
    if grpc_server is not None:
        await grpc_server.stop(10.0)
    await web_runner.cleanup()
    if status_runner is not None:  # last: it said "not ready" while the listeners drained
        await status_runner.cleanup()
    return 0


async def _start_status(
    manager: ConfigManager, listen: ListenAddress, stopping: asyncio.Event
) -> tuple[web.AppRunner, str]:
    """The status listener (liveness, readiness); OSError if its address cannot be bound."""
    from gateway.status import build_status_app

    runner = web.AppRunner(build_status_app(manager, stopping), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, listen.host, listen.port, reuse_address=True)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return runner, _bound_address(site)


def _tls_edge(app: web.Application, loaded: LoadedConfig, settings: TlsListen | None) -> TlsEdge:
    """The TLS listeners' certificates, following the running config's `ssls` (and their files)."""
    from gateway.tls_edge import TlsEdge

    def current() -> tuple[list[Ssl], Path]:
        manager = app.get(CONFIG_MANAGER)  # absent until the app's setup has built it
        source = manager.loaded if manager is not None else loaded
        return source.config.ssls, source.base_dir

    # Only the gRPC listener is TLS: no HTTPS settings, the first ssl object is the fallback.
    edge = TlsEdge(current, settings if settings is not None else TlsListen())
    if loaded.config.gateway.https_addresses() and not loaded.config.ssls:
        log.warning("an HTTPS listener is set but there is no ssls object: handshakes fail until one is added")
    return edge


async def _start_admin(manager: ConfigManager, admin: AdminSettings, key: str) -> tuple[web.AppRunner | None, str, str]:
    from gateway.admin.api import build_admin_app

    runner = web.AppRunner(build_admin_app(manager, admin, key), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, admin.listen.host, admin.listen.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        return None, "", _os_reason(exc)
    return runner, _bound_address(site), ""


async def _cleanup_quietly(web_runner: EdgeRunner) -> None:
    try:
        await web_runner.cleanup()
    except Exception:  # a failed start-up may leave nothing to clean; the first error is the one to report
        log.debug("cleanup after a failed start-up", exc_info=True)


def _os_reason(exc: OSError) -> str:
    """The reason alone ("address already in use"), without asyncio's "error while attempting to bind on ..."."""
    return os.strerror(exc.errno).lower() if exc.errno else exc.strerror or str(exc)


def _bound_address(site: web.TCPSite) -> str:
    server = site._server  # aiohttp exposes no public accessor for the bound socket
    if server is not None and server.sockets:  # type: ignore[union-attr]
        host, port = server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return site.name


if __name__ == "__main__":
    sys.exit(main())
