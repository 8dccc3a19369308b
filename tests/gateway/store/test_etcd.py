"""EtcdStore against a real etcd: reads, conditional writes, the watch across outages, compaction and restores."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aetcd
import aetcd.rpc as rpc
import grpc
import pytest
from servers.etcd_server import EtcdProxy, EtcdServer, replace_history
from servers.local_servers import free_port

from gateway.store.base import Snapshot, StoreConflict, StoreError
from gateway.store.etcd import EtcdStore, parse_endpoint

ROUTE = {"id": "r1", "uri": "/hello", "upstream_id": "u1"}


def store_for(etcd: EtcdServer, **kwargs: object) -> EtcdStore:
    return EtcdStore([f"http://{etcd.endpoint}"], "/protogate", **kwargs)  # type: ignore[arg-type]


async def next_snapshot(watch: AsyncIterator[Snapshot], timeout: float = 2.0) -> Snapshot:
    return await asyncio.wait_for(anext(watch), timeout)


async def snapshot_where(watch: AsyncIterator[Snapshot], check: object, timeout: float = 5.0) -> Snapshot:
    """The first snapshot the watch yields for which check(snapshot) holds."""
    deadline = time.monotonic() + timeout
    while True:
        snapshot = await next_snapshot(watch, max(deadline - time.monotonic(), 0.01))
        if check(snapshot):  # type: ignore[operator]
            return snapshot


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("http://127.0.0.1:2379", ("127.0.0.1", 2379)),
        ("127.0.0.1:12379", ("127.0.0.1", 12379)),
        ("etcd.internal", ("etcd.internal", 2379)),
        ("http://[::1]:2380/", ("::1", 2380)),
    ],
)
def test_endpoints_parse(endpoint: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(endpoint) == expected


@pytest.mark.parametrize("endpoint", ["https://127.0.0.1:2379", "127.0.0.1:port", "", "host:70000"])
def test_bad_endpoints_are_refused(endpoint: str) -> None:
    with pytest.raises(ValueError):
        parse_endpoint(endpoint)


def test_keys_are_checked() -> None:
    store = EtcdStore(["127.0.0.1:2379"], "/protogate/")
    assert store.key("routes", "r1") == b"/protogate/routes/r1"
    for kind, obj_id in [("widgets", "w"), ("routes", "a/b"), ("routes", "")]:
        with pytest.raises(ValueError):
            store.key(kind, obj_id)


async def test_put_then_snapshot_has_the_object_at_its_mod_revision(etcd: EtcdServer) -> None:
    store = store_for(etcd)
    try:
        stored = await store.put("routes", "r1", ROUTE, expect_revision=None)
        await store.put("upstreams", "u1", {"id": "u1", "nodes": {"127.0.0.1:80": 1}}, expect_revision=None)
        snapshot = await store.snapshot()
        assert snapshot.objects["routes"]["r1"].value == ROUTE
        assert snapshot.objects["routes"]["r1"].revision == stored.revision
        assert snapshot.revision == stored.revision + 1
        assert snapshot.document() == {"routes": [ROUTE], "upstreams": [{"id": "u1", "nodes": {"127.0.0.1:80": 1}}]}
        # Another node sees the same thing.
        other = store_for(etcd)
        assert (await other.snapshot()).objects == snapshot.objects
        await other.close()
    finally:
        await store.close()


async def test_stale_writes_conflict(etcd: EtcdServer) -> None:
    store = store_for(etcd)
    try:
        created = await store.put("routes", "r1", ROUTE, expect_revision=0)  # 0: only if it does not exist
        with pytest.raises(StoreConflict):
            await store.put("routes", "r1", ROUTE, expect_revision=0)
        updated = await store.put("routes", "r1", {**ROUTE, "uri": "/v2"}, expect_revision=created.revision)
        assert updated.revision > created.revision
        with pytest.raises(StoreConflict):
            await store.put("routes", "r1", ROUTE, expect_revision=created.revision)
        with pytest.raises(StoreConflict):
            await store.delete("routes", "r1", expect_revision=created.revision)
        assert (await store.snapshot()).objects["routes"]["r1"].value["uri"] == "/v2"
        await store.delete("routes", "r1", expect_revision=updated.revision)
        assert (await store.snapshot()).objects["routes"] == {}
    finally:
        await store.close()


async def test_deleting_what_is_not_there_is_a_key_error(etcd: EtcdServer) -> None:
    store = store_for(etcd)
    try:
        with pytest.raises(KeyError):
            await store.delete("routes", "nope", expect_revision=None)
        with pytest.raises(KeyError):
            await store.delete("routes", "nope", expect_revision=7)
        with pytest.raises(KeyError):
            await store.delete("routes", "nope", expect_revision=0)
        stored = await store.put("routes", "r1", ROUTE, expect_revision=None)
        await store.delete("routes", "r1", expect_revision=None)
        with pytest.raises(KeyError):
            await store.delete("routes", "r1", expect_revision=stored.revision)
    finally:
        await store.close()


async def test_a_value_whose_id_disagrees_is_refused(etcd: EtcdServer) -> None:
    store = store_for(etcd)
    try:
        with pytest.raises(ValueError):
            await store.put("routes", "r2", ROUTE, expect_revision=None)
    finally:
        await store.close()


async def test_watch_yields_each_change_made_elsewhere(etcd: EtcdServer) -> None:
    store, writer = store_for(etcd), store_for(etcd)
    try:
        start = await store.snapshot()
        watch = store.watch(start.revision)
        pending = asyncio.ensure_future(next_snapshot(watch))
        await asyncio.sleep(0.2)  # the watch is established
        put = await writer.put("routes", "r1", ROUTE, expect_revision=None)
        snapshot = await pending
        assert snapshot.revision == put.revision
        assert snapshot.objects["routes"]["r1"].revision == put.revision
        await writer.delete("routes", "r1", expect_revision=None)
        snapshot = await next_snapshot(watch)
        assert snapshot.objects["routes"] == {}
        assert snapshot.revision == put.revision + 1
        await watch.aclose()  # type: ignore[attr-defined]
    finally:
        await writer.close()
        await store.close()


async def test_watch_from_an_old_revision_replays_what_came_after(etcd: EtcdServer) -> None:
    store = store_for(etcd)
    try:
        start = await store.snapshot()
        await store.put("routes", "r1", ROUTE, expect_revision=None)
        await store.put("upstreams", "u1", {"id": "u1"}, expect_revision=None)
        watch = store.watch(start.revision)
        latest = await snapshot_where(watch, lambda s: "u1" in s.objects["upstreams"])
        assert latest.objects["routes"]["r1"].value == ROUTE
        assert latest == await store.snapshot()
        await watch.aclose()  # type: ignore[attr-defined]
    finally:
        await store.close()


async def test_watch_from_zero_starts_with_everything(etcd: EtcdServer) -> None:
    store = store_for(etcd)
    try:
        await store.put("routes", "r1", ROUTE, expect_revision=None)
        watch = store.watch(0)
        assert await next_snapshot(watch) == await store.snapshot()
        await watch.aclose()  # type: ignore[attr-defined]
    finally:
        await store.close()


async def test_a_transaction_arrives_as_one_snapshot(etcd: EtcdServer) -> None:
    store = store_for(etcd)
    client = aetcd.Client("127.0.0.1", etcd.port)
    try:
        start = await store.snapshot()
        watch = store.watch(start.revision)
        pending = asyncio.ensure_future(next_snapshot(watch))
        await asyncio.sleep(0.2)
        await client.transaction(
            compare=[],
            success=[
                client.transactions.put(b"/protogate/routes/r1", b'{"id": "r1"}'),
                client.transactions.put(b"/protogate/upstreams/u1", b'{"id": "u1"}'),
            ],
            failure=[],
        )
        snapshot = await pending
        assert set(snapshot.objects["routes"]) == {"r1"}
        assert set(snapshot.objects["upstreams"]) == {"u1"}
        await watch.aclose()  # type: ignore[attr-defined]
    finally:
        await client.close()
        await store.close()


async def test_keys_that_are_not_resources_are_ignored(etcd: EtcdServer) -> None:
    store = store_for(etcd)
    client = aetcd.Client("127.0.0.1", etcd.port)
    try:
        await client.put(b"/protogate/widgets/w1", b"{}")
        await client.put(b"/protogate2/routes/r1", b"{}")
        await client.put(b"/protogate/routes/a/b", b"{}")
        snapshot = await store.snapshot()
        assert all(not by_id for by_id in snapshot.objects.values())
    finally:
        await client.close()
        await store.close()


async def test_a_corrupt_value_is_never_applied(etcd: EtcdServer, caplog: pytest.LogCaptureFixture) -> None:
    store = store_for(etcd)
    client = aetcd.Client("127.0.0.1", etcd.port)
    try:
        start = await store.snapshot()
        watch = store.watch(start.revision)
        pending = asyncio.ensure_future(next_snapshot(watch))
        await asyncio.sleep(0.2)
        await client.put(b"/protogate/routes/r1", b'{"id": "r1", "uri": ')  # half-written
        with pytest.raises(StoreError, match="routes/r1"):
            await store.snapshot()
        await asyncio.sleep(0.3)
        assert not pending.done()  # nothing yielded while the value is bad
        assert "invalid values" in caplog.text
        await store.put("routes", "r1", ROUTE, expect_revision=None)
        assert (await pending).objects["routes"]["r1"].value == ROUTE
        await watch.aclose()  # type: ignore[attr-defined]
    finally:
        await client.close()
        await store.close()


async def test_unreachable_etcd_fails_within_the_connect_wait(etcd: EtcdServer) -> None:
    etcd.stop()
    store = store_for(etcd, timeout=1.0)
    try:
        assert store.connect_wait == 2.0  # the documented default: how long a request waits for a connection
        for request in (
            store.snapshot(),
            store.put("routes", "r1", ROUTE, expect_revision=None),
            store.delete("routes", "r1", expect_revision=None),
        ):
            started = time.monotonic()
            with pytest.raises(StoreError, match=r"unreachable .*no connection within 2s"):
                await request
            assert 1.9 < time.monotonic() - started < 2.5
    finally:
        await store.close()


async def test_requests_move_to_the_next_endpoint(etcd: EtcdServer) -> None:
    store = EtcdStore([f"127.0.0.1:{free_port()}", etcd.endpoint], timeout=1.0)
    try:
        await store.put("routes", "r1", ROUTE, expect_revision=None)
        assert "r1" in (await store.snapshot()).objects["routes"]
    finally:
        await store.close()


async def test_watch_outlives_an_etcd_restart(etcd: EtcdServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "protogate.store.etcd")
    store = store_for(etcd, timeout=1.0, max_reconnect_delay=0.2)
    writer = store_for(etcd, timeout=1.0)
    try:
        first = await writer.put("routes", "r1", ROUTE, expect_revision=None)
        watch = store.watch(first.revision)
        pending = asyncio.ensure_future(next_snapshot(watch, timeout=10))
        await asyncio.sleep(0.2)
        etcd.stop()
        await asyncio.sleep(1.0)  # several reconnect attempts
        with pytest.raises(StoreError):
            await store.snapshot()
        assert store.error is not None and "unreachable" in store.error  # the Admin API's status shows it
        etcd.start()
        second = await writer.put("upstreams", "u1", {"id": "u1"}, expect_revision=None)
        snapshot = await pending
        assert store.error is None
        # Resumed from the revision it had: the next snapshot is the change, with everything before it.
        assert snapshot.revision == second.revision
        assert set(snapshot.objects["routes"]) == {"r1"} and set(snapshot.objects["upstreams"]) == {"u1"}
        outage_lines = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(outage_lines) == 1, [r.getMessage() for r in caplog.records]
        assert any("resumed" in r.getMessage() for r in caplog.records)
        await watch.aclose()  # type: ignore[attr-defined]
    finally:
        await writer.close()
        await store.close()


async def test_watch_resynchronises_past_a_compaction(etcd: EtcdServer) -> None:
    store = store_for(etcd)
    client = aetcd.Client("127.0.0.1", etcd.port)
    try:
        start = await store.snapshot()
        await store.put("routes", "r1", ROUTE, expect_revision=None)
        await store.put("routes", "r1", {**ROUTE, "uri": "/v2"}, expect_revision=None)
        last = await store.put("upstreams", "u1", {"id": "u1"}, expect_revision=None)
        await client.compact(last.revision, physical=True)
        watch = store.watch(start.revision)  # its history is gone: a full snapshot instead
        snapshot = await next_snapshot(watch)
        assert snapshot == await store.snapshot()
        assert snapshot.objects["routes"]["r1"].value["uri"] == "/v2"
        await watch.aclose()  # type: ignore[attr-defined]
    finally:
        await client.close()
        await store.close()


async def test_watch_resynchronises_when_etcd_comes_back_without_its_history(etcd: EtcdServer) -> None:
    store = store_for(etcd, timeout=1.0, max_reconnect_delay=0.2)
    try:
        for n in range(5):
            await store.put("routes", f"r{n}", {"id": f"r{n}"}, expect_revision=None)
        watch = store.watch((await store.snapshot()).revision)
        pending = asyncio.ensure_future(next_snapshot(watch, timeout=10))
        await asyncio.sleep(0.2)
        etcd.stop()
        shutil.rmtree(etcd.data_dir)  # a wiped (or older, restored) etcd: revisions start again at 1
        etcd.start()
        fresh = await pending
        assert all(not by_id for by_id in fresh.objects.values())
        assert fresh.resync is not None and "behind revision" in fresh.resync  # applied even though lower
        await store.put("routes", "again", {"id": "again"}, expect_revision=None)
        assert set((await next_snapshot(watch)).objects["routes"]) == {"again"}
        await watch.aclose()  # type: ignore[attr-defined]
    finally:
        await store.close()


async def test_close_ends_a_watch(etcd: EtcdServer) -> None:
    store = store_for(etcd)
    watch = store.watch((await store.snapshot()).revision)
    pending = asyncio.ensure_future(anext(watch))
    await asyncio.sleep(0.2)
    await store.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, 2)
    with pytest.raises(StoreError):
        await store.snapshot()


async def test_objects_keep_their_created_revision(etcd: EtcdServer) -> None:
    store = store_for(etcd)
    try:
        created = await store.put("routes", "r1", ROUTE, expect_revision=0)
        assert created.created_revision == created.revision
        updated = await store.put("routes", "r1", {**ROUTE, "uri": "/v2"}, expect_revision=None)
        again = await store.put("routes", "r1", ROUTE, expect_revision=updated.revision)
        assert updated.created_revision == again.created_revision == created.revision
        assert (await store.snapshot()).objects["routes"]["r1"].created_revision == created.revision
        assert store.revision == again.revision
        await store.delete("routes", "r1", expect_revision=None)
        assert store.revision == again.revision + 1
    finally:
        await store.close()


async def test_consumers_are_named_by_username(etcd: EtcdServer) -> None:
    store = store_for(etcd)
    try:
        await store.put("consumers", "jack", {"username": "jack"}, expect_revision=None)
        with pytest.raises(ValueError, match="username"):
            await store.put("consumers", "jack", {"username": "jill"}, expect_revision=None)
        assert (await store.snapshot()).document() == {"consumers": [{"username": "jack"}]}
    finally:
        await store.close()


async def test_a_write_just_after_etcd_returns_goes_through(etcd: EtcdServer) -> None:
    store = store_for(etcd, timeout=1.0)
    try:
        await store.put("routes", "r1", ROUTE, expect_revision=None)
        etcd.stop()
        with pytest.raises(StoreError, match="unreachable"):
            await store.put("routes", "r1", ROUTE, expect_revision=None)
        await asyncio.sleep(1.0)  # its channel stays in TRANSIENT_FAILURE, between reconnect attempts
        etcd.start()
        stored = await store.put("routes", "r1", {**ROUTE, "uri": "/v2"}, expect_revision=None)  # no retry needed
        assert (await store.snapshot()).objects["routes"]["r1"] == stored
    finally:
        await store.close()


async def test_a_write_during_a_short_outage_waits_for_etcd(etcd: EtcdServer) -> None:
    store = store_for(etcd, timeout=1.0)
    try:
        await store.put("routes", "r1", ROUTE, expect_revision=None)
        etcd.stop()
        started = time.monotonic()
        write = asyncio.ensure_future(store.put("routes", "r1", {**ROUTE, "uri": "/v2"}, expect_revision=None))
        await asyncio.sleep(0.3)
        assert not write.done()  # waiting for a connection, not failed
        await asyncio.to_thread(etcd.start)
        stored = await write
        assert time.monotonic() - started < store.connect_wait
        assert (await store.snapshot()).objects["routes"]["r1"] == stored
    finally:
        await store.close()


async def test_watch_resynchronises_when_a_new_history_passed_the_revision_held(
    etcd: EtcdServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = store_for(etcd, timeout=1.0, max_reconnect_delay=0.2)
    try:
        await store.put("routes", "old", {"id": "old"}, expect_revision=None)
        start = await store.snapshot()
        watch = store.watch(start.revision)
        pending = asyncio.ensure_future(next_snapshot(watch, timeout=15))
        await asyncio.sleep(0.2)
        # Same cluster and member ids, and a revision past the one held: only the keys tell the histories apart.
        keys = {b"/protogate/routes/new": b'{"id": "new"}'}
        await replace_history(etcd, tmp_path / "new", keys, filler=start.revision + 5)
        snapshot = await pending
        assert snapshot.revision > start.revision
        assert set(snapshot.objects["routes"]) == {"new"}
        assert snapshot.resync is not None and "not the ones seen here" in snapshot.resync
        assert "etcd history restarted or lost" in caplog.text
        await store.put("routes", "later", {"id": "later"}, expect_revision=None)
        assert set((await next_snapshot(watch)).objects["routes"]) == {"new", "later"}
        await watch.aclose()  # type: ignore[attr-defined]
    finally:
        await store.close()


async def test_a_watch_checks_etcd_against_the_snapshot_it_starts_from(etcd: EtcdServer, tmp_path: Path) -> None:
    store = store_for(etcd, timeout=1.0)
    try:
        await store.put("routes", "old", {"id": "old"}, expect_revision=None)
        start = await store.snapshot()  # what the gateway loaded; then etcd is replaced before the watch starts
        keys = {b"/protogate/routes/new": b'{"id": "new"}'}
        await replace_history(etcd, tmp_path / "new", keys, filler=start.revision + 5, cluster_token="another")
        watch = store.watch(start.revision)
        snapshot = await next_snapshot(watch, timeout=10)
        assert set(snapshot.objects["routes"]) == {"new"}
        assert snapshot.resync is not None and "cluster id changed" in snapshot.resync
        await watch.aclose()  # type: ignore[attr-defined]
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("filler", "reason"), [(0, "behind revision 6 seen here"), (10, "no longer holds the write of revision 6")]
)
async def test_a_watch_that_lags_this_stores_writes_still_sees_a_new_history(
    etcd: EtcdServer, tmp_path: Path, filler: int, reason: str
) -> None:
    """A node serves its own Admin writes before its watch sees them: a new history must be caught even
    when the watch's own revision is one both histories agree on (here: both empty at revision 1)."""
    store = store_for(etcd, timeout=5.0)  # generous: a loaded machine; nothing here is timed
    try:
        start = await store.snapshot()
        assert start.revision == 1
        watch = store.watch(start.revision)  # not running yet: it lags the writes
        for n in range(5):
            await store.put("routes", "old", {"id": "old", "n": n}, expect_revision=None)
        await replace_history(etcd, tmp_path / "new", {b"/protogate/routes/new": b'{"id": "new"}'}, filler=filler)
        snapshot = await next_snapshot(watch, timeout=10)
        assert set(snapshot.objects["routes"]) == {"new"}
        assert snapshot.resync is not None and reason in snapshot.resync, snapshot.resync
        await watch.aclose()  # type: ignore[attr-defined]
    finally:
        await store.close()


