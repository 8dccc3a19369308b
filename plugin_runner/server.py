"""The grpc.aio runner: PluginRunner + grpc.health.v1 on a Unix socket or TCP, with a token cache per epoch."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import secrets
import signal
import socket
import stat
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from plugin_runner import convert, rpc_status
from plugin_runner.chain import Chain, ConfigError, PluginFailed, prepare_chain, run_request, run_response
from plugin_runner.loader import registry_of
from plugin_runner.proto import runner_pb2 as pb
from plugin_runner.proto import runner_pb2_grpc as pb_grpc
from plugin_runner.sdk import Plugin

__all__ = ["RunnerServer", "RunnerService", "TokenCache", "parse_address", "run", "serve", "start_server"]

log = logging.getLogger("plugin_runner")

SERVICE_NAME = "protogate.plugin.v1.PluginRunner"
PROTOCOL_VERSION = 1
RUNNER_NAME = "protogate-python-runner"
RUNNER_VERSION = "0.1.0"
ADDRESS_ENV = "PROTOGATE_RUNNER_ADDRESS"
# TLS on a TCP address: the runner's certificate and key (PEM files) and, for mutual TLS, the CA of its clients.
TLS_CERT_ENV = "PROTOGATE_RUNNER_TLS_CERT"
TLS_KEY_ENV = "PROTOGATE_RUNNER_TLS_KEY"
TLS_CLIENT_CA_ENV = "PROTOGATE_RUNNER_TLS_CLIENT_CA"
PARENT_PID_ENV = "PROTOGATE_PARENT_PID"
CONF_EXPIRY_ENV = "PROTOGATE_CONF_EXPIRY"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class TokenCache:
    """Prepared chains by token: least recently used evicted past `max_size`; idle ones expire after `expiry` s."""

    def __init__(self, epoch: str, max_size: int = 4096, expiry: float = 0.0) -> None:
        self.epoch = epoch
        self.max_size = max_size
        self.expiry = expiry
        self._entries: OrderedDict[str, tuple[Chain, float]] = OrderedDict()
        self._counter = itertools.count(1)

    def put(self, chain: Chain) -> str:
        # The epoch prefix makes a token from an earlier process unknown here, never someone else's chain.
        token = f"{self.epoch}.{next(self._counter)}"
        self._entries[token] = (chain, time.monotonic())
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)
        return token

    def get(self, token: str) -> Chain | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        chain, last_used = entry
        now = time.monotonic()
        if self.expiry and now - last_used > self.expiry:
            del self._entries[token]
            return None
        self._entries[token] = (chain, now)
        self._entries.move_to_end(token)
        return chain

    def release(self, token: str) -> None:
        self._entries.pop(token, None)

    def __len__(self) -> int:
        return len(self._entries)


class RunnerService(pb_grpc.PluginRunnerServicer):
    """PluginRunner over a fixed set of plugins."""

    def __init__(self, plugins: Sequence[Plugin], *, max_tokens: int = 4096, conf_expiry: float = 0.0) -> None:
        self.registry = registry_of(plugins)
        self.epoch = secrets.token_hex(8)
        self.tokens = TokenCache(self.epoch, max_tokens, conf_expiry)

    async def Describe(self, request: pb.DescribeRequest, context: grpc.aio.ServicerContext) -> pb.DescribeResponse:
        infos = []
        for plugin in self.registry.values():
            cls = type(plugin)
            schema = cls.Config.model_json_schema() if cls.Config is not None else {}
            infos.append(
                pb.PluginInfo(
                    name=plugin.name,
                    config_schema=json.dumps(schema, separators=(",", ":")),
                    description=cls.description(),
                    request_phase=cls.implements_request(),
                    response_phase=cls.implements_response(),
                    needs_request_body=cls.needs_body and cls.implements_request(),
                    needs_response_body=cls.needs_body and cls.implements_response(),
                    vars=list(cls.vars),
                )
            )
        return pb.DescribeResponse(
            runner_name=RUNNER_NAME,
            runner_version=RUNNER_VERSION,
            epoch=self.epoch,
            plugins=infos,
            protocol_version=PROTOCOL_VERSION,
        )

    async def PrepareConf(
        self, request: pb.PrepareConfRequest, context: grpc.aio.ServicerContext
    ) -> pb.PrepareConfResponse:
        try:
            chain = prepare_chain(self.registry, convert.plugin_confs_from_proto(request))
        except ConfigError as exc:
            message = f"invalid plugin config: {exc}"
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, message, rpc_status.bad_request_metadata(message, exc.errors)
            )
        token = self.tokens.put(chain)
        log.debug("prepared %s for route %r (version %r)", token, request.route_id, request.conf_version)
        return convert.chain_to_prepared(chain, token, self.epoch)

    async def HTTPReqCall(
        self, request: pb.HTTPReqCallRequest, context: grpc.aio.ServicerContext
    ) -> pb.HTTPReqCallResponse:
        chain = await self._chain(request.token, context)
        try:
            outcome = await run_request(chain, convert.request_from_proto(request))
        except PluginFailed as exc:
            log.error("request %s: %s", request.request_id, exc, exc_info=exc.__cause__)
            await context.abort(grpc.StatusCode.INTERNAL, str(exc))
        return convert.request_outcome_to_proto(outcome)

    async def HTTPRespCall(
        self, request: pb.HTTPRespCallRequest, context: grpc.aio.ServicerContext
    ) -> pb.HTTPRespCallResponse:
        chain = await self._chain(request.token, context)
        try:
            outcome = await run_response(chain, convert.response_from_proto(request))
        except PluginFailed as exc:
            log.error("request %s: %s", request.request_id, exc, exc_info=exc.__cause__)
            await context.abort(grpc.StatusCode.INTERNAL, str(exc))
        return convert.response_changes_to_proto(outcome)

    async def ReleaseConf(
        self, request: pb.ReleaseConfRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReleaseConfResponse:
        self.tokens.release(request.token)
        return pb.ReleaseConfResponse()

    async def _chain(self, token: str, context: grpc.aio.ServicerContext) -> Chain:
        chain = self.tokens.get(token)
        if chain is None:
            metadata = rpc_status.token_unknown_metadata(token, self.epoch)
            await context.abort(
                rpc_status.TOKEN_UNKNOWN_CODE, f"{rpc_status.TOKEN_UNKNOWN}: token {token!r} is not prepared", metadata
            )
        return chain


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
    pb_grpc.add_PluginRunnerServicer_to_server(service, server)
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
    asyncio.run(serve(instances, address, max_tokens=max_tokens, conf_expiry=conf_expiry, parent_pid=parent_pid))
