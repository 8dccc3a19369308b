"""The embedded stores: atomic writes, revisions, If-Match, the watched standalone file."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import yaml

from gateway.store.base import StoreConflict, StoreError, StoreReadOnly
from gateway.store.file import FileStore, StandaloneFileStore, read_document, write_atomically


async def test_a_put_writes_the_whole_file_with_revisions(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "data.yaml")
    assert (await store.snapshot()).revision == 0  # a missing file is an empty store
    first = await store.put("upstreams", "u", {"id": "u", "nodes": {"h:1": 1}}, expect_revision=0)
    second = await store.put("routes", "r", {"id": "r", "uri": "/"}, expect_revision=None)
    again = await store.put("upstreams", "u", {"id": "u", "nodes": {"h:2": 1}}, expect_revision=first.revision)
    assert (first.revision, second.revision, again.revision, again.created_revision) == (1, 2, 3, 1)
    saved = yaml.safe_load((tmp_path / "data.yaml").read_text())
    assert saved["upstreams"] == [{"id": "u", "nodes": {"h:2": 1}}]
    assert saved["_revisions"] == {"revision": 3, "objects": {"routes": {"r": [2, 2]}, "upstreams": {"u": [1, 3]}}}
    reread = await FileStore(tmp_path / "data.yaml").snapshot()
    assert reread.revision == 3 and reread.objects["upstreams"]["u"].revision == 3
    assert reread.document()["routes"] == [{"id": "r", "uri": "/"}]


async def test_stale_expectations_conflict_and_change_nothing(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "data.yaml")
    await store.put("routes", "r", {"id": "r", "uri": "/"}, expect_revision=None)
    before = (tmp_path / "data.yaml").read_bytes()
    with pytest.raises(StoreConflict):
        await store.put("routes", "r", {"id": "r", "uri": "/x"}, expect_revision=7)
    with pytest.raises(StoreConflict):
        await store.put("routes", "r", {"id": "r", "uri": "/x"}, expect_revision=0)  # 0: must not exist
    with pytest.raises(StoreConflict):
        await store.delete("routes", "r", expect_revision=9)
    with pytest.raises(KeyError):
        await store.delete("routes", "nope", expect_revision=None)
    assert (tmp_path / "data.yaml").read_bytes() == before


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "data.yaml"
    write_atomically(path, "old: 1\n")
    assert path.stat().st_mode & 0o777 == 0o600

    def crash(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        write_atomically(path, "new: 2\n" * 1000)
    assert path.read_text() == "old: 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["data.yaml"]


async def test_a_broken_data_file_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "data.yaml").write_text("routes: [ {id: r, uri: /\n")
    with pytest.raises(StoreError, match="not valid YAML"):
        await FileStore(tmp_path / "data.yaml").snapshot()
    (tmp_path / "data.yaml").write_text("routes:\n- uri: /\n")
    with pytest.raises(StoreError, match=r"routes\[0\] needs id"):
        await FileStore(tmp_path / "data.yaml").snapshot()


async def test_standalone_is_read_only_and_watched(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"routes": [{"id": "a", "uri": "/a"}], "consumers": [{"username": "bob"}]}))
    store = StandaloneFileStore(path, poll_interval=0.05)
    first = await store.snapshot()
    assert first.revision == 1 and set(first.objects["consumers"]) == {"bob"}
    with pytest.raises(StoreReadOnly, match="standalone"):
        await store.put("routes", "b", {"id": "b", "uri": "/b"}, expect_revision=None)
    watch = store.watch(first.revision)
    path.write_text("routes: [ {id: a, uri: /a}, {id: b")  # torn: skipped, the error is kept
    path.write_text(yaml.safe_dump({"routes": [{"id": "a", "uri": "/a"}, {"id": "b", "uri": "/b"}]}))
    second = await asyncio.wait_for(anext(watch), 5)
    assert second.revision == 2 and set(second.objects["routes"]) == {"a", "b"}
    assert second.objects["routes"]["a"].revision == 1  # unchanged objects keep their revision
    assert second.objects["routes"]["b"].revision == 2
    path.write_text("routes: [ {id: a, uri: /a}, {id: b")
    got = asyncio.ensure_future(anext(watch))
    await asyncio.sleep(0.5)
    assert not got.done() and store.error is not None and "not valid YAML" in store.error
    await store.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(got, 5)


async def test_a_data_file_restored_to_an_older_revision_is_delivered_whole(tmp_path: Path) -> None:
    path = tmp_path / "data.yaml"
    store = FileStore(path, poll_interval=0.05)
    await store.put("routes", "r1", {"id": "r1", "uri": "/1"}, expect_revision=None)
    backup = path.read_text()
    await store.put("routes", "r2", {"id": "r2", "uri": "/2"}, expect_revision=None)
    watch = store.watch(store.revision)
    write_atomically(path, backup)  # the operator restores yesterday's file
    restored = await asyncio.wait_for(anext(watch), 5)
    assert restored.revision == 1 and set(restored.objects["routes"]) == {"r1"}
    assert restored.resync is not None and "went back from revision 2 to 1" in restored.resync
    await store.close()


async def test_a_change_from_outside_found_by_a_write_is_delivered_whole(tmp_path: Path) -> None:
    path = tmp_path / "data.yaml"
    store = FileStore(path, poll_interval=0.5)
    await store.put("routes", "r1", {"id": "r1", "uri": "/1"}, expect_revision=None)
    watch = store.watch(store.revision)
    pending = asyncio.ensure_future(anext(watch))
    await asyncio.sleep(0)  # the watch waits for its first poll
    await FileStore(path).put("routes", "other", {"id": "other", "uri": "/o"}, expect_revision=None)  # elsewhere
    written = await store.put("routes", "r2", {"id": "r2", "uri": "/2"}, expect_revision=None)  # before that poll
    snapshot = await asyncio.wait_for(pending, 5)
    assert snapshot.revision == written.revision and set(snapshot.objects["routes"]) == {"r1", "other", "r2"}
    assert snapshot.resync is not None and "changed outside this gateway" in snapshot.resync
    await store.close()


def test_a_file_is_read_as_the_config_loader_reads_it(tmp_path: Path) -> None:
    # A key given twice is refused (a second `plugins:` would silently drop the first), and a broken file's
    # error is one line that quotes nothing of it (the file may hold private keys).
    path = tmp_path / "gateway.yaml"
    path.write_text("routes:\n  - id: r\n    plugins: {key-auth: {}}\n    plugins: {}\n")
    with pytest.raises(StoreError, match=r"duplicate key 'plugins' \(first given at line 3\)"):
        read_document(path)
    path.write_text("ssls:\n  - key: MIIEvQIBADANBgkqhkiG9w0B\n    cert: [unclosed\n")
    with pytest.raises(StoreError) as caught:
        read_document(path)
    assert "\n" not in str(caught.value) and "MIIEvQ" not in str(caught.value)
    assert "line 4" in str(caught.value)
