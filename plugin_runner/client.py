"""Gateway-side client of a plugin runner: prepared-token cache, per-call deadlines, one re-prepare on TOKEN_UNKNOWN.

Pure grpc.aio. Calls go over the runner's Calls stream when its Describe says protocol_version >= 2 (see
plugin_runner.multiplex), else, and for messages over `max_stream_message_bytes`, as unary RPCs. Errors other
than a refused config surface as `grpc.aio.AioRpcError` with the runner's status either way (DEADLINE_EXCEEDED
when the per-call budget ran out, UNAVAILABLE when the runner is down, INTERNAL when a plugin raised); the
gateway maps them through its failure policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from plugin_runner import rpc_status, wire
from plugin_runner.multiplex import CallStream, StreamBroken
from plugin_runner.proto import runner_pb2 as pb
from plugin_runner.proto import runner_pb2_grpc as pb_grpc

__all__ = ["SERVICE_NAME", "PluginSpec", "PreparedConf", "RunnerClient", "RunnerConfigError"]

SERVICE_NAME = "protogate.plugin.v1.PluginRunner"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: The first protocol revision with the Calls stream.
STREAM_PROTOCOL = 2
# A call bigger than this (a large body) goes as a unary RPC: it would hold up the small calls behind it.
DEFAULT_MAX_STREAM_MESSAGE_BYTES = 256 * 1024

#: (plugin name, config) in chain order; a config is a JSON-able mapping or JSON text.
PluginSpec = tuple[str, Mapping[str, Any] | str | None]


class RunnerConfigError(ValueError):
    """PrepareConf refused the chain (INVALID_ARGUMENT). `violations` are (field path, message) pairs."""

    def __init__(self, message: str, violations: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.violations = violations


@dataclass(eq=False)
class PreparedConf:
    """A chain prepared on the runner. Updated in place when the client prepares it again (new token/epoch)."""

    key: Hashable
    plugins: tuple[tuple[str, str], ...]
    route_id: str
    conf_version: str
    token: str = ""
    epoch: str = ""
    request_phase: bool = False
    response_phase: bool = False
    needs_request_body: bool = False
    needs_response_body: bool = False
    vars: tuple[str, ...] = ()
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    def _apply(self, answer: pb.PrepareConfResponse) -> None:
        self.token = answer.token
        self.epoch = answer.epoch
        self.request_phase = answer.request_phase
        self.response_phase = answer.response_phase
        self.needs_request_body = answer.needs_request_body
        self.needs_response_body = answer.needs_response_body
        self.vars = tuple(answer.vars)


def _normalise(plugins: Sequence[PluginSpec]) -> tuple[tuple[str, str], ...]:
    return tuple(
        (name, config if isinstance(config, str) else json.dumps(dict(config or {}), separators=(",", ":")))
        for name, config in plugins
    )


class RunnerClient:
    """One runner, one channel. Safe for concurrent use from one event loop.

    ```python
    client = RunnerClient("unix:/run/protogate/runner.sock", timeout=0.5)
    await client.wait_ready(10)
    conf = await client.prepare((route.id, version), [("hmac-auth", {"secret": "s"})], route_id=route.id)
    answer = await client.call_request(conf, pb.HTTPReqCallRequest(method="GET", path="/x", ...))
    ```
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 1.0,
        prepare_timeout: float = 5.0,
        max_prepared: int = 4096,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, object]] = (),
        streaming: bool = True,
        max_in_flight: int = 1024,
        max_stream_message_bytes: int = DEFAULT_MAX_STREAM_MESSAGE_BYTES,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.prepare_timeout = prepare_timeout
        self.max_prepared = max_prepared
        self.max_stream_message_bytes = max_stream_message_bytes
        self.epoch: str | None = None
        self.protocol_version: int | None = None  # from Describe
        self.streaming = streaming  # use the Calls stream when the runner offers it
        options: list[tuple[str, object]] = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        options.extend(channel_options)
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        else:  # TLS to a runner on a TCP address
            self._channel = grpc.aio.secure_channel(target, credentials, options=options)
        self._stub = pb_grpc.PluginRunnerStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._unary = {wire.REQUEST: self._stub.HTTPReqCall, wire.RESPONSE: self._stub.HTTPRespCall}
        self._calls: CallStream | None = None  # set by describe() for a protocol 2 runner
        self._max_in_flight = max_in_flight
        self._prepared: OrderedDict[Hashable, PreparedConf] = OrderedDict()
        self._pending: dict[Hashable, asyncio.Future[PreparedConf]] = {}

    async def close(self) -> None:
        """Calls in flight fail with UNAVAILABLE; later calls too."""
        calls, self._calls = self._calls, None
        if calls is not None:
            await calls.close()
        await self._channel.close()

    @property
    def stream(self) -> CallStream | None:
        """The Calls stream in use, or None when calls go as unary RPCs."""
        return self._calls

    async def __aenter__(self) -> RunnerClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- liveness ---------------------------------------------------------------------------------

    async def check_health(self, timeout: float | None = None) -> bool:
        """True when the runner answers SERVING for the PluginRunner service; False on any failure."""
        try:
            answer = await self._health.Check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=timeout or self.timeout
            )
        except grpc.aio.AioRpcError:
            return False
        return answer.status == health_pb2.HealthCheckResponse.SERVING

    async def wait_ready(self, timeout: float, interval: float = 0.05) -> pb.DescribeResponse:
        """Poll health until SERVING (TimeoutError after `timeout` s), then Describe."""
        deadline = time.monotonic() + timeout
        while not await self.check_health(timeout=max(0.05, min(1.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"plugin runner at {self.target} not SERVING within {timeout}s")
            await asyncio.sleep(interval)
        return await self.describe(timeout=max(0.05, deadline - time.monotonic()))

    async def describe(self, timeout: float | None = None) -> pb.DescribeResponse:
        """The runner's plugins, epoch and protocol. A new epoch makes every cached token be prepared again on next
        use; protocol_version 2 or more sends later calls over the Calls stream."""
        answer = await self._stub.Describe(pb.DescribeRequest(), timeout=timeout or self.prepare_timeout)
        self.epoch = answer.epoch
        self.protocol_version = answer.protocol_version
        if self.streaming and answer.protocol_version >= STREAM_PROTOCOL and self._calls is None:
            self._calls = CallStream(self._channel, max_in_flight=self._max_in_flight)
        return answer

    # -- prepared chains --------------------------------------------------------------------------

    async def prepare(
        self,
        key: Hashable,
        plugins: Sequence[PluginSpec],
        *,
        route_id: str = "",
        conf_version: str = "",
        timeout: float | None = None,
    ) -> PreparedConf:
        """The prepared chain for `key` (e.g. (route id, config version)): cached, or prepared now.

        Concurrent callers for one key share one PrepareConf. The same key with a different plugin list
        prepares anew and releases the old token. Raises RunnerConfigError when the runner refuses a config.
        """
        normalised = _normalise(plugins)
        cached = self._prepared.get(key)
        if cached is not None and cached.plugins == normalised:
            self._prepared.move_to_end(key)
            return cached
        pending = self._pending.get(key)
        if pending is not None:
            prepared = await asyncio.shield(pending)
            if prepared.plugins == normalised:
                return prepared
        future: asyncio.Future[PreparedConf] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            prepared = PreparedConf(key, normalised, route_id, conf_version)
            await self._prepare_rpc(prepared, time.monotonic() + (timeout or self.prepare_timeout))
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here, so an unawaited future never warns
            raise
        finally:
            if self._pending.get(key) is future:
                del self._pending[key]
        future.set_result(prepared)
        if cached is not None and cached.token:
            await self._release_token(cached.token, timeout)
        self._prepared[key] = prepared
        self._prepared.move_to_end(key)
        while len(self._prepared) > self.max_prepared:
            self._prepared.popitem(last=False)
        return prepared

    async def release(self, key: Hashable, timeout: float | None = None) -> None:
        """Forget `key` here and release its token on the runner (best effort: errors are ignored)."""
        prepared = self._prepared.pop(key, None)
        if prepared is not None and prepared.token:
            await self._release_token(prepared.token, timeout)

    def forget_all(self) -> None:
        """Drop every cached chain (e.g. when the supervisor replaced the runner); they are prepared on next use."""
        self._prepared.clear()

    async def _release_token(self, token: str, timeout: float | None) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):  # the runner forgets idle tokens anyway
            await self._stub.ReleaseConf(pb.ReleaseConfRequest(token=token), timeout=timeout or self.timeout)

    async def _prepare_rpc(self, prepared: PreparedConf, deadline: float) -> None:
        request = pb.PrepareConfRequest(route_id=prepared.route_id, conf_version=prepared.conf_version)
        for name, config_json in prepared.plugins:
            request.plugins.add(name=name, config_json=config_json)
        try:
            answer = await self._stub.PrepareConf(request, timeout=_remaining(deadline))
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                message = exc.details() or "invalid plugin config"
                raise RunnerConfigError(message, rpc_status.field_violations(exc)) from None
            raise
        prepared._apply(answer)
        self.epoch = answer.epoch

    async def _refresh(self, prepared: PreparedConf, stale_token: str, deadline: float) -> None:
        async with prepared._lock:
            if prepared.token == stale_token:  # nobody refreshed it while we waited
                await self._prepare_rpc(prepared, deadline)

    # -- calls ------------------------------------------------------------------------------------

    async def call_request(
        self, prepared: PreparedConf, request: pb.HTTPReqCallRequest, timeout: float | None = None
    ) -> pb.HTTPReqCallResponse:
        """HTTPReqCall with `prepared`'s token (set by this method). `timeout` bounds the whole call,
        including one re-prepare and retry when the runner answers TOKEN_UNKNOWN (restart, eviction)."""
        return await self._call(wire.REQUEST, prepared, request, timeout)  # type: ignore[no-any-return]

    async def call_response(
        self, prepared: PreparedConf, response: pb.HTTPRespCallRequest, timeout: float | None = None
    ) -> pb.HTTPRespCallResponse:
        """HTTPRespCall; same token and deadline handling as call_request."""
        return await self._call(wire.RESPONSE, prepared, response, timeout)  # type: ignore[no-any-return]

    async def _call(self, kind: wire.CallKind, prepared: PreparedConf, message: Any, timeout: float | None) -> Any:
        deadline = time.monotonic() + (timeout or self.timeout)
        if self.epoch is not None and prepared.epoch != self.epoch:
            # The runner restarted since this chain was prepared: skip the round trip that would fail.
            await self._refresh(prepared, prepared.token, deadline)
        token = prepared.token
        message.token = token
        try:
            return await self._send(kind, message, deadline)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != rpc_status.TOKEN_UNKNOWN_CODE:
                raise
        await self._refresh(prepared, token, deadline)
        message.token = prepared.token
        return await self._send(kind, message, deadline)

    async def _send(self, kind: wire.CallKind, message: Any, deadline: float) -> Any:
        calls = self._calls
        if calls is None:
            return await self._unary[kind](message, timeout=_remaining(deadline))
        payload = message.SerializeToString()
        if len(payload) > self.max_stream_message_bytes:
            return await self._unary[kind](message, timeout=_remaining(deadline))
        try:
            return await calls.call(kind, payload, deadline)
        except StreamBroken as exc:
            if not exc.maybe_unserved:
                raise
        # The stream failed before it ever answered, and not for a lost connection: the runner may not serve Calls
        # at all, whatever Describe said. The unary RPC tells: if it answers, unary RPCs from now on; if not, its
        # error is the call's, and the stream is tried again next time.
        answer = await self._unary[kind](message, timeout=_remaining(deadline))
        if self._calls is calls:
            self._calls = None
            await calls.close()
        return answer


def _remaining(deadline: float) -> float:
    # A spent budget still goes through gRPC, which answers DEADLINE_EXCEEDED: one error path for callers.
    return max(deadline - time.monotonic(), 0.001)
