"""The grpc.aio runner: PluginRunner + grpc.health.v1 on a Unix socket or TCP, with a token cache per epoch."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from plugin_runner.sdk import Plugin
from plugin_runner.service import PROTOCOL_VERSION, SERVICE_NAME, RunnerService, TokenCache, add_to_server

__all__ = [
    "PROTOCOL_VERSION",
    "RunnerServer",
    "RunnerService",
    "TokenCache",
    "parse_address",
    "run",
    "serve",
    "start_server",
]

log = logging.getLogger("plugin_runner")

ADDRESS_ENV = "PROTOGATE_RUNNER_ADDRESS"
# TLS on a TCP address: the runner's certificate and key (PEM files) and, for mutual TLS, the CA of its clients.
TLS_CERT_ENV = "PROTOGATE_RUNNER_TLS_CERT"
TLS_KEY_ENV = "PROTOGATE_RUNNER_TLS_KEY"
TLS_CLIENT_CA_ENV = "PROTOGATE_RUNNER_TLS_CLIENT_CA"
PARENT_PID_ENV = "PROTOGATE_PARENT_PID"
CONF_EXPIRY_ENV = "PROTOGATE_CONF_EXPIRY"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def parse_address(address: str) -> tuple[str, Path | None]:
    """(gRPC bind target, Unix socket path or None) for `unix:PATH`, `unix:///abs/path` or `HOST:PORT`."""
    if address.startswith("unix:"):
        path = address.removeprefix("unix:")
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise ValueError(f"no socket path in {address!r}")
        return f"unix:{path}", Path(path)
    if ":" not in address:
        raise ValueError(f"address must be unix:PATH or HOST:PORT, got {address!r}")
    return address, None


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket file left by a dead runner; refuse a live one or a file that is not a socket."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise RuntimeError(f"{path} exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
        return
    finally:
        probe.close()
    raise RuntimeError(f"another process is listening on {path}")


@dataclass
class RunnerServer:
    """A started runner: the gRPC server, its service, and where it listens."""

    server: grpc.aio.Server
    service: RunnerService
    health: health.aio.HealthServicer
    address: str
    socket_path: Path | None

    async def stop(self, grace: float = 2.0) -> None:
        await self.health.enter_graceful_shutdown()
        self.service.drain()  # Calls streams end once their calls are answered, not at the end of the grace
        await self.server.stop(grace)
        if self.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(self.socket_path.lstat().st_mode):
                    self.socket_path.unlink()


async def start_server(
    plugins: Sequence[Plugin], address: str, *, max_tokens: int = 4096, conf_expiry: float = 0.0
) -> RunnerServer:
    """Bind and start serving; a Unix socket is created 0600 (under a umask, then chmod)."""
    target, socket_path = parse_address(address)
    # Bodies travel inside messages: allow more than gRPC's 4 MiB default (the gateway caps bodies itself).
    limits = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    server = grpc.aio.server(options=limits)
    service = RunnerService(plugins, max_tokens=max_tokens, conf_expiry=conf_expiry)
    add_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if socket_path is not None:
        socket_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _clear_stale_socket(socket_path)
        # The umask closes the window between bind() and chmod() in which others could connect.
        previous = os.umask(0o177)
        try:
            server.add_insecure_port(target)
        finally:
            os.umask(previous)
        os.chmod(socket_path, 0o600)
        bound = f"unix:{socket_path}"
    else:
        credentials = _server_credentials()  # TLS when the environment names a certificate
        port = server.add_insecure_port(target) if credentials is None else server.add_secure_port(target, credentials)
        bound = f"{target.rsplit(':', 1)[0]}:{port}"
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunnerServer(server, service, health_servicer, bound, socket_path)


def _server_credentials() -> grpc.ServerCredentials | None:
    cert, key = os.environ.get(TLS_CERT_ENV), os.environ.get(TLS_KEY_ENV)
    if not cert or not key:
        return None
    client_ca = os.environ.get(TLS_CLIENT_CA_ENV)
    root = Path(client_ca).read_bytes() if client_ca else None
    pair = (Path(key).read_bytes(), Path(cert).read_bytes())
    return grpc.ssl_server_credentials([pair], root_certificates=root, require_client_auth=root is not None)


async def _parent_gone(start_ppid: int, interval: float = 1.0) -> str:
    """Return (with a reason) once the process that started us is gone. Polls: cheap and portable.

    Being re-parented means our parent exited, even if nobody has reaped it yet (a zombie still answers
    kill(pid, 0)); $PROTOGATE_PARENT_PID covers a gateway that started us through a wrapper process.
    """
    watched = int(os.environ.get(PARENT_PID_ENV) or start_ppid)
    while True:
        await asyncio.sleep(interval)
        if watched == start_ppid and os.getppid() != start_ppid:
            return f"parent process {start_ppid} exited"
        try:
            os.kill(watched, 0)
        except ProcessLookupError:
            return f"parent process {watched} exited"
        except PermissionError:
            pass  # it exists, owned by another user


async def serve(
    plugins: Sequence[Plugin],
    address: str,
    *,
    max_tokens: int = 4096,
    conf_expiry: float = 0.0,
    parent_pid: int | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT or until the parent process dies, then stop gracefully.

    `parent_pid` is our parent as seen at process start (default: now). Read it early: a parent that dies
    before it is read would leave us watching init.
    """
    parent_pid = parent_pid or os.getppid()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    # Handlers first: a supervisor may send SIGTERM as soon as it reads the "listening" line.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    runner = await start_server(plugins, address, max_tokens=max_tokens, conf_expiry=conf_expiry)
    print(f"plugin runner listening on {runner.address}", flush=True)
    watcher = asyncio.create_task(_parent_gone(parent_pid))
    waiter = asyncio.create_task(stopping.wait())
    try:
        done, _ = await asyncio.wait({watcher, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if watcher in done:
            log.warning("%s; stopping", watcher.result())
            print(f"plugin runner stopping: {watcher.result()}", flush=True)
    finally:
        watcher.cancel()
        waiter.cancel()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await runner.stop()
    print("plugin runner stopped", flush=True)


def _instances(plugins: Sequence[Plugin | type[Plugin]]) -> list[Plugin]:
    return [plugin() if isinstance(plugin, type) else plugin for plugin in plugins]


def run(
    plugins: Sequence[Plugin | type[Plugin]],
    address: str | None = None,
    *,
    max_tokens: int = 4096,
    conf_expiry: float | None = None,
    parent_pid: int | None = None,
) -> None:
    """Start a runner and block until it stops. `address` defaults to $PROTOGATE_RUNNER_ADDRESS.

    The runner stops on SIGTERM/SIGINT and when its parent process (`parent_pid`, default: the parent now,
    or $PROTOGATE_PARENT_PID) exits.

    ```python
    if __name__ == "__main__":
        plugin_runner.run(plugins=[HmacAuth, Rewrite])
    ```
    """
    parent_pid = parent_pid or os.getppid()
    address = address or os.environ.get(ADDRESS_ENV)
    if not address:
        raise ValueError(f"no address: pass address= or set {ADDRESS_ENV}")
    if conf_expiry is None:
        conf_expiry = float(os.environ.get(CONF_EXPIRY_ENV) or 0)
    instances = _instances(plugins)
    with _event_loop_runner() as runner:
        runner.run(serve(instances, address, max_tokens=max_tokens, conf_expiry=conf_expiry, parent_pid=parent_pid))


def _event_loop_runner() -> asyncio.Runner:
    """uvloop when installed (as the gateway does): grpc.aio's per-message work is cheaper on it."""
    try:
        import uvloop
    except ImportError:  # not on every platform; the default loop works
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)
