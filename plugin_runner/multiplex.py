"""CallStream: the caller's end of a runner's Calls stream. Calls are multiplexed by id and batched; a dead stream
fails its calls at once, and the next call opens a new one.

A gRPC call costs the gateway several hundred microseconds of CPU; a message on an open stream much less, and a
batch of them about the same as one. So every call goes to one long-lived stream: it is queued, the writer sends
all queued calls as one CallBatch whenever its previous write is done (a lone call goes at once; while others are
in flight the writer first lets the event loop turn once, so that the requests it runs join the batch), and the
reader resolves each call's future from the ResultBatches by id. Errors surface as grpc.aio.AioRpcError,
as they do from the unary RPCs: the CallError's code, DEADLINE_EXCEEDED at the caller's deadline, UNAVAILABLE when
the stream broke (runner gone, restarting, or it ended the stream) or was closed (StreamBroken, which also says
when the runner may not serve Calls at all).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import time
from dataclasses import dataclass

import grpc

from plugin_runner import wire
from plugin_runner.proto import runner_pb2 as pb

__all__ = ["CALLS_METHOD", "CallStream", "StreamBroken", "StreamStats", "rpc_error"]

CALLS_METHOD = "/protogate.plugin.v1.PluginRunner/Calls"
_CODES = {code.value[0]: code for code in grpc.StatusCode}


Answer = pb.HTTPReqCallResponse | pb.HTTPRespCallResponse


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """The error a unary RPC failing with `code` would have raised (no metadata)."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


class StreamBroken(grpc.aio.AioRpcError):
    """UNAVAILABLE: the Calls stream broke (or was closed) with the call in flight.

    `maybe_unserved`: the runner may not serve Calls at all: the stream failed before any result came on it, with
    UNIMPLEMENTED, or with the INTERNAL grpc.aio reports instead when a write races that answer. The caller may
    try the unary RPC. Never set when the connection was lost (the runner died): those calls fail, as unary RPCs
    in flight would.
    """

    def __init__(self, details: str, *, maybe_unserved: bool = False) -> None:
        super().__init__(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)
        self.maybe_unserved = maybe_unserved


_UNSERVED = frozenset({grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL})


def _call_error(error: pb.CallError) -> grpc.aio.AioRpcError:
    code = _CODES.get(error.code)
    if code is None or code == grpc.StatusCode.OK:
        return rpc_error(grpc.StatusCode.UNKNOWN, f"runner answered status {error.code}: {error.message}")
    return rpc_error(code, error.message)


@dataclass
class StreamStats:
    """Counters of one CallStream, over every stream it opened."""

    opened: int = 0  # streams opened (a new one after each break)
    batches: int = 0  # CallBatch messages written
    calls: int = 0  # calls written (calls / batches: the mean batch size)


class _Stream:
    """One open Calls RPC and the calls in flight on it. Once broken it stays broken (CallStream opens another)."""

    def __init__(self, call: grpc.aio.StreamStreamCall, max_batch_bytes: int, stats: StreamStats) -> None:
        self.call = call
        self.max_batch_bytes = max_batch_bytes
        self.stats = stats
        self.pending: dict[int, asyncio.Future[pb.Result]] = {}
        self.broken: StreamBroken | None = None
        self.carried = False  # some result came on it: the runner does serve Calls
        self._queue: list[tuple[int, bytes]] = []  # (call id, CallBatch entry) not written yet
        self._wake = asyncio.Event()
        self._writer = asyncio.create_task(self._write_loop(), name="runner-calls-writer")
        self._reader = asyncio.create_task(self._read_loop(), name="runner-calls-reader")

    def send(self, call_id: int, entry: bytes) -> asyncio.Future[pb.Result]:
        future: asyncio.Future[pb.Result] = asyncio.get_running_loop().create_future()
        pending = self.pending
        pending[call_id] = future
        queue = self._queue
        queue.append((call_id, entry))
        if len(queue) > 2 * len(pending) + 64:  # the writer is stuck and calls were given up on meanwhile
            self._queue = [(queued, entry) for queued, entry in queue if queued in pending]
        self._wake.set()
        return future

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._wake.wait()
                if len(self.pending) > len(self._queue):
                    # Busy: calls are in flight. One more turn of the event loop lets the requests it runs add
                    # their calls to this batch (fewer, bigger writes); a lone call goes at once.
                    await asyncio.sleep(0)
                self._wake.clear()
                while self._queue:
                    batch, count = self._take()
                    if count:
                        await self.call.write(batch)
                        self.stats.batches += 1
                        self.stats.calls += count
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            self.fail(_describe(exc), exc.code())
        except Exception as exc:
            # The call finished under the writer (InvalidStateError): the reader reports it.
            if not self.call.done():
                self.fail(f"plugin runner Calls stream broke: {exc!r}")

    def _take(self) -> tuple[bytes, int]:
        """Queued calls up to max_batch_bytes (at least one), joined into one CallBatch; and how many. Calls given
        up on while queued (deadline, cancelled) are dropped: a runner that stopped reading costs no memory."""
        pending = self.pending
        batch: list[bytes] = []
        size, taken = 0, 0
        for call_id, entry in self._queue:
            if batch and size + len(entry) > self.max_batch_bytes:
                break
            taken += 1
            if call_id in pending:
                batch.append(entry)
                size += len(entry)
        del self._queue[:taken]
        return b"".join(batch), len(batch)

    async def _read_loop(self) -> None:
        pending = self.pending
        try:
            while True:
                batch = await self.call.read()
                if batch is grpc.aio.EOF:
                    break
                self.carried = True
                for result in batch.results:
                    future = pending.pop(result.id, None)
                    if future is not None and not future.done():
                        future.set_result(result)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            self.fail(_describe(exc), exc.code())
            return
        except Exception as exc:
            self.fail(f"plugin runner Calls stream broke: {exc!r}")
            return
        self.fail("plugin runner ended the Calls stream")

    def fail(self, details: str, code: grpc.StatusCode | None = None) -> None:
        """Break the stream: every call in flight fails with StreamBroken, nothing more is sent on it. `code`: the
        stream's own status, when it ended with one."""
        unserved = not self.carried and code in _UNSERVED
        if self.broken is None:
            self.broken = StreamBroken(details, maybe_unserved=unserved)
        self._queue.clear()
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(StreamBroken(details, maybe_unserved=unserved))
        current = asyncio.current_task()
        for task in (self._writer, self._reader):
            if task is not current:
                task.cancel()
        self.call.cancel()

    async def close(self, details: str) -> None:
        self.fail(details)
        for task in (self._writer, self._reader):
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _describe(exc: grpc.aio.AioRpcError) -> str:
    return f"plugin runner Calls stream failed: {exc.code().name} {exc.details()}"


