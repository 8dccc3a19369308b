"""A raw-bytes gRPC upstream for the proxy tests: all four call shapes, a stream that floods, and cancellations.

Run: ``python tests/servers/grpc_probe.py --port 0``. Once serving it prints exactly one line,
``grpc probe listening on 127.0.0.1:PORT``; SIGTERM or SIGINT stops it. Methods of probe.v1.Probe
(messages are plain bytes, no protobuf):
  Echo (unary)          the request back; initial metadata x-probe-initial, trailing x-probe-trailing
  Count (server stream) b"N" or b"N,MS": N messages b"0".."N-1", MS milliseconds apart
  Join (client stream)  the request messages joined with b"|"
  Chat (bidi)           each message back in upper case, as it arrives
  Hang (unary)          never answers
  Flood (server stream) 1 MiB messages as fast as the peer takes them; Sent tells how many went
  Fail (unary)          b"CODE:message": that status, with trailing metadata x-probe-trailing
  Stats (unary)         JSON: {"cancelled": {method: n}, "sent": n}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

SERVICE = "probe.v1.Probe"


class Probe:
    def __init__(self) -> None:
        self.cancelled: Counter[str] = Counter()
        self.flood_sent = 0

    async def echo(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.send_initial_metadata((("x-probe-initial", "yes"),))
        context.set_trailing_metadata((("x-probe-trailing", "done"),))
        return request

    async def count(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        count, _, millis = request.decode().partition(",")
        for n in range(int(count)):
            if n and millis:
                await asyncio.sleep(int(millis) / 1000)
            yield str(n).encode()

    async def join(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        return b"|".join([message async for message in requests])

    async def chat(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        async for message in requests:
            yield message.upper()

    async def hang(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.Event().wait()
        return b""

    async def flood(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        self.flood_sent = 0
        chunk = b"x" * (1024 * 1024)
        for _ in range(int(request or b"200")):
            yield chunk  # the next one is asked for only once this one was written
            self.flood_sent += 1

    async def fail(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        code, _, message = request.decode().partition(":")
        status = next(s for s in grpc.StatusCode if s.value[0] == int(code))
        await context.abort(status, message, trailing_metadata=(("x-probe-trailing", "failed"),))
        return b""

    async def stats(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return json.dumps({"cancelled": dict(self.cancelled), "sent": self.flood_sent}).encode()


def _counted(probe: Probe, name: str, behavior: Callable[..., Any], streaming: bool) -> Callable[..., Any]:
    """Records a call that ended because the client (here: the gateway) cancelled it."""
    if streaming:

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            finished = False
            try:
                async for item in behavior(request, context):
                    yield item
                finished = True
            finally:
                if not finished:  # cancelled while waiting, or closed while suspended at a yield
                    probe.cancelled[name] += 1

        return stream

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> bytes:
        try:
            return await behavior(request, context)
        except asyncio.CancelledError:
            probe.cancelled[name] += 1
            raise

    return unary


def handlers(probe: Probe) -> grpc.GenericRpcHandler:
    methods = {
        "Echo": grpc.unary_unary_rpc_method_handler(_counted(probe, "Echo", probe.echo, False)),
        "Count": grpc.unary_stream_rpc_method_handler(_counted(probe, "Count", probe.count, True)),
        "Join": grpc.stream_unary_rpc_method_handler(_counted(probe, "Join", probe.join, False)),
        "Chat": grpc.stream_stream_rpc_method_handler(_counted(probe, "Chat", probe.chat, True)),
        "Hang": grpc.unary_unary_rpc_method_handler(_counted(probe, "Hang", probe.hang, False)),
        "Flood": grpc.unary_stream_rpc_method_handler(_counted(probe, "Flood", probe.flood, True)),
        "Fail": grpc.unary_unary_rpc_method_handler(probe.fail),
        "Stats": grpc.unary_unary_rpc_method_handler(probe.stats),
    }
    return grpc.method_handlers_generic_handler(SERVICE, methods)


async def serve(port: int) -> int:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handlers(Probe()),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"grpc probe listening on 127.0.0.1:{bound}", flush=True)
    await stop.wait()
    await server.stop(0.5)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    return asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    sys.exit(main())