@pytest.mark.parametrize("how", ["end", "cancel", "silence"])
async def test_a_broken_watch_stream_is_replaced(etcd: EtcdServer, how: str) -> None:
    """A stream that ends with an OK status, a watch cancelled by the server, a stream that stays open and
    says nothing: none may leave the node waiting for changes that never come."""
    proxy = EtcdProxy(etcd.endpoint)
    await proxy.start()
    store = EtcdStore([proxy.endpoint], timeout=1.0, max_reconnect_delay=0.2, progress_interval=0.3)
    writer = store_for(etcd)
    try:
        start = await store.snapshot()
        watch = store.watch(start.revision)
        pending = asyncio.ensure_future(next_snapshot(watch, timeout=10))
        await until(lambda: proxy.watches == 1)
        await asyncio.sleep(0.5)  # progress requests on a healthy stream are answered: nothing happens
        assert proxy.watches == 1 and not pending.done()
        assert proxy.break_watches(how) == 1
        put = await writer.put("routes", "r1", ROUTE, expect_revision=None)
        snapshot = await pending
        assert snapshot.objects["routes"]["r1"].revision == put.revision
        assert proxy.watches >= 2  # a new stream brought the change
        await watch.aclose()  # type: ignore[attr-defined]
    finally:
        await writer.close()
        await store.close()
        await proxy.stop()


