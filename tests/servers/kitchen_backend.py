"""An echo backend for tests/protos/protogate/test/v1/kitchen.proto: shows what the gateway built from a request.

Run: ``python tests/servers/kitchen_backend.py --port 0 --descriptor-set kitchen.binpb`` (a FileDescriptorSet
with imports). Once serving it prints exactly one line, ``kitchen backend listening on 127.0.0.1:PORT``;
SIGTERM or SIGINT stops it.

Every KitchenService method answers at once:
- a method whose request and response types are the same (CreateKitchen) returns the request as it came;
- one that returns a Kitchen (or a ListKitchensResponse) returns the request packed in `Kitchen.any`, so the
  JSON answer shows every field the gateway set;
- one that returns google.protobuf.Empty returns it.
Request metadata steers the answer: `x-echo-code: 7` fails the call with that code (and a google.rpc.ErrorInfo
detail); `x-echo-header-<key>: v` and `x-echo-trailer-<key>: v` send `<key>: v` as initial or trailing metadata.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.rpc import error_details_pb2, status_pb2

SERVICE = "protogate.test.v1.KitchenService"
LIST_RESPONSE = "protogate.test.v1.ListKitchensResponse"
HEADER_PREFIX = "x-echo-header-"
TRAILER_PREFIX = "x-echo-trailer-"


def _answer(method: MethodDescriptor, request: bytes) -> bytes:
    output = method.output_type
    if output.full_name == method.input_type.full_name:
        return request
    message = message_factory.GetMessageClass(output)()
    holder: Any = message.kitchens.add() if output.full_name == LIST_RESPONSE else message
    if "any" in holder.DESCRIPTOR.fields_by_name:
        holder.any.type_url = f"type.googleapis.com/{method.input_type.full_name}"
        holder.any.value = request
    return message.SerializeToString()


def _handler(method: MethodDescriptor) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
    async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        initial: list[tuple[str, str]] = []
        trailing: list[tuple[str, str]] = []
        code = 0
        for key, value in context.invocation_metadata() or ():
            if key == "x-echo-code" and isinstance(value, str) and value.isdigit():
                code = int(value)
            elif key.startswith(HEADER_PREFIX) and isinstance(value, str):
                initial.append((key[len(HEADER_PREFIX) :], value))
            elif key.startswith(TRAILER_PREFIX) and isinstance(value, str):
                trailing.append((key[len(TRAILER_PREFIX) :], value))
        if initial:
            await context.send_initial_metadata(tuple(initial))
        if code:
            status_code = next(c for c in grpc.StatusCode if c.value[0] == code)
            info = error_details_pb2.ErrorInfo(reason="ECHO", domain="kitchen.test", metadata={"method": method.name})
            status = status_pb2.Status(code=code, message=f"echo {status_code.name}")
            status.details.add().Pack(info)
            details = (("grpc-status-details-bin", status.SerializeToString()),)
            await context.abort(status_code, status.message, trailing_metadata=tuple(trailing) + details)
        if trailing:
            context.set_trailing_metadata(tuple(trailing))
        return _answer(method, request)

    return handle


def _service(descriptor_set: bytes) -> grpc.GenericRpcHandler:
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
    pool = descriptor_pool.DescriptorPool()
    for file_proto in files.file:  # protoc --include_imports writes dependencies first
        pool.Add(file_proto)
    service = pool.FindServiceByName(SERVICE)
    handlers = {m.name: grpc.unary_unary_rpc_method_handler(_handler(m)) for m in service.methods}
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


async def serve(port: int, descriptor_set: Path) -> int:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_service(descriptor_set.read_bytes()),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"kitchen backend listening on 127.0.0.1:{bound}", flush=True)
    await stop.wait()
    await server.stop(1)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--descriptor-set", type=Path, required=True)
    args = parser.parse_args()
    return asyncio.run(serve(args.port, args.descriptor_set))


if __name__ == "__main__":
    sys.exit(main())
