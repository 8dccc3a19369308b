"""One connection to one etcd endpoint: a gRPC channel, its auth token, unary KV calls and watch streams."""

from __future__ import annotations

import asyncio
from typing import Any

import aetcd.rpc as rpc  # etcd v3's generated messages and stubs; the calls themselves are made here
import grpc

DEFAULT_PORT = 2379
# gRPC's own reconnect backoff grows to 120 s; a store that must converge soon after etcd is back wants less:
# attempts at most about a second apart (1 s, with gRPC's 20 % jitter). min_reconnect_backoff is in fact the
# time one connection attempt is given at least (gRPC core reads it as the minimum connect timeout): a second,
# so a distant etcd is not given up on mid-handshake; a refused connection still fails at once.
# Keepalive pings find a peer that vanished without closing the connection (a partition, a frozen host).
CHANNEL_OPTIONS: dict[str, Any] = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 1000,
    "grpc.max_reconnect_backoff_ms": 1000,
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
}
# Longer than the longest wait between two reconnect attempts (above), so a request made while the channel
# backs off still sees one fresh attempt before it gives up.
CONNECT_WAIT = 2.0
# etcd ends a watch carrying this when its member loses the leader, instead of leaving it silent (a partition).
_REQUIRE_LEADER = ("hasleader", "true")
# Errors etcd gives for a token it no longer knows (it restarted: simple tokens live in memory) or an old one.
_STALE_TOKEN = ("invalid auth token", "revision of auth store is old")


class EtcdUnavailable(Exception):
    """No answer from the endpoint (no connection, deadline passed, stream ended or went silent): an outage."""


class EtcdRefused(Exception):
    """etcd answered with an error that is not an outage (bad request, permission, space exceeded...)."""


class HistoryGone(EtcdRefused):
    """A revision etcd no longer has (compacted) or has not reached (its history restarted lower)."""


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """`http://host:port`, `host:port`, `[v6]:port` or `host` (port 2379) -> (host, port)."""
    address = endpoint.strip()
    scheme, sep, rest = address.partition("://")
    if sep:
        if scheme != "http":
            raise ValueError(f"etcd endpoint {endpoint!r}: only http:// is supported (no TLS to etcd yet)")
        address = rest
    address = address.rstrip("/")
    if address.startswith("["):
        host, _, port = address[1:].partition("]")
        port = port.removeprefix(":")
    elif address.count(":") == 1:
        host, _, port = address.partition(":")
    else:
        host, port = address, ""
    if not host or (port and not port.isdigit()) or not 0 < int(port or DEFAULT_PORT) < 65536:
        raise ValueError(f"etcd endpoint {endpoint!r} is not HOST:PORT")
    return host, int(port or DEFAULT_PORT)


def mapped(exc: grpc.aio.AioRpcError, address: str) -> Exception:
    code, details = exc.code(), exc.details() or exc.code().name
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        return EtcdUnavailable(f"{address}: {details}")
    if code == grpc.StatusCode.OUT_OF_RANGE:
        return HistoryGone(details)
    return EtcdRefused(details)


