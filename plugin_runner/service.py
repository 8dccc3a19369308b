"""RunnerService: PluginRunner over a fixed set of plugins, with a token cache per epoch; unary RPCs and Calls."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
import sys
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Coroutine, Sequence
from typing import Any

import grpc

from plugin_runner import convert, rpc_status, wire
from plugin_runner.chain import Chain, ConfigError, PluginFailed, prepare_chain, run_request, run_response
from plugin_runner.loader import registry_of
from plugin_runner.proto import runner_pb2 as pb
from plugin_runner.proto import runner_pb2_grpc as pb_grpc
from plugin_runner.sdk import Plugin

__all__ = ["PROTOCOL_VERSION", "SERVICE_NAME", "CallFailed", "RunnerService", "TokenCache", "add_to_server"]

log = logging.getLogger("plugin_runner")

SERVICE_NAME = "protogate.plugin.v1.PluginRunner"
PROTOCOL_VERSION = 2
RUNNER_NAME = "protogate-python-runner"
RUNNER_VERSION = "0.1.0"
# A ResultBatch holds the results ready together up to this size (one bigger result goes alone): far below the
# gateway's message limit, and small ones are not held up behind a long write.
MAX_BATCH_BYTES = 1024 * 1024


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


class CallFailed(Exception):
    """A call's failure as a gRPC status: aborts a unary RPC, or becomes a CallError on the Calls stream."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RunnerService(pb_grpc.PluginRunnerServicer):
    """PluginRunner over a fixed set of plugins."""

    def __init__(self, plugins: Sequence[Plugin], *, max_tokens: int = 4096, conf_expiry: float = 0.0) -> None:
        self.registry = registry_of(plugins)
        self.epoch = secrets.token_hex(8)
        self.tokens = TokenCache(self.epoch, max_tokens, conf_expiry)
        self._sessions: set[_CallsSession] = set()

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

    async def ReleaseConf(
        self, request: pb.ReleaseConfRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReleaseConfResponse:
        self.tokens.release(request.token)
        return pb.ReleaseConfResponse()

    # -- the calls, whichever way they come ----------------------------------------------------------------------

    async def answer_request(self, request: pb.HTTPReqCallRequest) -> pb.HTTPReqCallResponse:
        chain = self._chain(request.token)
        try:
            outcome = await run_request(chain, convert.request_from_proto(request))
        except PluginFailed as exc:
            log.error("request %s: %s", request.request_id, exc, exc_info=exc.__cause__)
            raise CallFailed(grpc.StatusCode.INTERNAL, str(exc)) from None
        return convert.request_outcome_to_proto(outcome)

    async def answer_response(self, request: pb.HTTPRespCallRequest) -> pb.HTTPRespCallResponse:
        chain = self._chain(request.token)
        try:
            outcome = await run_response(chain, convert.response_from_proto(request))
        except PluginFailed as exc:
            log.error("request %s: %s", request.request_id, exc, exc_info=exc.__cause__)
            raise CallFailed(grpc.StatusCode.INTERNAL, str(exc)) from None
        return convert.response_changes_to_proto(outcome)

    def _chain(self, token: str) -> Chain:
        chain = self.tokens.get(token)
        if chain is None:
            raise CallFailed(
                rpc_status.TOKEN_UNKNOWN_CODE, f"{rpc_status.TOKEN_UNKNOWN}: token {token!r} is not prepared"
            )
        return chain

    async def HTTPReqCall(
        self, request: pb.HTTPReqCallRequest, context: grpc.aio.ServicerContext
    ) -> pb.HTTPReqCallResponse:
        try:
            return await self.answer_request(request)
        except CallFailed as exc:
            await self._abort(context, exc, request.token)
            raise  # not reached: abort raises

    async def HTTPRespCall(
        self, request: pb.HTTPRespCallRequest, context: grpc.aio.ServicerContext
    ) -> pb.HTTPRespCallResponse:
        try:
            return await self.answer_response(request)
        except CallFailed as exc:
            await self._abort(context, exc, request.token)
            raise  # not reached: abort raises

    async def _abort(self, context: grpc.aio.ServicerContext, exc: CallFailed, token: str) -> None:
        metadata: tuple[tuple[str, bytes], ...] = ()
        if exc.code == rpc_status.TOKEN_UNKNOWN_CODE:
            metadata = rpc_status.token_unknown_metadata(token, self.epoch)
        await context.abort(exc.code, exc.message, metadata)

    async def Calls(self, request_iterator: AsyncIterator[pb.CallBatch], context: grpc.aio.ServicerContext) -> None:
        session = _CallsSession(self, context)
        self._sessions.add(session)
        try:
            await session.serve(request_iterator)
        finally:
            self._sessions.discard(session)

    def drain(self) -> None:
        """Stop reading new calls on every Calls stream; each ends once its calls are answered (shutdown)."""
        for session in self._sessions:
            session.drain()


class _CallsSession:
    """One Calls stream: a task per call, results written in batches while the previous write is in flight."""

    def __init__(self, service: RunnerService, context: grpc.aio.ServicerContext) -> None:
        self._service = service
        self._context = context
        self._out: list[bytes] = []
        self._wake = asyncio.Event()
        self._tasks: dict[asyncio.Task[None], asyncio.TimerHandle | None] = {}  # calls running, their deadlines
        self._reading = True
        self._reader: asyncio.Task[None] | None = None

    async def serve(self, batches: AsyncIterator[pb.CallBatch]) -> None:
        self._reader = asyncio.create_task(self._read(batches))
        try:
            while True:
                if not self._out:
                    if not self._reading and not self._tasks:
                        return  # the gateway half-closed (or we drain) and every call is answered
                    await self._wake.wait()
                    self._wake.clear()
                    continue
                await self._context.write(self._take())  # type: ignore[arg-type]  # bytes: no serializer
        finally:
            self._reader.cancel()
            for task in self._tasks:
                task.cancel()

    def _take(self) -> bytes:
        """The results ready, up to MAX_BATCH_BYTES (at least one), as one ResultBatch."""
        out = self._out
        size, count = 0, 0
        for entry in out:
            if count and size + len(entry) > MAX_BATCH_BYTES:
                break
            size += len(entry)
            count += 1
        if count == len(out):
            self._out = []
            return b"".join(out)
        self._out = out[count:]
        return b"".join(out[:count])

    def drain(self) -> None:
        if self._reader is not None:
            self._reader.cancel()

    async def _read(self, batches: AsyncIterator[pb.CallBatch]) -> None:
        try:
            async for batch in batches:
                for call in batch.calls:
                    self._start(call)
        except grpc.aio.AioRpcError:
            pass  # the gateway went away: the RPC is cancelled with it
        finally:
            self._reading = False
            self._wake.set()

    def _start(self, call: pb.Call) -> None:
        which = call.WhichOneof("call")
        answer: Coroutine[Any, Any, pb.HTTPReqCallResponse | pb.HTTPRespCallResponse]
        if which == "http_req":
            kind, answer = wire.REQUEST, self._service.answer_request(call.http_req)
        elif which == "http_resp":
            kind, answer = wire.RESPONSE, self._service.answer_response(call.http_resp)
        else:
            message = f"unknown kind of call: {which or 'none set'}"
            self._emit(wire.error_entry(call.id, grpc.StatusCode.UNIMPLEMENTED.value[0], message))
            return
        task = _call_task(self._run(call.id, kind, answer))
        if task.done():  # an eager task (Python 3.12+) whose chain did not wait
            return
        self._tasks[task] = (
            # As a unary RPC's handler is cancelled at its deadline: the gateway has stopped waiting.
            asyncio.get_running_loop().call_later(call.timeout_ms / 1000, task.cancel, _DEADLINE)
            if call.timeout_ms
            else None
        )
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        timer = self._tasks.pop(task, None)
        if timer is not None:
            timer.cancel()
        if not self._tasks and not self._reading:
            self._wake.set()

    async def _run(self, call_id: int, kind: wire.CallKind, answer: Awaitable[Any]) -> None:
        try:
            message = await answer
        except asyncio.CancelledError as exc:
            if exc.args != (_DEADLINE,):
                raise  # the stream is going away
            entry = wire.error_entry(call_id, grpc.StatusCode.DEADLINE_EXCEEDED.value[0], "Deadline Exceeded")
        except CallFailed as exc:
            entry = wire.error_entry(call_id, exc.code.value[0], exc.message)
        except Exception as exc:
            log.error("call %d failed", call_id, exc_info=exc)  # a bug here, not in a plugin (those are CallFailed)
            entry = wire.error_entry(call_id, grpc.StatusCode.INTERNAL.value[0], f"runner error: {type(exc).__name__}")
        else:
            entry = wire.result_entry(call_id, kind, message.SerializeToString())
        self._emit(entry)

    def _emit(self, entry: bytes) -> None:
        self._out.append(entry)
        self._wake.set()


def _call_task(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """A task per call. Where asyncio can (3.12+), it starts eagerly: a chain that never waits (the usual case)
    answers at once, without a trip through the event loop, and still runs inside its own task."""
    loop = asyncio.get_running_loop()
    if _EAGER:
        return asyncio.Task(coro, loop=loop, eager_start=True)  # type: ignore[call-arg,unused-ignore]
    return loop.create_task(coro)


_EAGER = sys.version_info >= (3, 12)
_DEADLINE = "call deadline"  # the cancel message of a call that ran out of time


def add_to_server(service: RunnerService, server: grpc.aio.Server, *, calls: bool = True) -> None:
    """Register PluginRunner as the generated add_PluginRunnerServicer_to_server does, except that Calls writes
    ResultBatch bytes made by plugin_runner.wire (no serializer). `calls=False` leaves Calls out (UNIMPLEMENTED),
    as a protocol 1 runner does."""
    unary = {
        "Describe": (pb.DescribeRequest, pb.DescribeResponse),
        "PrepareConf": (pb.PrepareConfRequest, pb.PrepareConfResponse),
        "HTTPReqCall": (pb.HTTPReqCallRequest, pb.HTTPReqCallResponse),
        "HTTPRespCall": (pb.HTTPRespCallRequest, pb.HTTPRespCallResponse),
        "ReleaseConf": (pb.ReleaseConfRequest, pb.ReleaseConfResponse),
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(service, name),
            request_deserializer=request.FromString,
            response_serializer=response.SerializeToString,
        )
        for name, (request, response) in unary.items()
    }
    if calls:
        handlers["Calls"] = grpc.stream_stream_rpc_method_handler(
            service.Calls, request_deserializer=pb.CallBatch.FromString, response_serializer=None
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
