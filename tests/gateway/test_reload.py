"""ConfigManager: a refused document changes nothing; a replaced runtime closes after its last request; a store
that starts over is followed, and so is one whose watch ends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway import reload
from gateway.config.loader import ConfigError, load_document
from gateway.reload import ConfigManager
from gateway.runtime import Runtime
from gateway.store.base import Snapshot, StoredObject

UPSTREAM = {"id": "u", "nodes": {"127.0.0.1:9": 1}}


def document(*uris: str) -> dict[str, object]:
    return {
        "upstreams": [UPSTREAM],
        "routes": [{"id": f"r{i}", "uri": u, "upstream_id": "u"} for i, u in enumerate(uris)],
    }


async def test_apply_swaps_and_a_refused_document_keeps_the_old(tmp_path: Path) -> None:
    loaded = load_document(document("/a"), base_dir=tmp_path)
    manager = ConfigManager(loaded, Runtime(loaded), settings={})
    first = manager.runtime
    await manager.apply(document("/a", "/b"), revision=2)
    assert manager.runtime is not first and manager.revision == 2
    assert manager.runtime.table.match("", "GET", "/b") is not None
    good = manager.runtime
    with pytest.raises(ConfigError) as refused:
        await manager.apply({"routes": [{"id": "x", "uri": "/x", "upstream_id": "missing"}]}, revision=3)
    assert [i.path for i in refused.value.issues] == ["routes[0].upstream_id"]
    assert manager.runtime is good and manager.revision == 2
    assert manager.last_error is refused.value
    await manager.apply(document("/c"))
    assert manager.last_error is None
    await manager.close()


async def test_a_replaced_runtime_closes_after_its_last_request(tmp_path: Path) -> None:
    loaded = load_document(document("/a"), base_dir=tmp_path)
    manager = ConfigManager(loaded, Runtime(loaded), settings={})
    old = manager.runtime
    closed = asyncio.Event()
    real_close = old.close

    async def close() -> None:
        closed.set()
        await real_close()

    old.close = close  # type: ignore[method-assign]
    with old.in_use():
        await manager.apply(document("/b"))
        await asyncio.sleep(0.05)
        assert not closed.is_set() and manager.draining == 1  # a request still runs on it
    await asyncio.wait_for(closed.wait(), 1)
    await asyncio.sleep(0)
    assert manager.draining == 0
    await manager.close()


async def test_plugin_runners_cannot_change_without_a_restart(tmp_path: Path) -> None:
    loaded = load_document({}, base_dir=tmp_path)
    manager = ConfigManager(loaded, Runtime(loaded), settings={})
    with pytest.raises(ConfigError, match="restart"):
        await manager.apply({"plugin_runners": [{"name": "py", "cmd": ["true"]}]})
    await manager.close()


def snapshot_of(revision: int, *uris: str, resync: str | None = None) -> Snapshot:
    routes = {
        f"r{i}": StoredObject("routes", f"r{i}", {"id": f"r{i}", "uri": u, "upstream_id": "u"}, revision)
        for i, u in enumerate(uris)
    }
    return Snapshot(
        revision, {"upstreams": {"u": StoredObject("upstreams", "u", UPSTREAM, 1)}, "routes": routes}, resync
    )


async def test_a_resync_snapshot_replaces_a_newer_config(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    loaded = load_document(document("/a"), base_dir=tmp_path)
    manager = ConfigManager(loaded, Runtime(loaded), settings={})
    assert await manager.apply_snapshot(snapshot_of(40, "/a", "/b"))
    serving = manager.runtime
    assert await manager.apply_snapshot(snapshot_of(7, "/old"))  # lower, unmarked: seen before, ignored
    assert manager.runtime is serving and manager.revision == 40
    assert await manager.apply_snapshot(snapshot_of(7, "/restored", resync="etcd is at revision 7, behind 40"))
    assert manager.runtime is not serving and manager.revision == 7
    assert manager.runtime.table.match("", "GET", "/restored") is not None
    assert manager.runtime.table.match("", "GET", "/b") is None
    assert (
        "resynchronised (etcd is at revision 7, behind 40): serving its revision 7 in place of revision 40"
        in caplog.text
    )
    assert await manager.apply_snapshot(snapshot_of(8, "/restored", "/next"))  # and it follows on from there
    assert manager.revision == 8
    serving, reloads = manager.runtime, manager.reloads
    assert await manager.apply_snapshot(snapshot_of(8, "/restored", "/next", resync="compacted"))  # nothing new
    assert manager.runtime is serving and manager.reloads == reloads
    await manager.close()


class EndingStore:
    """A store whose every watch yields one snapshot and then ends, as a broken store might."""

    read_only = True

    def __init__(self) -> None:
        self.watches: list[int] = []

    async def snapshot(self) -> Snapshot:
        return snapshot_of(1, "/a")

    async def watch(self, after_revision: int) -> AsyncIterator[Snapshot]:
        self.watches.append(after_revision)
        yield snapshot_of(after_revision + 1, "/a", f"/{after_revision + 1}")

    async def close(self) -> None:
        pass


async def test_a_watch_that_ends_is_followed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(reload, "FOLLOW_RETRY", 0.01)
    loaded = load_document(document("/a"), base_dir=tmp_path)
    manager = ConfigManager(loaded, Runtime(loaded), settings={})
    store = EndingStore()
    await manager.follow(store, await store.snapshot())  # type: ignore[arg-type]
    deadline = time.monotonic() + 5
    while manager.revision < 4:
        assert time.monotonic() < deadline, store.watches
        await asyncio.sleep(0.01)
    assert store.watches[:3] == [1, 2, 3]
    assert manager.runtime.table.match("", "GET", "/4") is not None
    assert "config store watch ended; following the store again from revision 2" in caplog.text
    await manager.close()