def _own_cancellation() -> bool:
    """Whether the running task is being cancelled (as opposed to the gRPC call under it)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class EtcdConnection:
    """A channel to one endpoint. Every call first waits (at most `connect_wait`) for the channel to connect,
    so a call made while gRPC backs off between reconnect attempts waits for the next one instead of
    failing at once, then gives etcd `timeout` seconds to answer. A token etcd forgot is renewed once."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float,
        connect_wait: float = CONNECT_WAIT,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.timeout = timeout
        self.connect_wait = connect_wait
        self._credentials = credentials
        self._token: str | None = None
        self.channel = grpc.aio.insecure_channel(self.address, options=list(CHANNEL_OPTIONS.items()))
        self._kv = rpc.KVStub(self.channel)
        self._auth = rpc.AuthStub(self.channel)
        self._watch = rpc.WatchStub(self.channel)

    async def ready(self) -> None:
        """Return once the channel is connected; EtcdUnavailable after `connect_wait` seconds without."""
        if self.channel.get_state(try_to_connect=True) == grpc.ChannelConnectivity.READY:
            return
        try:
            await asyncio.wait_for(self.channel.channel_ready(), self.connect_wait)
        except TimeoutError:
            raise EtcdUnavailable(f"{self.address}: no connection within {self.connect_wait:g}s") from None

    async def _metadata(self) -> tuple[tuple[str, str], ...]:
        if self._credentials is None:
            return ()
        if self._token is None:
            name, password = self._credentials
            request = rpc.AuthenticateRequest(name=name, password=password)
            response = await self._call(self._auth.Authenticate, request, ())
            self._token = response.token
        return (("token", self._token),)

    async def _call(self, method: Any, request: Any, metadata: tuple[tuple[str, str], ...]) -> Any:
        try:
            return await method(request, timeout=self.timeout, metadata=metadata, wait_for_ready=True)
        except asyncio.CancelledError:
            if _own_cancellation():
                raise
            raise EtcdUnavailable(f"{self.address}: the connection was closed") from None
        except grpc.aio.AioRpcError as exc:
            raise mapped(exc, self.address) from exc

    async def kv(self, method: str, request: Any) -> Any:
        """`KV.<method>(request)`: Range, Put, DeleteRange or Txn."""
        await self.ready()
        call = getattr(self._kv, method)
        try:
            return await self._call(call, request, await self._metadata())
        except EtcdRefused as exc:
            if self._token is None or not any(stale in str(exc) for stale in _STALE_TOKEN):
                raise
        self._token = None  # refused before it was applied: safe to send again, with a new token
        return await self._call(call, request, await self._metadata())

    async def watch(self, key: bytes, range_end: bytes, start_revision: int) -> WatchStream:
        """A watch of [key, range_end) from `start_revision`, created (etcd confirmed it) on its own stream."""
        await self.ready()
        metadata = (*await self._metadata(), _REQUIRE_LEADER)
        stream = WatchStream(self._watch.Watch(metadata=metadata), self.address)
        try:
            create = rpc.WatchCreateRequest(key=key, range_end=range_end, start_revision=start_revision)
            await stream.write(rpc.WatchRequest(create_request=create))
            created = await asyncio.wait_for(stream.read(), self.timeout)
        except BaseException:
            stream.cancel()
            raise
        if not created.created:
            stream.cancel()
            raise EtcdUnavailable(f"{self.address}: etcd answered a watch request with {created}")
        return stream

    async def close(self) -> None:
        await self.channel.close()


class WatchStream:
    """One watch on its own bidirectional stream. read() raises instead of ending or hiding a cancellation:
    a stream that ends, even cleanly, is EtcdUnavailable, and so is a watch etcd cancelled (HistoryGone
    when it was for a compaction); nothing can leave the caller waiting on a watch that will never speak."""

    def __init__(self, call: Any, address: str) -> None:
        self._call = call
        self.address = address

    async def write(self, request: Any) -> None:
        try:
            await self._call.write(request)
        except asyncio.CancelledError:
            if _own_cancellation():
                raise
            raise EtcdUnavailable(f"{self.address}: the watch stream was closed") from None
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            raise EtcdUnavailable(f"{self.address}: the watch stream failed: {exc}") from None

    async def read(self) -> Any:
        try:
            response = await self._call.read()
        except asyncio.CancelledError:
            if _own_cancellation():
                raise
            raise EtcdUnavailable(f"{self.address}: the watch stream was closed") from None
        except grpc.aio.AioRpcError as exc:
            raise mapped(exc, self.address) from exc
        if response is grpc.aio.EOF:
            raise EtcdUnavailable(f"{self.address}: etcd ended the watch stream")
        if response.compact_revision:
            raise HistoryGone(f"etcd compacted the watched history up to revision {response.compact_revision}")
        if response.canceled:
            raise EtcdUnavailable(f"{self.address}: etcd cancelled the watch: {response.cancel_reason or 'no reason'}")
        return response

    async def request_progress(self) -> None:
        """Ask etcd for a progress response (its current revision, no events): proof the stream still works."""
        await self.write(rpc.WatchRequest(progress_request=rpc.WatchProgressRequest()))

    def cancel(self) -> None:
        self._call.cancel()


def if_at_revision(key: bytes, revision: int, then: Any) -> Any:
    """A transaction: `then` when the key's mod_revision is `revision` (0: it does not exist), else read it."""
    compare = rpc.Compare(
        result=rpc.Compare.CompareResult.EQUAL, target=rpc.Compare.CompareTarget.MOD, key=key, mod_revision=revision
    )
    return rpc.TxnRequest(
        compare=[compare], success=[then], failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key))]
    )


def found_revision(txn: Any) -> int:
    """The mod_revision a failed if_at_revision found (0: no such key)."""
    kvs = txn.responses[0].response_range.kvs if txn.responses else []
    return int(kvs[0].mod_revision) if kvs else 0
