"""Active health checks: one asyncio task per node probes it on a timer (HTTP(S) GET, TCP connect, or
grpc.health.v1 Check) and feeds the result to the NodeSet, which decides the node's health.

Probes of a TLS upstream present and trust what its proxied traffic does (the upstream's `tls` block, read
once when the upstream is built), so a node is healthy only when real calls could reach it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.config.models import ActiveCheck
from gateway.tls import ClientTls, tls_failure

if TYPE_CHECKING:
    from gateway.upstream.node_state import NodeSet, NodeState

log = logging.getLogger("protogate.upstream.health")

Outcome = Literal["success", "http", "tcp", "timeout", "ignored"]
_GRPC_OPTIONS: tuple[tuple[str, object], ...] = (("grpc.enable_retries", 0),)


def probe_tls(tls: ClientTls | None, check: ActiveCheck) -> ClientTls:
    """What https probes present and trust: the upstream's TLS (else the system's CAs), and no verification
    when the check says `https_verify_certificate: false` (APISIX's field)."""
    probe = tls if tls is not None else ClientTls(ca=None, bundle=None, server_name=None)
    if not check.https_verify_certificate:
        probe = dataclasses.replace(probe, verify=False)
    return probe


class ActiveChecker:
    """`tls`: the upstream's client TLS (https and grpcs upstreams), as its HTTP or gRPC client built it."""

    def __init__(
        self,
        nodes: NodeSet,
        check: ActiveCheck,
        channels: Sequence[grpc.aio.Channel] | None = None,
        tls: ClientTls | None = None,
    ) -> None:
        self.nodes = nodes
        self.check = check
        # The gRPC client's own channels, by node: a probe through them passes only once calls can too
        # (a channel still in reconnect backoff after the node came back fails both).
        self.channels = channels
        self.tls = tls
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._server_name: str | None = None
        self._grpc_credentials: grpc.ChannelCredentials | None = None  # grpcs: made once, shared by probe channels
        self._grpc_options = _GRPC_OPTIONS
        self._tls_failures: dict[int, str] = {}  # node index -> the TLS failure last logged for it
        self._headers: dict[str, str] = {}
        for line in check.req_headers:
            name, _, value = line.partition(":")
            if name.strip():
                self._headers[name.strip()] = value.strip()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        kind = self.check.type
        if kind in ("http", "https"):
            # One context for every probe of every node: the files were read when the upstream was built.
            context: ssl.SSLContext | bool = True
            if kind == "https":
                probe = probe_tls(self.tls, self.check)
                context = probe.ssl_context()
                self._server_name = probe.server_name
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=True, ssl=context),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        elif kind == "grpc" and self.tls is not None:
            self._grpc_credentials = self.tls.grpc_credentials()
            self._grpc_options = _GRPC_OPTIONS + self.tls.grpc_options()
        self._tasks = [loop.create_task(self._run(state)) for state in self.nodes.states]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self, state: NodeState) -> None:
        check = self.check
        while True:
            try:
                outcome = await self.probe(state)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in a probe must not end the checks of this node
                log.exception("health probe of %s failed unexpectedly", state.address)
                outcome = "tcp"
            if outcome == "success":
                self._tls_failures.pop(state.index, None)
                self.nodes.success(state, "active")
            elif outcome != "ignored":
                self.nodes.failure(state, outcome, "active")
            interval = check.healthy.interval if state.healthy else check.unhealthy.interval
            await asyncio.sleep(interval)

    async def probe(self, state: NodeState) -> Outcome:
        host = state.node.host
        port = self.check.port or state.node.port
        kind = self.check.type
        if kind == "tcp":
            return await self._tcp(host, port)
        if kind == "grpc":
            return await self._grpc(state, host, port)
        return await self._http(state, host, port)

    async def _tcp(self, host: str, port: int) -> Outcome:
        try:
            async with asyncio.timeout(self.check.timeout):
                _, writer = await asyncio.open_connection(host, port)
        except TimeoutError:
            return "timeout"
        except OSError:
            return "tcp"
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return "success"

    async def _http(self, state: NodeState, host: str, port: int) -> Outcome:
        assert self._session is not None
        check = self.check
        scheme = check.type
        url_host = f"[{host}]" if ":" in host else host
        headers = dict(self._headers)
        headers["Host"] = check.host or state.address
        try:
            async with asyncio.timeout(check.timeout):
                async with self._session.get(
                    f"{scheme}://{url_host}:{port}{check.http_path}",
                    headers=headers,
                    allow_redirects=False,
                    server_hostname=self._server_name,
                ) as response:
                    status = response.status
        except TimeoutError:
            return "timeout"
        except (aiohttp.ClientError, OSError) as exc:
            problem = _tls_problem(exc)
            if problem is not None:
                self._log_tls_failure(state, problem)
            return "tcp"
        if status in check.healthy.http_statuses:
            return "success"
        if status in check.unhealthy.http_statuses:
            return "http"
        return "ignored"

    async def _grpc(self, state: NodeState, host: str, port: int) -> Outcome:
        own = self.channels is None or self.check.port is not None
        if own:
            channel = self._probe_channel(host, port)
        else:
            assert self.channels is not None
            channel = self.channels[state.index]
        try:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service=self.check.grpc_service)
            reply = await stub.Check(request, timeout=self.check.timeout)
        except grpc.aio.AioRpcError as err:
            code = err.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return "timeout"
            if code == grpc.StatusCode.UNAVAILABLE:
                details = err.details() or ""
                if tls_failure(details):
                    self._log_tls_failure(state, f"TLS handshake failed: {details}")
                return "tcp"
            return "http"  # the node answered, but not SERVING (NOT_FOUND for an unknown service, UNIMPLEMENTED)
        finally:
            if own:
                await channel.close()
        return "success" if reply.status == health_pb2.HealthCheckResponse.SERVING else "http"

    def _probe_channel(self, host: str, port: int) -> grpc.aio.Channel:
        # A probe on another port than the traffic's (check.port) gets a channel of its own, with the same TLS.
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if self._grpc_credentials is None:
            return grpc.aio.insecure_channel(target, options=self._grpc_options)
        return grpc.aio.secure_channel(target, self._grpc_credentials, options=self._grpc_options)

    def _log_tls_failure(self, state: NodeState, problem: str) -> None:
        # A TLS failure is a configuration problem (CA, name, client certificate), not an outage: say what it
        # is, once per node until it changes or a probe succeeds, rather than on every probe.
        if self._tls_failures.get(state.index) == problem:
            return
        self._tls_failures[state.index] = problem
        log.warning("health probe of %s: %s", state.address, problem)


def _tls_problem(exc: BaseException) -> str | None:
    """What went wrong in an https probe's handshake; None when the failure is not about TLS."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate verification failed: {exc.certificate_error}"
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return f"TLS handshake failed: {exc.os_error}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc}"
    return None
