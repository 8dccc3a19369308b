"""plugin_runner.multiplex.CallStream against scripted Calls endpoints (grpc.aio servers on real Unix sockets).

Each test scripts what the runner end does with the batches it reads: answer out of order, hold answers, break the
stream, end it, answer garbage. The real runners (Python, Node.js) are driven in test_server.py and
test_node_runner.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from plugin_runner import wire
from plugin_runner.multiplex import CallStream, StreamBroken
from plugin_runner.proto import runner_pb2 as pb

Behaviour = Callable[[AsyncIterator[pb.CallBatch], grpc.aio.ServicerContext], Awaitable[None]]


@asynccontextmanager
async def calls_endpoint(tmp_path: Path, behaviour: Behaviour | None, **options: int) -> AsyncIterator[CallStream]:
    """A server whose Calls does `behaviour`; None: a server without Calls (a protocol 1 runner)."""
    server = grpc.aio.server()
    if behaviour is not None:
        handler = grpc.stream_stream_rpc_method_handler(
            behaviour,
            request_deserializer=pb.CallBatch.FromString,
            response_serializer=pb.ResultBatch.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("protogate.plugin.v1.PluginRunner", {"Calls": handler}),)
        )
    target = f"unix:{tmp_path / 'calls.sock'}"
    server.add_insecure_port(target)
    await server.start()
    channel = grpc.aio.insecure_channel(target)
    stream = CallStream(channel, **options)
    try:
        yield stream
    finally:
        await stream.close()
        await channel.close()
        await server.stop(0)


def request(path: str) -> bytes:
    return pb.HTTPReqCallRequest(token="t", method="GET", path=path).SerializeToString()


def rewrite_to(call: pb.Call) -> pb.Result:
    """Answer a request call with a rewrite to its own path: each caller can tell its answer from the others'."""
    return pb.Result(id=call.id, http_req=pb.HTTPReqCallResponse(rewrite=pb.Rewrite(path=call.http_req.path)))


def soon(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


async def test_concurrent_calls_share_batches_and_match_answers_by_id(tmp_path: Path) -> None:
    received: list[pb.Call] = []
    timeouts: list[int] = []

    async def reverse_every_ten(batches: AsyncIterator[pb.CallBatch], context: grpc.aio.ServicerContext) -> None:
        async for batch in batches:
            received.extend(batch.calls)
            timeouts.extend(call.timeout_ms for call in batch.calls)
            if len(received) == 10:  # answer all at once, last call first
                await context.write(pb.ResultBatch(results=[rewrite_to(call) for call in reversed(received)]))

    async with calls_endpoint(tmp_path, reverse_every_ten) as stream:
        answers = await asyncio.gather(*(stream.call(wire.REQUEST, request(f"/{i}"), soon()) for i in range(10)))
        assert [answer.rewrite.path for answer in answers] == [f"/{i}" for i in range(10)]
        assert stream.stats.opened == 1 and stream.stats.calls == 10
        assert stream.stats.batches < 10  # calls made in one turn of the event loop travel together
        assert all(4000 < timeout <= 5000 for timeout in timeouts)  # each call says how long it is waited for
        assert stream.in_flight == 0


async def test_a_broken_stream_fails_its_calls_at_once_and_the_next_call_opens_another(tmp_path: Path) -> None:
    streams = 0

    async def break_the_first(batches: AsyncIterator[pb.CallBatch], context: grpc.aio.ServicerContext) -> None:
        nonlocal streams
        streams += 1
        async for batch in batches:
            if streams == 1:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "runner going down")
            await context.write(pb.ResultBatch(results=[rewrite_to(call) for call in batch.calls]))

    async with calls_endpoint(tmp_path, break_the_first) as stream:
        started = time.monotonic()
        failed = await asyncio.gather(
            *(stream.call(wire.REQUEST, request("/x"), soon(10)) for _ in range(3)), return_exceptions=True
        )
        assert time.monotonic() - started < 2  # not at the 10 s deadline
        for error in failed:
            assert isinstance(error, StreamBroken) and error.code() == grpc.StatusCode.UNAVAILABLE
            assert "runner going down" in (error.details() or "")
            assert not error.maybe_unserved  # the connection's fault, not a missing Calls: no retry elsewhere
        answer = await stream.call(wire.REQUEST, request("/again"), soon())
        assert answer.rewrite.path == "/again" and stream.stats.opened == 2


