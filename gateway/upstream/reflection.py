"""gRPC server reflection client: a backend's services -> FileDescriptorSet bytes, and a watcher that re-fetches.

The exchange itself is a generator (`conversation`) that yields requests and is sent responses, so the
blocking client used at config load and the grpc.aio client used by `ReflectionWatcher` share one protocol.
Both speak TLS to a grpcs upstream with the upstream's own client TLS (`tls`), as its calls do.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import queue
import time
from collections.abc import Callable, Generator, Sequence

import grpc
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from gateway.tls import ClientTls, tls_failure
from transcoder.descriptors import DescriptorIndex
from transcoder.errors import TranscodeError

log = logging.getLogger("protogate.reflection")

# v1 and v1alpha define the same messages under two package names, so one set of classes speaks both.
V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
V1ALPHA = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
_REFLECTION_SERVICES = frozenset({"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"})
_CHANNEL_OPTIONS: tuple[tuple[str, object], ...] = (
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.enable_retries", 0),
)
# The watcher's channels exist to notice a node coming back: cap gRPC's reconnect backoff (120 s by default).
_WATCH_OPTIONS: tuple[tuple[str, object], ...] = (
    *_CHANNEL_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5_000),
)

Request = reflection_pb2.ServerReflectionRequest
Response = reflection_pb2.ServerReflectionResponse
Conversation = Generator[Request, Response, bytes]


class ReflectionError(Exception):
    """The backend could not be reached or could not describe its services; the message says why."""


class _Unimplemented(Exception):
    """The backend does not serve this version of the reflection service."""


def conversation(services: Sequence[str] | None = None) -> Conversation:
    """Yield reflection requests, take each response, return the FileDescriptorSet of `services`.

    No `services` means every service the backend lists (reflection itself left out). Dependencies the
    backend did not send along are asked for by file name, so the set is closed under imports. Files
    are sorted by name and serialized deterministically: the same backend gives the same bytes.
    """
    if services:
        wanted = list(dict.fromkeys(services))
    else:
        reply = yield Request(list_services="*")
        _check(reply, "list_services")
        listed = {s.name for s in reply.list_services_response.service} - _REFLECTION_SERVICES
        if not listed:
            raise ReflectionError("the backend lists no services besides reflection")
        wanted = sorted(listed)
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    for service in wanted:
        reply = yield Request(file_containing_symbol=service)
        _check(reply, f"service {service}")
        _collect(files, reply)
    while missing := sorted({dep for f in files.values() for dep in f.dependency} - files.keys()):
        reply = yield Request(file_by_filename=missing[0])
        _check(reply, f"file {missing[0]}")
        _collect(files, reply)
        if missing[0] not in files:
            raise ReflectionError(f"asked for {missing[0]}, the backend sent {sorted(files)}")
    file_set = descriptor_pb2.FileDescriptorSet(file=[files[name] for name in sorted(files)])
    return file_set.SerializeToString(deterministic=True)


def _check(reply: Response, what: str) -> None:
    if reply.HasField("error_response"):
        error = reply.error_response
        code = _status_name(error.error_code)
        if error.error_code == grpc.StatusCode.NOT_FOUND.value[0] and what.startswith("service "):
            raise ReflectionError(f"the backend has no {what}")
        raise ReflectionError(f"{what}: {code} {error.error_message}".rstrip())


def _status_name(number: int) -> str:
    return next((code.name for code in grpc.StatusCode if code.value[0] == number), str(number))


def _collect(files: dict[str, descriptor_pb2.FileDescriptorProto], reply: Response) -> None:
    for raw in reply.file_descriptor_response.file_descriptor_proto:
        file_proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
        files.setdefault(file_proto.name, file_proto)


def _rpc_error(err: grpc.RpcError, timeout: float) -> Exception:
    code = err.code() if isinstance(err, grpc.Call | grpc.aio.AioRpcError) else None
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return _Unimplemented()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return ReflectionError(f"no answer within {timeout:g}s")
    details = err.details() if isinstance(err, grpc.Call | grpc.aio.AioRpcError) else str(err)
    if code == grpc.StatusCode.UNAVAILABLE and tls_failure(details or ""):
        # Name it: a wrong tls.ca, tls.server_name or client certificate is fixed in the config, not by waiting.
        return ReflectionError(f"TLS handshake failed ({details})")
    if code == grpc.StatusCode.UNAVAILABLE:
        return ReflectionError(f"unreachable ({details})")
    return ReflectionError(f"{code.name if code else 'error'}: {details}")


# -- blocking client, for config load ---------------------------------------------------------------------------


def fetch_file_set(
    addresses: Sequence[str],
    services: Sequence[str] | None = None,
    timeout: float = 3.0,
    tls: ClientTls | None = None,
) -> bytes:
    """FileDescriptorSet bytes from the first of `addresses` (host:port) that answers; v1, else v1alpha.

    `timeout` bounds each node's whole attempt, connecting included; `tls` (a grpcs upstream's) makes the
    channels secure. Raises ReflectionError naming every node's failure.
    """
    failures: list[str] = []
    for address in addresses:
        try:
            return _fetch_blocking(address, services, timeout, tls)
        except ReflectionError as exc:
            failures.append(f"{address}: {exc}")
    raise ReflectionError("; ".join(failures) or "no nodes to ask")


def _fetch_blocking(address: str, services: Sequence[str] | None, timeout: float, tls: ClientTls | None) -> bytes:
    deadline = time.monotonic() + timeout
    if tls is None:
        blocking = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
    else:
        blocking = grpc.secure_channel(address, tls.grpc_credentials(), options=_CHANNEL_OPTIONS + tls.grpc_options())
    with blocking as channel:
        for path in (V1, V1ALPHA):
            try:
                return _talk_blocking(channel, path, services, max(deadline - time.monotonic(), 0.01), timeout)
            except _Unimplemented:
                continue
    raise ReflectionError("the backend does not serve gRPC server reflection (neither v1 nor v1alpha)")


def _talk_blocking(
    channel: grpc.Channel, path: str, services: Sequence[str] | None, remaining: float, timeout: float
) -> bytes:
    requests: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
    method = channel.stream_stream(
        path, request_serializer=Request.SerializeToString, response_deserializer=Response.FromString
    )
    call = method(iter(requests.get, None), timeout=remaining)
    talk = conversation(services)
    try:
        request = next(talk)
        while True:
            requests.put(request)
            try:
                response = next(call)
            except grpc.RpcError as err:
                raise _rpc_error(err, timeout) from None
            except StopIteration:
                raise ReflectionError("the backend ended the reflection stream early") from None
            try:
                request = talk.send(response)
            except StopIteration as done:
                return done.value
    finally:
        requests.put(None)
        call.cancel()


# -- grpc.aio client and the watcher ------------------------------------------------------------------------------


async def _talk_async(channel: grpc.aio.Channel, path: str, services: Sequence[str] | None, timeout: float) -> bytes:
    method = channel.stream_stream(
        path, request_serializer=Request.SerializeToString, response_deserializer=Response.FromString
    )
    call = method(timeout=timeout)
    talk = conversation(services)
    try:
        request = next(talk)
        while True:
            try:
                await call.write(request)
                response = await call.read()
            except grpc.aio.AioRpcError as err:
                raise _rpc_error(err, timeout) from None
            if response is grpc.aio.EOF:
                raise ReflectionError("the backend ended the reflection stream early")
            try:
                request = talk.send(response)
            except StopIteration as done:
                return done.value
    finally:
        call.cancel()


async def fetch_file_set_async(
    channel: grpc.aio.Channel, services: Sequence[str] | None = None, timeout: float = 3.0
) -> bytes:
    """FileDescriptorSet bytes over an open grpc.aio channel; v1, else v1alpha."""
    for path in (V1, V1ALPHA):
        try:
            return await _talk_async(channel, path, services, timeout)
        except _Unimplemented:
            continue
    raise ReflectionError("the backend does not serve gRPC server reflection (neither v1 nor v1alpha)")


def file_set_of(index: DescriptorIndex) -> bytes:
    """The FileDescriptorSet an index was built from, in `conversation`'s canonical form (for comparing)."""
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(index.pool.FindFileByName(name).serialized_pb)
        for name in sorted(index.file_names)
    ]
    return descriptor_pb2.FileDescriptorSet(file=files).SerializeToString(deterministic=True)


