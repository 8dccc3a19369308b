"""The quickstart Bookstore with grpc.health.v1, for the upstream health-check tests.

Run: ``python tests/servers/health_backend.py --port 0 --name b1``. Once serving it prints exactly one
line, ``health backend listening on 127.0.0.1:PORT``. SIGUSR1 makes its health answer NOT_SERVING and
SIGUSR2 SERVING again (the Bookstore itself keeps answering); SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import signal
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

QUICKSTART_SERVER = Path(__file__).resolve().parent.parent.parent / "examples" / "quickstart" / "server.py"
SERVICE = "bookstore.v1.Bookstore"


def _quickstart() -> ModuleType:
    spec = importlib.util.spec_from_file_location("quickstart_server", QUICKSTART_SERVER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def serve(port: int, name: str) -> int:
    quickstart = _quickstart()
    calls: Counter[str] = Counter()
    server = grpc.aio.server(interceptors=[quickstart.ServedByInterceptor(name, calls)])
    store = quickstart.Store()
    quickstart._seed(store)
    quickstart.pb_grpc.add_BookstoreServicer_to_server(quickstart.BookstoreService(store, name, calls), server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for service in ("", SERVICE):
        await health.set(service, health_pb2.HealthCheckResponse.SERVING)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if not bound:
        print(f"cannot listen on 127.0.0.1:{port}", file=sys.stderr)
        return 1
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    pending: set[asyncio.Task[None]] = set()

    def set_all(status: int) -> None:
        for service in ("", SERVICE):
            task = loop.create_task(health.set(service, status))
            pending.add(task)
            task.add_done_callback(pending.discard)

    loop.add_signal_handler(signal.SIGUSR1, set_all, health_pb2.HealthCheckResponse.NOT_SERVING)
    loop.add_signal_handler(signal.SIGUSR2, set_all, health_pb2.HealthCheckResponse.SERVING)
    print(f"health backend listening on 127.0.0.1:{bound}", flush=True)
    await stop.wait()
    await server.stop(0.2)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1; 0 picks a free one")
    parser.add_argument("--name", default="health-backend", help="sent as x-bookstore-served-by")
    args = parser.parse_args()
    return asyncio.run(serve(args.port, args.name))


if __name__ == "__main__":
    sys.exit(main())
