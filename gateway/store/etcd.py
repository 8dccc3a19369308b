"""EtcdStore: the resources in etcd v3, one JSON value per key, watched so that every node converges."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aetcd.rpc as rpc
import aetcd.utils

from gateway.store.base import RESOURCE_KINDS, Snapshot, StoreConflict, StoredObject, StoreError, id_field
from gateway.store.etcd_client import (
    CONNECT_WAIT,
    EtcdConnection,
    EtcdRefused,
    EtcdUnavailable,
    HistoryGone,
    WatchStream,
    found_revision,
    if_at_revision,
    parse_endpoint,
)

log = logging.getLogger("protogate.store.etcd")

T = TypeVar("T")
Objects = dict[str, dict[str, StoredObject]]
Marks = dict[bytes, tuple[int, int]]  # resource key -> (mod_revision, create_revision): a history's fingerprint

# A watch that heard nothing for this long asks etcd for a progress response; no answer within `timeout`
# means the stream is stuck (it can be, without an error, behind a proxy or on a wedged member).
PROGRESS_INTERVAL = 10.0


class _HistoryChanged(Exception):
    """etcd no longer holds the history this watch followed: take its current state as a whole."""


@dataclass(frozen=True)
class _Write:
    """This store's last put, as etcd's history must still show it: the node may serve it before its watch
    sees it, so a watch that is behind checks etcd against it too."""

    revision: int
    key: bytes
    created: int
    value: bytes


@dataclass
class _View:
    """What one watch holds: the objects at `revision`, and what tells the history it came from."""

    revision: int
    cluster_id: int | None
    objects: Objects | None = None  # None until the first connection read them
    marks: Marks = field(default_factory=dict)
    corrupt: set[bytes] = field(default_factory=set)  # keys whose value is not a JSON object: no snapshot until fixed
    resync: str | None = None  # why the next connection must start over from etcd's current state
    unsent: str | None = None  # why it did, until a snapshot carries it (none goes out while a value is corrupt)

    def load(self, revision: int, objects: Objects, marks: Marks, corrupt: set[bytes]) -> None:
        self.revision, self.objects, self.marks, self.corrupt = revision, objects, marks, corrupt

    def snapshot(self) -> Snapshot:
        resync, self.unsent = self.unsent, None
        return Snapshot(self.revision, {kind: dict(by_id) for kind, by_id in (self.objects or {}).items()}, resync)

    def check(self, header: Any) -> None:
        """_HistoryChanged when an answer comes from another cluster, or from behind the revision held."""
        if self.cluster_id is not None and header.cluster_id != self.cluster_id:
            raise _HistoryChanged(f"etcd's cluster id changed from {self.cluster_id:x} to {header.cluster_id:x}")
        if header.revision < self.revision:
            raise _HistoryChanged(f"etcd is at revision {header.revision}, behind revision {self.revision} held here")


class EtcdStore:
    """The resources under `<prefix>/<kind>/<id>` in etcd; an object's revision is its key's mod_revision.

    Requests go to one endpoint at a time and move to the next when it is unreachable. A request waits
    up to `connect_wait` seconds for a connection (so one made just as etcd comes back, while gRPC backs
    off between reconnect attempts, goes through), then `timeout` seconds for etcd's answer: when etcd
    is down, snapshot() and the writes raise StoreError after `connect_wait` per endpoint.

    `watch()` never raises for an outage: it reconnects with backoff (logging once per outage; `error`
    says so meanwhile), checks that etcd still holds the history it followed, and resumes from the last
    revision it saw. When that history is gone (compacted, etcd restored from a backup, another cluster
    in its place: its cluster id differs, its revision went back, its keys at the revision held are not
    the ones seen, or it lacks this store's last write) it yields etcd's current state whole, marked
    `resync`. A stream that ends, is cancelled, or stays silent past a progress request counts as an
    outage, never as the end of changes.
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
        connect_wait: float = CONNECT_WAIT,
        progress_interval: float = PROGRESS_INTERVAL,
    ) -> None:
        if not endpoints:
            raise ValueError("etcd store needs at least one endpoint")
        if (username is None) != (password is None):
            raise ValueError("etcd username and password go together")
        if timeout <= 0 or connect_wait <= 0 or progress_interval <= 0:
            raise ValueError("etcd timeouts must be positive")
        self.endpoints = [parse_endpoint(e) for e in endpoints]
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.timeout = timeout
        self.connect_wait = connect_wait
        self.progress_interval = progress_interval
        self.reconnect_delay = reconnect_delay
        self.max_reconnect_delay = max(max_reconnect_delay, reconnect_delay)
        self._credentials = (username, password) if username is not None and password is not None else None
        self._root = (self.prefix + "/").encode()
        self._end = aetcd.utils.prefix_range_end(self._root)
        self._current = 0  # index into endpoints of the shared connection
        self._conn: EtcdConnection | None = None
        self._watch_conns: set[EtcdConnection] = set()
        self._closed = False
        self._last: Snapshot | None = None  # the last snapshot(): a watch from its revision checks etcd against it
        self._cluster_id: int | None = None  # of the etcd that answered it
        self._high = 0  # the highest revision etcd reported to this store's requests: it cannot go back
        self._write: _Write | None = None
        # The revision of this store's last write (the Admin API reports a delete's revision from it).
        self.revision: int | None = None
        self.error: str | None = None  # while the watch cannot reach etcd, why (the Admin API's status shows it)

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

    def _read(self, kvs: Any, *, strict: bool) -> tuple[Objects, Marks, set[bytes]]:
        """The resources among `kvs`; a value that is not a JSON object is StoreError when `strict`, else corrupt."""
        objects: Objects = {kind: {} for kind in RESOURCE_KINDS}
        marks: Marks = {}
        corrupt: set[bytes] = set()
        for kv in kvs:
            where = self._split(kv.key)
            if where is None:
                continue
            kind, obj_id = where
            marks[kv.key] = (kv.mod_revision, kv.create_revision)
            try:
                value = self._decode(kv.key, kv.value)
            except StoreError:
                if strict:
                    raise
                corrupt.add(kv.key)
                continue
            objects[kind][obj_id] = StoredObject(kind, obj_id, value, kv.mod_revision, kv.create_revision)
        return objects, marks, corrupt

    # -- requests

    def _connect(self, index: int) -> EtcdConnection:
        host, port = self.endpoints[index % len(self.endpoints)]
        return EtcdConnection(
            host, port, timeout=self.timeout, connect_wait=self.connect_wait, credentials=self._credentials
        )

    async def _request(self, operation: Callable[[EtcdConnection], Awaitable[T]]) -> T:
        """Run one operation, trying each endpoint once; StoreError when none answers in time."""
        if self._closed:
            raise StoreError("etcd store is closed")
        last: Exception | None = None
        for _ in self.endpoints:
            if self._conn is None:
                self._conn = self._connect(self._current)
            conn = self._conn
            try:
                # Each step has its own deadline (connect, token, call, a renewed token's call): a guard only.
                return await asyncio.wait_for(operation(conn), self.connect_wait + 4 * self.timeout)
            except (EtcdUnavailable, TimeoutError) as exc:
                last = exc
                if len(self.endpoints) > 1 and self._conn is conn:
                    self._conn, self._current = None, self._current + 1
                    await conn.close()
            except EtcdRefused as exc:
                raise StoreError(f"etcd refused the request: {exc}") from exc
        where = ", ".join(f"{host}:{port}" for host, port in self.endpoints)
        raise StoreError(f"etcd unreachable ({where}): {last or 'timed out'}") from last

    async def _range(self, conn: EtcdConnection, revision: int = 0) -> Any:
        """Every key under the prefix at `revision` (0: now); HistoryGone when etcd has no such revision."""
        return await conn.kv("Range", rpc.RangeRequest(key=self._root, range_end=self._end, revision=revision))

    # -- ConfigStore

    async def snapshot(self) -> Snapshot:
        response = await self._request(self._range)
        objects, _, _ = self._read(response.kvs, strict=True)
        snapshot = Snapshot(int(response.header.revision), objects)
        self._last, self._cluster_id = snapshot, int(response.header.cluster_id)
        self._high = max(self._high, snapshot.revision)
        return snapshot

    async def put(self, kind: str, obj_id: str, value: dict[str, Any], *, expect_revision: int | None) -> StoredObject:
        key = self.key(kind, obj_id)
        named = value.get(id_field(kind))
        if named is not None and str(named) != obj_id:
            raise ValueError(f"the value's {id_field(kind)} {named!r} is not {obj_id!r}")
        data = json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
        request = rpc.PutRequest(key=key, value=data, prev_kv=True)

        async def write(conn: EtcdConnection) -> tuple[int, int]:
            """(the write's revision, the object's create revision)"""
            if expect_revision is None:
                response = await conn.kv("Put", request)
            else:
                txn = await conn.kv("Txn", if_at_revision(key, expect_revision, rpc.RequestOp(request_put=request)))
                if not txn.succeeded:
                    raise StoreConflict(f"{kind}/{obj_id} is at revision {found_revision(txn)}, not {expect_revision}")
                response = txn.responses[0].response_put
            revision = int(response.header.revision)
            return revision, int(response.prev_kv.create_revision) if response.HasField("prev_kv") else revision

        revision, created = await self._request(write)
        self.revision, self._high = revision, max(self._high, revision)
        self._write = _Write(revision, key, created, data)
        return StoredObject(kind, obj_id, dict(value), revision, created)

    async def delete(self, kind: str, obj_id: str, *, expect_revision: int | None) -> None:
        key = self.key(kind, obj_id)
        request = rpc.DeleteRangeRequest(key=key)

        async def remove(conn: EtcdConnection) -> int | None:
            """The delete's revision; None when there was nothing to delete."""
            if expect_revision is None:
                response = await conn.kv("DeleteRange", request)
            else:
                txn = await conn.kv(
                    "Txn", if_at_revision(key, expect_revision, rpc.RequestOp(request_delete_range=request))
                )
                if not txn.succeeded:
                    current = found_revision(txn)
                    if not current:
                        return None
                    raise StoreConflict(f"{kind}/{obj_id} is at revision {current}, not {expect_revision}")
                response = txn.responses[0].response_delete_range
            return int(response.header.revision) if response.deleted else None

        revision = await self._request(remove)
        if revision is None:
            raise KeyError(f"{kind}/{obj_id}")
        self.revision, self._high = revision, max(self._high, revision)

    async def watch(self, after_revision: int) -> AsyncIterator[Snapshot]:
        view = _View(after_revision, self._cluster_id)
        last = self._last
        if last is not None and after_revision > 0 and last.revision == after_revision:
            # The caller serves this snapshot: the first connection can already check etcd's history against it.
            marks = {
                self.key(o.kind, o.id): (o.revision, o.created_revision)
                for b in last.objects.values()
                for o in b.values()
            }
            view.load(last.revision, {kind: dict(by_id) for kind, by_id in last.objects.items()}, marks, set())
        delay, outage, endpoint = self.reconnect_delay, False, self._current
        while not self._closed:
            conn = self._connect(endpoint)
            self._watch_conns.add(conn)
            try:
                base = await self._catch_up(conn, view)
                if base is not None:
                    yield base
                stream = await conn.watch(self._root, self._end, view.revision + 1)
                if outage:
                    log.warning("etcd watch resumed from revision %d", view.revision)
                outage, delay, self.error = False, self.reconnect_delay, None
                async with contextlib.aclosing(self._events(stream, view)) as responses:
                    async for events in responses:
                        if not any([self._apply(view, event) for event in events]):
                            continue
                        view.revision = max(view.revision, *(int(event.kv.mod_revision) for event in events))
                        if view.corrupt:
                            keys = sorted(k.decode(errors="replace") for k in view.corrupt)
                            log.error("etcd keys hold invalid values; keeping the last good config: %s", keys)
                            continue
                        yield view.snapshot()
            except _HistoryChanged as exc:
                view.resync = str(exc)  # the next turn, at once, starts over from etcd's current state
            except HistoryGone as exc:
                view.resync = f"revision {view.revision} is no longer in etcd's history: {exc}"
            except Exception as exc:  # an outage, whatever shape the error takes: the watch must outlive it
                if self._closed:
                    break
                if not outage:
                    outage, self.error = True, f"etcd unreachable: {exc or type(exc).__name__}"
                    log.warning("etcd unreachable (%s); keeping the last config and retrying", exc or type(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_reconnect_delay)
                endpoint += 1
            finally:
                self._watch_conns.discard(conn)
                await conn.close()

    async def _catch_up(self, conn: EtcdConnection, view: _View) -> Snapshot | None:
        """Make sure etcd still holds the history `view` came from, or start over from etcd's current state:
        returns the snapshot to yield before watching from view.revision + 1, or None."""
        header = (await conn.kv("Range", rpc.RangeRequest(key=self._root, count_only=True))).header
        if view.resync is None and view.revision > 0:
            try:
                view.check(header)
                if header.revision < self._high:
                    raise _HistoryChanged(
                        f"etcd is at revision {header.revision}, behind revision {self._high} seen here"
                    )
                past = await self._range(conn, view.revision)
                objects, marks, corrupt = self._read(past.kvs, strict=False)
                if view.objects is not None and marks != view.marks:
                    # Same cluster id, revision not behind: a new history that got past the revision held here.
                    raise _HistoryChanged(f"etcd's keys at revision {view.revision} are not the ones seen here")
                await self._check_write(conn, view.revision)
                if view.objects is None:
                    view.load(view.revision, objects, marks, corrupt)
                view.cluster_id = int(header.cluster_id)
                return None
            except _HistoryChanged as exc:
                view.resync = str(exc)
            except HistoryGone as exc:
                view.resync = f"revision {view.revision} is no longer in etcd's history: {exc}"
        now = await self._range(conn)
        objects, marks, corrupt = self._read(now.kvs, strict=False)
        resync, view.resync = view.resync, None
        view.load(int(now.header.revision), objects, marks, corrupt)
        view.cluster_id = int(now.header.cluster_id)
        if resync is not None:
            self._high, self._write = view.revision, None  # what was seen here belongs to the history gone
            view.unsent = resync
            log.warning(
                "etcd history restarted or lost (%s): taking its revision %d as the whole config", resync, view.revision
            )
        if corrupt:
            keys = sorted(k.decode(errors="replace") for k in corrupt)
            log.error("etcd keys hold invalid values; keeping the last good config: %s", keys)
            return None
        return view.snapshot()

    async def _check_write(self, conn: EtcdConnection, after: int) -> None:
        """_HistoryChanged unless etcd still holds this store's last put (when it came after revision `after`)."""
        write = self._write
        if write is None or write.revision <= after:
            return
        response = await conn.kv("Range", rpc.RangeRequest(key=write.key, revision=write.revision))
        found = [(kv.mod_revision, kv.create_revision, kv.value) for kv in response.kvs]
        if found != [(write.revision, write.created, write.value)]:
            raise _HistoryChanged(f"etcd's history no longer holds the write of revision {write.revision} made here")

    async def _events(self, stream: WatchStream, view: _View) -> AsyncIterator[list[Any]]:
        """The events of each watch response (one revision's events are never split), after checking where
        the response comes from; a quiet stream is asked for progress, and a silent one is an outage."""
        read: asyncio.Future[Any] | None = None
        probing = False
        try:
            while True:
                if read is None:
                    read = asyncio.ensure_future(stream.read())
                done, _ = await asyncio.wait({read}, timeout=self.timeout if probing else self.progress_interval)
                if not done:
                    if probing:
                        raise EtcdUnavailable(f"{stream.address}: the watch stream went silent")
                    await stream.request_progress()
                    probing = True
                    continue
                response, read, probing = read.result(), None, False
                view.check(response.header)
                if response.events:
                    yield list(response.events)
        finally:
            if read is not None:
                read.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await read
            stream.cancel()

    def _apply(self, view: _View, event: Any) -> bool:
        key: bytes = event.kv.key
        where = self._split(key)
        if where is None or view.objects is None:
            return False
        kind, obj_id = where
        view.corrupt.discard(key)
        if event.type == rpc.Event.EventType.DELETE:
            view.objects[kind].pop(obj_id, None)
            view.marks.pop(key, None)
            return True
        view.marks[key] = (event.kv.mod_revision, event.kv.create_revision)
        try:
            value = self._decode(key, event.kv.value)
        except StoreError:
            view.corrupt.add(key)
            view.objects[kind].pop(obj_id, None)
            return True
        kv = event.kv
        view.objects[kind][obj_id] = StoredObject(kind, obj_id, value, kv.mod_revision, kv.create_revision)
        return True

    async def close(self) -> None:
        self._closed = True
        for conn in list(self._watch_conns):
            await conn.close()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()
