"""EtcdStore: the resources in etcd v3, one JSON value per key, watched so that every node converges."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aetcd
import aetcd.exceptions
import aetcd.rpc
import aetcd.utils
import grpc

from gateway.store.base import RESOURCE_KINDS, Snapshot, StoreConflict, StoredObject, StoreError, id_field

log = logging.getLogger("protogate.store.etcd")

T = TypeVar("T")
Objects = dict[str, dict[str, StoredObject]]

DEFAULT_PORT = 2379
# gRPC's own reconnect backoff grows to 120 s; a store that must converge soon after etcd is back wants less.
# Keepalive pings find a peer that vanished without closing the connection (a partition, a frozen host).
_CHANNEL_OPTIONS: dict[str, Any] = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
}
_UNREACHABLE = (aetcd.exceptions.ConnectionFailedError, aetcd.exceptions.ConnectionTimeoutError, TimeoutError)


class _Resync(Exception):
    """The watch cannot continue from the revision it holds (compacted away, or etcd's history restarted)."""


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


class EtcdStore:
    """The resources under `<prefix>/<kind>/<id>` in etcd; an object's revision is its key's mod_revision.

    Requests go to one endpoint at a time and move to the next when it is unreachable. Every
    request is bounded by `timeout` seconds, so while etcd is away `snapshot()` and the writes raise
    StoreError quickly. `watch()` never raises for an outage: it reconnects with backoff (logging
    once per outage), resumes from the last revision it saw, and resynchronises from a fresh
    snapshot when that revision was compacted away.
    """

    read_only = False

    def __init__(
        self,
        endpoints: Sequence[str],
        prefix: str = "/protogate",
        *,
        timeout: float = 5.0,
        username: str | None = None,
        password: str | None = None,
        reconnect_delay: float = 0.1,
        max_reconnect_delay: float = 2.0,
    ) -> None:
        if not endpoints:
            raise ValueError("etcd store needs at least one endpoint")
        if (username is None) != (password is None):
            raise ValueError("etcd username and password go together")
        if timeout <= 0:
            raise ValueError("etcd timeout must be positive")
        self.endpoints = [parse_endpoint(e) for e in endpoints]
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.timeout = timeout
        self.reconnect_delay = reconnect_delay
        self.max_reconnect_delay = max(max_reconnect_delay, reconnect_delay)
        self._credentials = (username, password)
        self._root = (self.prefix + "/").encode()
        self._current = 0  # index into endpoints of the shared client
        self._client: aetcd.Client | None = None
        self._watch_clients: set[aetcd.Client] = set()
        self._closed = False
        # The revision of this store's last write (the Admin API reports a delete's revision from it).
        self.revision: int | None = None

    # -- keys and values

    def key(self, kind: str, obj_id: str) -> bytes:
        if kind not in RESOURCE_KINDS:
            raise ValueError(f"unknown resource kind {kind!r}")
        if not obj_id or "/" in obj_id:
            raise ValueError(f"object id {obj_id!r} must be non-empty and have no '/'")
        return self._root + f"{kind}/{obj_id}".encode()

    def _split(self, key: bytes) -> tuple[str, str] | None:
        """(kind, id) of a key under the prefix, or None for a key that is not a resource (left alone)."""
        kind, sep, obj_id = key[len(self._root) :].decode("utf-8", "replace").partition("/")
        if not sep or kind not in RESOURCE_KINDS or not obj_id or "/" in obj_id:
            return None
        return kind, obj_id

    @staticmethod
    def _decode(key: bytes, raw: bytes) -> dict[str, Any]:
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise StoreError(f"etcd key {key.decode(errors='replace')} does not hold JSON: {exc}") from None
        if not isinstance(value, dict):
            raise StoreError(f"etcd key {key.decode(errors='replace')} does not hold a JSON object")
        return value

    # -- clients

    def _new_client(self, index: int) -> aetcd.Client:
        host, port = self.endpoints[index % len(self.endpoints)]
        username, password = self._credentials
        return aetcd.Client(
            host=host,
            port=port,
            username=username,
            password=password,
            timeout=self.timeout,  # type: ignore[arg-type]  # passed on to grpc, which takes float seconds
            options=_CHANNEL_OPTIONS,
            connect_wait_timeout=self.timeout,  # type: ignore[arg-type]
        )

    async def _request(self, operation: Callable[[aetcd.Client], Awaitable[T]]) -> T:
        """Run one operation, trying each endpoint once; StoreError when none answers in time."""
        if self._closed:
            raise StoreError("etcd store is closed")
        last: BaseException | None = None
        for _ in self.endpoints:
            if self._client is None:
                self._client = self._new_client(self._current)
            client = self._client
            try:
                return await asyncio.wait_for(operation(client), self.timeout)
            except _UNREACHABLE as exc:
                last = exc
                if len(self.endpoints) > 1 and self._client is client:
                    self._client, self._current = None, self._current + 1
                    await client.close()
            except aetcd.exceptions.ClientError as exc:
                raise StoreError(f"etcd refused the request: {exc}") from exc
        where = ", ".join(f"{host}:{port}" for host, port in self.endpoints)
        raise StoreError(f"etcd unreachable ({where}): {last or 'timed out'}") from last

    async def _kv_range(self, client: aetcd.Client, request: Any) -> Any:
        """A RangeRequest sent as is: aetcd's get_prefix cannot read at a revision or count only.
        Errors are mapped the way aetcd maps its own."""
        await client.connect()
        try:
            return await client.kvstub.Range(request, timeout=self.timeout, metadata=client.metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.OUT_OF_RANGE:  # compacted, or a revision etcd has not reached
                raise _Resync(exc.details()) from None
            aetcd.exceptions._handle_exception(exc)  # always raises
            raise

    async def _range(self, client: aetcd.Client, revision: int = 0) -> Snapshot:
        """Every resource at `revision` (0: now)."""
        request = aetcd.rpc.RangeRequest(
            key=self._root, range_end=aetcd.utils.prefix_range_end(self._root), revision=revision
        )
        response = await self._kv_range(client, request)
        objects: Objects = {kind: {} for kind in RESOURCE_KINDS}
        for kv in response.kvs:
            where = self._split(kv.key)
            if where is not None:
                kind, obj_id = where
                value = self._decode(kv.key, kv.value)
                objects[kind][obj_id] = StoredObject(kind, obj_id, value, kv.mod_revision, kv.create_revision)
        return Snapshot(revision or response.header.revision, objects)

    # -- ConfigStore

    async def snapshot(self) -> Snapshot:
        return await self._request(self._range)

    async def put(self, kind: str, obj_id: str, value: dict[str, Any], *, expect_revision: int | None) -> StoredObject:
        key = self.key(kind, obj_id)
        named = value.get(id_field(kind))
        if named is not None and str(named) != obj_id:
            raise ValueError(f"the value's {id_field(kind)} {named!r} is not {obj_id!r}")
        data = json.dumps(value, separators=(",", ":"), sort_keys=True).encode()

        async def write(client: aetcd.Client) -> tuple[int, int]:
            """(the write's revision, the object's create revision)"""
            if expect_revision is None:
                put = await client.put(key, data, prev_kv=True)
                revision, previous = int(put.header.revision), put.prev_kv
            else:
                # expect_revision 0 means "must not exist": etcd compares a missing key's mod_revision as 0.
                succeeded, responses = await client.transaction(
                    compare=[client.transactions.mod(key) == expect_revision],
                    success=[client.transactions.put(key, data, prev_kv=True)],
                    failure=[client.transactions.get(key)],
                )
                if not succeeded:
                    current = responses[0][0][1].mod_revision if responses and responses[0] else 0
                    raise StoreConflict(f"{kind}/{obj_id} is at revision {current}, not {expect_revision}")
                response = responses[0].response_put
                revision = int(response.header.revision)
                previous = response.prev_kv if response.HasField("prev_kv") else None
            return revision, int(previous.create_revision) if previous else revision

        revision, created = await self._request(write)
        self.revision = revision
        return StoredObject(kind, obj_id, dict(value), revision, created)

    async def delete(self, kind: str, obj_id: str, *, expect_revision: int | None) -> None:
        key = self.key(kind, obj_id)

        async def remove(client: aetcd.Client) -> int | None:
            """The delete's revision; None when there was nothing to delete."""
            if expect_revision is None:
                deleted = await client.delete(key)
                return None if deleted is None else int(deleted.header.revision)
            succeeded, responses = await client.transaction(
                compare=[client.transactions.mod(key) == expect_revision],
                success=[client.transactions.delete(key)],
                failure=[client.transactions.get(key)],
            )
            if succeeded:
                response = responses[0].response_delete_range
                return int(response.header.revision) if response.deleted else None
            if not responses or not responses[0]:
                return None
            current = responses[0][0][1].mod_revision
            raise StoreConflict(f"{kind}/{obj_id} is at revision {current}, not {expect_revision}")

        revision = await self._request(remove)
        if revision is None:
            raise KeyError(f"{kind}/{obj_id}")
        self.revision = revision

    async def watch(self, after_revision: int) -> AsyncIterator[Snapshot]:
        objects: Objects | None = None
        revision = after_revision
        resync = False
        corrupt: set[bytes] = set()  # keys whose value is not a JSON object: no snapshot until they are fixed
        delay, outage, endpoint = self.reconnect_delay, False, self._current
        while not self._closed:
            client = self._new_client(endpoint)
            self._watch_clients.add(client)
            try:
                now = await asyncio.wait_for(self._revision_now(client), self.timeout)
                # etcd behind the revision we hold: its history restarted (restored from a backup, or wiped).
                resync = resync or (objects is not None and now < revision)
                if objects is None or resync:
                    base = await self._base(client, revision, fresh=resync)
                    objects, corrupt = base.objects, set()
                    changed = resync or revision <= 0 or base.revision != revision
                    revision, resync = base.revision, False
                    if changed:
                        yield base
                watch = await client.watch_prefix(self._root, start_revision=revision + 1)
                if outage:
                    log.warning("etcd watch resumed from revision %d", revision)
                outage, delay = False, self.reconnect_delay
                async for batch in _batches(watch):
                    if not any([self._apply(objects, corrupt, event) for event in batch]):
                        continue
                    revision = max(revision, *(int(event.kv.mod_revision) for event in batch))
                    if corrupt:
                        keys = sorted(k.decode(errors="replace") for k in corrupt)
                        log.error("etcd keys hold invalid values; keeping the last good config: %s", keys)
                        continue
                    yield Snapshot(revision, {kind: dict(by_id) for kind, by_id in objects.items()})
                if not self._closed:
                    raise aetcd.exceptions.ConnectionFailedError("the watch stream ended")
            except (_Resync, aetcd.exceptions.RevisionCompactedError) as exc:
                log.warning("etcd watch cannot resume after revision %d (%s); resynchronising", revision, exc)
                resync = True
            except Exception as exc:  # an outage, whatever shape the error takes: the watch must outlive it
                if self._closed:
                    break
                if not outage:
                    outage = True
                    log.warning("etcd unreachable (%s); keeping the last config and retrying", exc or type(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_reconnect_delay)
                endpoint += 1
            finally:
                self._watch_clients.discard(client)
                await client.close()

    async def _revision_now(self, client: aetcd.Client) -> int:
        request = aetcd.rpc.RangeRequest(key=self._root, count_only=True)
        return int((await self._kv_range(client, request)).header.revision)

    async def _base(self, client: aetcd.Client, revision: int, *, fresh: bool) -> Snapshot:
        """The state to apply events to: as it was at `revision`, or now when that is gone (or `fresh`)."""
        if revision > 0 and not fresh:
            try:
                return await asyncio.wait_for(self._range(client, revision), self.timeout)
            except _Resync:
                pass
        return await asyncio.wait_for(self._range(client), self.timeout)

    def _apply(self, objects: Objects, corrupt: set[bytes], event: Any) -> bool:
        key: bytes = event.kv.key
        where = self._split(key)
        if where is None:
            return False
        kind, obj_id = where
        corrupt.discard(key)
        if event.kind == "DELETE":
            objects[kind].pop(obj_id, None)
            return True
        try:
            value = self._decode(key, event.kv.value)
        except StoreError:
            corrupt.add(key)
            objects[kind].pop(obj_id, None)
            return True
        objects[kind][obj_id] = StoredObject(kind, obj_id, value, event.kv.mod_revision, event.kv.create_revision)
        return True

    async def close(self) -> None:
        self._closed = True
        for client in list(self._watch_clients):
            await client.close()
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()


async def _batches(watch: aetcd.Watch) -> AsyncIterator[list[Any]]:
    """The watch's events, grouped: everything that arrived together (one revision's events arrive
    in one response, so a transaction is never split) comes out as one list."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    done = object()

    async def pump() -> None:
        try:
            async for event in watch:
                queue.put_nowait(event)
            queue.put_nowait(done)
        except BaseException as exc:
            queue.put_nowait(exc)
            raise

    task = asyncio.create_task(pump())
    try:
        while True:
            items = [await queue.get()]
            while not queue.empty():
                items.append(queue.get_nowait())
            events = [item for item in items if item is not done and not isinstance(item, BaseException)]
            yield events
            for item in items:
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):  # its error, if any, came through the queue
            await task
