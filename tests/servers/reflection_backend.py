"""A gRPC backend with server reflection, for the reflection tests: the quickstart Bookstore, optionally Greeter.

Run: ``python tests/servers/reflection_backend.py --port 0 --services bookstore,greeter --reflection both``.
Once serving it prints exactly one line, ``reflection backend listening on 127.0.0.1:PORT``; SIGTERM or
SIGINT stops it. Restarting it on the same port with other ``--services`` is how a test changes the
service set a gateway sees. ``--reflection`` picks the reflection versions served: grpcio-reflection
only has v1alpha, so v1 is the same servicer registered under the v1 name (the messages are identical).
``--tls-cert`` and ``--tls-key`` serve TLS; ``--tls-client-ca`` also requires client certificates from that CA.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer

HERE = Path(__file__).resolve().parent
QUICKSTART_SERVER = HERE.parent.parent / "examples" / "quickstart" / "server.py"
GREETER_PROTOS = HERE / "protos"
V1_SERVICE = "grpc.reflection.v1.ServerReflection"


def _quickstart() -> ModuleType:
    # Importing the quickstart server builds its stubs if needed and puts them on sys.path.
    spec = importlib.util.spec_from_file_location("quickstart_server", QUICKSTART_SERVER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _greeter_modules(out_dir: Path) -> tuple[ModuleType, ModuleType]:
    from google.api import annotations_pb2

    googleapis = Path(annotations_pb2.__file__).parent.parent.parent
    args = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={GREETER_PROTOS}",
        f"--proto_path={googleapis}",
        f"--python_out={out_dir}",
        "reflectiontest/v1/greeting.proto",
        "reflectiontest/v1/greeter.proto",
    ]
    subprocess.run(args, check=True)
    sys.path.insert(0, str(out_dir))
    return (
        importlib.import_module("reflectiontest.v1.greeting_pb2"),
        importlib.import_module("reflectiontest.v1.greeter_pb2"),
    )


def _add_greeter(server: grpc.aio.Server, greeting: Any, name: str) -> str:
    async def say_hello(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return greeting.HelloReply(message=f"Hello, {request.name}! ({name})")

    handler = grpc.unary_unary_rpc_method_handler(
        say_hello,
        request_deserializer=greeting.HelloRequest.FromString,
        response_serializer=greeting.HelloReply.SerializeToString,
    )
    service = "reflectiontest.v1.Greeter"
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, {"SayHello": handler})])
    return service


def _add_reflection(server: grpc.aio.Server, names: list[str], versions: str) -> None:
    if versions in ("v1alpha", "both"):
        reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], server)
    if versions in ("v1", "both"):
        servicer = ReflectionServicer([*names, V1_SERVICE])
        handler = grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(V1_SERVICE, {"ServerReflectionInfo": handler})]
        )


def _credentials(cert: str, key: str, client_ca: str | None) -> grpc.ServerCredentials:
    root = Path(client_ca).read_bytes() if client_ca else None
    pair = (Path(key).read_bytes(), Path(cert).read_bytes())
    return grpc.ssl_server_credentials([pair], root_certificates=root, require_client_auth=root is not None)


async def serve(
    port: int, services: list[str], versions: str, name: str, work_dir: Path, tls: grpc.ServerCredentials | None = None
) -> int:
    quickstart = _quickstart()
    calls: Counter[str] = Counter()
    server = grpc.aio.server(interceptors=[quickstart.ServedByInterceptor(name, calls)])
    names: list[str] = []
    if "bookstore" in services:
        store = quickstart.Store()
        quickstart._seed(store)
        quickstart.pb_grpc.add_BookstoreServicer_to_server(quickstart.BookstoreService(store, name, calls), server)
        names.append("bookstore.v1.Bookstore")
    if "greeter" in services:
        greeting, _ = _greeter_modules(work_dir)  # importing greeter_pb2 puts the service in the default pool
        names.append(_add_greeter(server, greeting, name))
    if versions != "none":
        _add_reflection(server, names, versions)
    address = f"127.0.0.1:{port}"
    bound = server.add_insecure_port(address) if tls is None else server.add_secure_port(address, tls)
    if not bound:
        print(f"cannot listen on 127.0.0.1:{port}", file=sys.stderr)
        return 1
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"reflection backend listening on 127.0.0.1:{bound}", flush=True)
    await stop.wait()
    await server.stop(0.5)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1; 0 picks a free one")
    parser.add_argument("--services", default="bookstore", help="comma-separated: bookstore, greeter")
    parser.add_argument("--reflection", default="both", choices=["both", "v1", "v1alpha", "none"])
    parser.add_argument("--name", default="reflection-backend", help="sent as x-bookstore-served-by")
    parser.add_argument("--tls-cert", help="serve TLS with this PEM certificate chain (with --tls-key)")
    parser.add_argument("--tls-key", help="the PEM private key of --tls-cert")
    parser.add_argument("--tls-client-ca", help="with --tls-cert: require client certificates signed by this CA")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    services = [s.strip() for s in args.services.split(",") if s.strip()]
    unknown = set(services) - {"bookstore", "greeter"}
    if unknown:
        parser.error(f"unknown services: {', '.join(sorted(unknown))}")
    work_dir = Path(tempfile.mkdtemp(prefix="reflection-backend-"))
    try:
        tls = _credentials(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
        return asyncio.run(serve(args.port, services, args.reflection, args.name, work_dir, tls))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