async def test_a_runner_without_calls_is_told_apart_from_a_lost_connection(tmp_path: Path) -> None:
    async def internal_at_once(batches: AsyncIterator[pb.CallBatch], context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.INTERNAL, "what grpc.aio may report for a write racing UNIMPLEMENTED")

    for behaviour in (None, internal_at_once):
        async with calls_endpoint(tmp_path, behaviour) as stream:
            for _ in range(2):  # each call opens a new stream, refused the same way
                with pytest.raises(StreamBroken) as refused:
                    await stream.call(wire.REQUEST, request("/x"), soon())
                assert refused.value.maybe_unserved  # the caller may try the unary RPC


async def test_a_stream_that_answered_before_it_broke_is_proven(tmp_path: Path) -> None:
    async def answer_once(batches: AsyncIterator[pb.CallBatch], context: grpc.aio.ServicerContext) -> None:
        async for batch in batches:
            if batch.calls[0].http_req.path == "/second":
                await context.abort(grpc.StatusCode.UNAVAILABLE, "runner going down")
            await context.write(pb.ResultBatch(results=[rewrite_to(call) for call in batch.calls]))

    async with calls_endpoint(tmp_path, answer_once) as stream:
        assert (await stream.call(wire.REQUEST, request("/first"), soon())).rewrite.path == "/first"
        with pytest.raises(StreamBroken) as broken:
            await stream.call(wire.REQUEST, request("/second"), soon())
        assert not broken.value.maybe_unserved  # the runner does serve Calls: the call failed, no retry elsewhere


async def test_a_stream_the_runner_ends_fails_the_calls_left_on_it(tmp_path: Path) -> None:
    async def end_at_once(batches: AsyncIterator[pb.CallBatch], context: grpc.aio.ServicerContext) -> None:
        async for _ in batches:
            return  # status OK, the call unanswered

    async with calls_endpoint(tmp_path, end_at_once) as stream:
        with pytest.raises(StreamBroken) as ended:
            await stream.call(wire.REQUEST, request("/x"), soon(10))
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE and "ended" in (ended.value.details() or "")


async def test_deadline_then_the_late_answer_is_dropped_and_the_stream_goes_on(tmp_path: Path) -> None:
    held: list[pb.Call] = []
    release = asyncio.Event()

    async def answer_late(batches: AsyncIterator[pb.CallBatch], context: grpc.aio.ServicerContext) -> None:
        async for batch in batches:
            for call in batch.calls:
                if call.http_req.path == "/slow":
                    held.append(call)
                    release.set()
                else:
                    results = [rewrite_to(late) for late in held] + [rewrite_to(call)]
                    held.clear()
                    await context.write(pb.ResultBatch(results=results))

    async with calls_endpoint(tmp_path, answer_late) as stream:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await stream.call(wire.REQUEST, request("/slow"), time.monotonic() + 0.2)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert 0.15 < time.monotonic() - started < 1.5
        await release.wait()
        # The slow call's answer arrives with this one's: dropped, nobody waits for it any more.
        answer = await stream.call(wire.REQUEST, request("/fast"), soon())
        assert answer.rewrite.path == "/fast" and stream.stats.opened == 1 and stream.in_flight == 0