class CallStream:
    """Calls to one runner over one stream at a time, at most `max_in_flight` in flight (more wait for a slot).

    Safe for concurrent use from one event loop.
    """

    def __init__(
        self, channel: grpc.aio.Channel, *, max_in_flight: int = 1024, max_batch_bytes: int = 1024 * 1024
    ) -> None:
        self._method = channel.stream_stream(
            CALLS_METHOD,
            request_serializer=None,  # CallBatch bytes built by wire.call_entry
            response_deserializer=pb.ResultBatch.FromString,
        )
        self.max_in_flight = max_in_flight
        self.max_batch_bytes = max_batch_bytes
        self._stream: _Stream | None = None
        self._ids = itertools.count(1)
        self._in_flight = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False
        self.stats = StreamStats()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def call(self, kind: wire.CallKind, payload: bytes, deadline: float) -> Answer:
        """Send a serialised request of `kind`; the answer message, or AioRpcError. `deadline`: time.monotonic()."""
        while self._in_flight >= self.max_in_flight:
            await self._slot(deadline)
        self._in_flight += 1
        try:
            return await self._call(kind, payload, deadline)
        finally:
            self._in_flight -= 1
            self._wake_a_waiter()

    def _wake_a_waiter(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _call(self, kind: wire.CallKind, payload: bytes, deadline: float) -> Answer:
        if self._closed:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, "plugin runner client closed")
        stream = self._stream
        if stream is None or stream.broken is not None:
            stream = self._stream = _Stream(self._method(), self.max_batch_bytes, self.stats)
            self.stats.opened += 1
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        call_id = next(self._ids)
        future = stream.send(call_id, wire.call_entry(call_id, max(1, int(remaining * 1000)), kind, payload))
        timer = asyncio.get_running_loop().call_later(remaining, _expire, future)
        try:
            result = await future
        finally:
            timer.cancel()
            stream.pending.pop(call_id, None)
        which = result.WhichOneof("result")
        if which == kind.field:
            return getattr(result, which)  # type: ignore[no-any-return]
        if which == "error":
            raise _call_error(result.error)
        raise rpc_error(grpc.StatusCode.UNKNOWN, f"runner answered a {kind.field} call with {which or 'nothing'}")

    async def _slot(self, deadline: float) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, max(deadline - time.monotonic(), 0))
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._wake_a_waiter()  # woken, but leaving (cancelled): the slot is someone else's
            else:
                waiter.cancel()
            if isinstance(exc, TimeoutError):
                raise rpc_error(
                    grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded (waiting for a call slot)"
                ) from None
            raise

    async def close(self) -> None:
        """Fail every call in flight (UNAVAILABLE) and end the stream; later calls fail at once."""
        self._closed = True
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.close("plugin runner client closed")


def _expire(future: asyncio.Future[pb.Result]) -> None:
    if not future.done():
        future.set_exception(rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