def digest(file_set: bytes) -> str:
    return hashlib.sha256(file_set).hexdigest()


OnChange = Callable[[DescriptorIndex], None]


_RETRY_FIRST = 0.5  # seconds before the first retry of a failed refresh
_RETRY_MAX = 10.0


class ReflectionWatcher:
    """Re-fetch a backend's descriptors every `interval` seconds and when a node reconnects.

    When the FileDescriptorSet differs from the last one, `on_change` gets the new DescriptorIndex (built
    off the event loop). A failed fetch keeps the old index; the failure is logged once per streak.
    `interval` 0 turns the periodic fetch off (reconnects still trigger one). `tls`: a grpcs upstream's
    client TLS. Start inside the event loop.
    """

    def __init__(
        self,
        name: str,
        addresses: Sequence[str],
        on_change: OnChange,
        *,
        services: Sequence[str] | None = None,
        interval: float = 30.0,
        timeout: float = 3.0,
        current: DescriptorIndex | None = None,
        tls: ClientTls | None = None,
    ) -> None:
        self.name = name
        self.addresses = list(addresses)
        self.on_change = on_change
        self.services = list(services) if services else None
        self.interval = interval
        self.timeout = timeout
        self.current = current
        self.tls = tls
        self._digest: str | None = None
        self._failing = False
        self._wake = asyncio.Event()
        self._channels: list[grpc.aio.Channel] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._refreshing = asyncio.Lock()

    def start(self) -> None:
        if self._tasks:
            return
        self._channels = [self._channel(address) for address in self.addresses]
        self._tasks.append(asyncio.create_task(self._run(), name=f"reflection-watcher:{self.name}"))
        for channel in self._channels:
            self._tasks.append(asyncio.create_task(self._watch_connectivity(channel)))
        if self.current is None:  # nothing loaded yet (an optional source that was down): fetch now
            self._wake.set()

    def _channel(self, address: str) -> grpc.aio.Channel:
        if self.tls is None:
            return grpc.aio.insecure_channel(address, options=_WATCH_OPTIONS)
        options = _WATCH_OPTIONS + self.tls.grpc_options()
        return grpc.aio.secure_channel(address, self.tls.grpc_credentials(), options=options)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for channel in self._channels:
            await channel.close()
        self._channels.clear()

    def trigger(self) -> None:
        """Ask for a fetch now (coalesced with one already asked for)."""
        self._wake.set()

    async def refresh(self) -> bool:
        """Fetch once; True when the descriptors changed and `on_change` was called."""
        async with self._refreshing:
            return await self._refresh()

    async def _refresh(self) -> bool:
        try:
            data = await self._fetch()
            changed_digest = digest(data)
            if changed_digest == self._digest:
                self._recovered()
                return False
            index = await asyncio.to_thread(DescriptorIndex.from_bytes, data)
        except (ReflectionError, TranscodeError) as exc:
            if not self._failing:
                message = exc.message if isinstance(exc, TranscodeError) else str(exc)
                log.warning("proto %s: reflection refresh failed, keeping the old descriptors: %s", self.name, message)
            self._failing = True
            return False
        self._recovered()
        known = self._digest
        self._digest = changed_digest
        # The first fetch only tells whether the index from config load is still current.
        if known is None and self.current is not None and digest(file_set_of(self.current)) == changed_digest:
            return False
        self.current = index
        log.info("proto %s: descriptors changed (services: %s)", self.name, ", ".join(sorted(index.services)))
        try:
            self.on_change(index)
        except Exception:
            log.exception("proto %s: applying the new descriptors failed; routes keep the old ones", self.name)
        return True

    def _recovered(self) -> None:
        if self._failing:
            log.info("proto %s: reflection refresh works again", self.name)
        self._failing = False

    async def _fetch(self) -> bytes:
        if not self._channels:
            raise ReflectionError("the watcher is not started")
        failures: list[str] = []
        for address, channel in zip(self.addresses, self._channels, strict=True):
            try:
                return await fetch_file_set_async(channel, self.services, self.timeout)
            except ReflectionError as exc:
                failures.append(f"{address}: {exc}")
        raise ReflectionError("; ".join(failures))

    async def _run(self) -> None:
        retry = _RETRY_FIRST
        while True:
            # After a failed fetch, try again soon (doubling) even without a periodic interval: a node
            # that came back may answer a moment after it reports READY, and no other event would come.
            if self._failing:
                timeout: float | None = min(retry, self.interval) if self.interval else retry
            else:
                timeout = self.interval or None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)
            self._wake.clear()
            await self.refresh()
            retry = min(retry * 2, _RETRY_MAX) if self._failing else _RETRY_FIRST

    async def _watch_connectivity(self, channel: grpc.aio.Channel) -> None:
        # A node that comes back (restart, redeploy) may serve other services: fetch whenever a connection is
        # (re)established. The first one too: a node restarted before this channel ever reported READY (a busy
        # start) would otherwise look like no reconnect at all. An unchanged set costs one fetch, no reload.
        state = channel.get_state(try_to_connect=True)
        while True:
            if state == grpc.ChannelConnectivity.READY:
                self.trigger()
            if state == grpc.ChannelConnectivity.IDLE:
                # A channel left idle reconnects only when asked; ask, with gRPC's own backoff.
                state = channel.get_state(try_to_connect=True)
            await channel.wait_for_state_change(state)
            state = channel.get_state(try_to_connect=True)