async def test_call_errors_and_garbage_answers_are_rpc_errors(tmp_path: Path) -> None:
    async def by_path(batches: AsyncIterator[pb.CallBatch], context: grpc.aio.ServicerContext) -> None:
        async for batch in batches:
            results = []
            for call in batch.calls:
                path = call.http_req.path
                if path == "/internal":
                    results.append(pb.Result(id=call.id, error=pb.CallError(code=13, message="plugin 'x' failed")))
                elif path == "/token":
                    results.append(pb.Result(id=call.id, error=pb.CallError(code=9, message="TOKEN_UNKNOWN")))
                elif path == "/ok-code":
                    results.append(pb.Result(id=call.id, error=pb.CallError(code=0)))
                elif path == "/no-such-code":
                    results.append(pb.Result(id=call.id, error=pb.CallError(code=99)))
                elif path == "/wrong-kind":
                    results.append(pb.Result(id=call.id, http_resp=pb.HTTPRespCallResponse()))
                else:
                    results.append(pb.Result(id=call.id))
            await context.write(pb.ResultBatch(results=results))

    expected = {
        "/internal": (grpc.StatusCode.INTERNAL, "plugin 'x' failed"),
        "/token": (grpc.StatusCode.FAILED_PRECONDITION, "TOKEN_UNKNOWN"),
        "/ok-code": (grpc.StatusCode.UNKNOWN, "runner answered status 0: "),
        "/no-such-code": (grpc.StatusCode.UNKNOWN, "runner answered status 99: "),
        "/wrong-kind": (grpc.StatusCode.UNKNOWN, "runner answered a http_req call with http_resp"),
        "/nothing": (grpc.StatusCode.UNKNOWN, "runner answered a http_req call with nothing"),
    }
    async with calls_endpoint(tmp_path, by_path) as stream:
        for path, (code, details) in expected.items():
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stream.call(wire.REQUEST, request(path), soon())
            assert (failed.value.code(), failed.value.details()) == (code, details), path
        assert stream.stats.opened == 1  # a call's failure is not the stream's


async def test_calls_over_the_in_flight_bound_wait_for_a_slot_within_their_deadline(tmp_path: Path) -> None:
    held: list[pb.Call] = []
    arrived = asyncio.Event()
    answer_them = asyncio.Event()

    async def hold(batches: AsyncIterator[pb.CallBatch], context: grpc.aio.ServicerContext) -> None:
        async def reader() -> None:
            async for batch in batches:
                held.extend(batch.calls)
                arrived.set()

        task = asyncio.create_task(reader())
        try:
            await answer_them.wait()
            while True:
                await arrived.wait()
                arrived.clear()
                results, held[:] = [rewrite_to(call) for call in held], []
                await context.write(pb.ResultBatch(results=results))
        finally:
            task.cancel()

    async with calls_endpoint(tmp_path, hold, max_in_flight=2) as stream:
        first = [asyncio.create_task(stream.call(wire.REQUEST, request(f"/{i}"), soon())) for i in range(2)]
        while len(held) < 2:
            await arrived.wait()
        assert stream.in_flight == 2
        with pytest.raises(grpc.aio.AioRpcError) as waited:  # no slot frees up in time
            await stream.call(wire.REQUEST, request("/starved"), time.monotonic() + 0.1)
        assert waited.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        third = asyncio.create_task(stream.call(wire.REQUEST, request("/third"), soon()))
        for _ in range(10):  # turns of the event loop in which it could (wrongly) go out
            await asyncio.sleep(0)
        assert stream.stats.calls == 2 and not third.done()
        answer_them.set()
        assert [(await task).rewrite.path for task in first] == ["/0", "/1"]
        assert (await third).rewrite.path == "/third" and stream.stats.calls == 3


async def test_close_fails_calls_in_flight_and_later_ones(tmp_path: Path) -> None:
    got_it = asyncio.Event()

    async def never_answer(batches: AsyncIterator[pb.CallBatch], context: grpc.aio.ServicerContext) -> None:
        async for _ in batches:
            got_it.set()

    async with calls_endpoint(tmp_path, never_answer) as stream:
        waiting = asyncio.create_task(stream.call(wire.REQUEST, request("/x"), soon(10)))
        await got_it.wait()
        await stream.close()
        with pytest.raises(StreamBroken) as closed:
            await waiting
        assert closed.value.code() == grpc.StatusCode.UNAVAILABLE and not closed.value.maybe_unserved
        with pytest.raises(grpc.aio.AioRpcError) as later:
            await stream.call(wire.REQUEST, request("/y"), soon())
        assert later.value.code() == grpc.StatusCode.UNAVAILABLE
