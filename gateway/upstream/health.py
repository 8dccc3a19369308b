"""Active health checks: one asyncio task per node probes it on a timer (HTTP(S) GET, TCP connect, or
grpc.health.v1 Check) and feeds the result to the NodeSet, which decides the node's health."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.config.models import ActiveCheck

if TYPE_CHECKING:
    from gateway.upstream.node_state import NodeSet, NodeState

log = logging.getLogger("protogate.upstream.health")

Outcome = Literal["success", "http", "tcp", "timeout", "ignored"]


class ActiveChecker:
    def __init__(self, nodes: NodeSet, check: ActiveCheck, channels: Sequence[grpc.aio.Channel] | None = None) -> None:
        self.nodes = nodes
        self.check = check
        # The gRPC client's own channels, by node: a probe through them passes only once calls can too
        # (a channel still in reconnect backoff after the node came back fails both).
        self.channels = channels
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._headers: dict[str, str] = {}
        for line in check.req_headers:
            name, _, value = line.partition(":")
            if name.strip():
                self._headers[name.strip()] = value.strip()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.check.type in ("http", "https"):
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=True),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
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
            return await self._grpc(state.index, host, port)
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
                    ssl=check.https_verify_certificate,
                ) as response:
                    status = response.status
        except TimeoutError:
            return "timeout"
        except (aiohttp.ClientError, OSError):
            return "tcp"
        if status in check.healthy.http_statuses:
            return "success"
        if status in check.unhealthy.http_statuses:
            return "http"
        return "ignored"

    async def _grpc(self, index: int, host: str, port: int) -> Outcome:
        own = self.channels is None or self.check.port is not None
        if own:
            target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            channel = grpc.aio.insecure_channel(target, options=(("grpc.enable_retries", 0),))
        else:
            assert self.channels is not None
            channel = self.channels[index]
        try:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service=self.check.grpc_service)
            reply = await stub.Check(request, timeout=self.check.timeout)
        except grpc.aio.AioRpcError as err:
            code = err.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return "timeout"
            if code == grpc.StatusCode.UNAVAILABLE:
                return "tcp"
            return "http"  # the node answered, but not SERVING (NOT_FOUND for an unknown service, UNIMPLEMENTED)
        finally:
            if own:
                await channel.close()
        return "success" if reply.status == health_pb2.HealthCheckResponse.SERVING else "http"
