"""A real etcd (Debian's etcd-server, 3.4) on free loopback ports, in a temp data dir; stoppable mid-test.
EtcdProxy sits in front of one and breaks its watch streams on purpose."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aetcd
import aetcd.rpc as rpc
import grpc
from processes import Process, start
from servers.local_servers import free_port, poll


class EtcdServer:
    """A one-member etcd cluster; stop() and start() again keep the port and the data (and so the revisions).

    Its cluster and member ids derive from its name, peer URL and cluster token only: a fresh data dir with
    the same `peer_port` and `cluster_token` is a new history under the same ids (as a restored backup is).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        peer_port: int | None = None,
        cluster_token: str = "etcd-cluster",
    ) -> None:
        binary = shutil.which("etcd")
        if binary is None:
            raise RuntimeError("etcd is not installed: run `make services` (apt-get install etcd-server)")
        self.binary = binary
        self.data_dir = data_dir
        self.port = port or free_port()
        self.peer_port = peer_port or free_port()
        self.cluster_token = cluster_token
        self.process: Process | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.popen.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        client, peer = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{self.peer_port}"
        self.process = start(
            [
                self.binary,
                "--name=test",
                f"--data-dir={self.data_dir}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=test={peer}",
                f"--initial-cluster-token={self.cluster_token}",
                # A lone member elects itself after one election timeout: keep it short so start-up is quick.
                "--heartbeat-interval=10",
                "--election-timeout=100",
                "--log-level=warn",
                "--logger=zap",
            ],
        )
        poll(self._healthy, timeout, "etcd", self._output)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def _healthy(self) -> bool:
        if not self.running:
            raise RuntimeError(f"etcd exited; output:\n{self._output()}")
        with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=1) as response:
            return json.loads(response.read()).get("health") == "true"

    def _output(self) -> str:
        return "".join(self.process.output) if self.process is not None else ""


async def replace_history(
    etcd: EtcdServer, data_dir: Path, keys: dict[bytes, bytes], *, filler: int = 0, cluster_token: str | None = None
) -> None:
    """Stop `etcd` and start it again on a fresh data dir (a new history: a restored backup, a rebuilt
    cluster) holding `keys` after `filler` other writes. The new history is written on a port of its own
    first, so no client sees it half-made. Unless `cluster_token` changes, the cluster and member ids stay."""
    etcd.stop()
    token = cluster_token or etcd.cluster_token
    staging = EtcdServer(data_dir, peer_port=etcd.peer_port, cluster_token=token)
    staging.start()
    client = aetcd.Client("127.0.0.1", staging.port)
    try:
        for n in range(filler):
            await client.put(f"/elsewhere/{n}".encode(), b"x")
        for key, value in keys.items():
            await client.put(key, value)
    finally:
        await client.close()
        staging.stop()
    etcd.data_dir, etcd.cluster_token = data_dir, token
    etcd.start()


_WATCH = "/etcdserverpb.Watch/Watch"
_FORWARDED = ("token", "hasleader")  # the request metadata etcd reads


class EtcdProxy:
    """A gRPC proxy (in the test's own loop) in front of a real etcd. Every call passes through as bytes;
    the watch streams open at the time of a call can be broken the ways a load balancer or a wedged
    member breaks them: ended with an OK status, cancelled by "etcd", or left open and silent for good.
    Streams opened later pass normally."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.port = 0
        self.watches = 0  # watch streams opened so far
        self._open: dict[int, asyncio.Queue[str]] = {}  # stream number -> what to do to it
        self._server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._channel = grpc.aio.insecure_channel(self.target)
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers([_Handlers(self)])
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(None)
        if self._channel is not None:
            await self._channel.close()

    def break_watches(self, how: str) -> int:
        """`end`, `cancel` or `silence` every open watch stream; how many there were."""
        assert how in ("end", "cancel", "silence")
        for orders in self._open.values():
            orders.put_nowait(how)
        return len(self._open)

    async def unary(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        assert self._channel is not None
        try:
            return await self._channel.unary_unary(method)(request, metadata=_metadata(context))  # type: ignore[no-any-return]
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details() or "")
            raise

    async def watch(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        assert self._channel is not None
        number, self.watches = self.watches, self.watches + 1
        orders: asyncio.Queue[str] = asyncio.Queue()
        self._open[number] = orders
        call = self._channel.stream_stream(_WATCH)(metadata=_metadata(context))

        async def forward_requests() -> None:
            async for request in requests:
                await call.write(request)
            await call.done_writing()

        forwarding = asyncio.ensure_future(forward_requests())
        last_watch_id = 0
        try:
            while True:
                read = asyncio.ensure_future(call.read())
                order = asyncio.ensure_future(orders.get())
                done, _ = await asyncio.wait({read, order}, return_when=asyncio.FIRST_COMPLETED)
                if order in done:
                    read.cancel()
                    how = order.result()
                    if how == "cancel":
                        response = rpc.WatchResponse(watch_id=last_watch_id, canceled=True, cancel_reason="proxy")
                        yield response.SerializeToString()
                    elif how == "silence":
                        await asyncio.Event().wait()  # until the client goes away
                    return  # "end", or after the cancel: the stream ends with an OK status
                order.cancel()
                data = read.result()
                if data is grpc.aio.EOF:
                    return
                last_watch_id = rpc.WatchResponse.FromString(data).watch_id
                yield data
        finally:
            del self._open[number]
            forwarding.cancel()
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await forwarding


def _metadata(context: grpc.aio.ServicerContext) -> tuple[tuple[str, str], ...]:
    return tuple((k, v) for k, v in context.invocation_metadata() or () if k in _FORWARDED and isinstance(v, str))


class _Handlers(grpc.GenericRpcHandler):
    def __init__(self, proxy: EtcdProxy) -> None:
        self.proxy = proxy

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        if method == _WATCH:
            return grpc.stream_stream_rpc_method_handler(self.proxy.watch)

        async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await self.proxy.unary(method, request, context)

        return grpc.unary_unary_rpc_method_handler(unary)