async def enable_auth(etcd: EtcdServer, password: str) -> None:
    async with grpc.aio.insecure_channel(etcd.endpoint) as channel:
        auth = rpc.AuthStub(channel)
        await auth.UserAdd(rpc.AuthUserAddRequest(name="root", password=password))
        await auth.RoleAdd(rpc.AuthRoleAddRequest(name="root"))
        await auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root"))
        await auth.AuthEnable(rpc.AuthEnableRequest())


async def test_a_token_etcd_forgot_is_renewed(etcd: EtcdServer) -> None:
    await enable_auth(etcd, "secret")
    store = store_for(etcd, timeout=5.0, max_reconnect_delay=0.2, username="root", password="secret")
    try:
        intruder = store_for(etcd, username="root", password="wrong")
        with pytest.raises(StoreError, match="refused"):
            await intruder.snapshot()
        await intruder.close()
        first = await store.put("routes", "r1", ROUTE, expect_revision=None)
        watch = store.watch(first.revision)
        pending = asyncio.ensure_future(next_snapshot(watch, timeout=10))
        await asyncio.sleep(0.2)
        etcd.stop()
        etcd.start()  # simple tokens live in etcd's memory: the one the store holds is now unknown
        second = await store.put("routes", "r1", {**ROUTE, "uri": "/v2"}, expect_revision=first.revision)
        assert (await pending).objects["routes"]["r1"] == second
        await watch.aclose()  # type: ignore[attr-defined]
    finally:
        await store.close()
