"""The embedded stores: the hand-written config file (standalone: read-only, watched) and a data file the
Admin API owns (written atomically, with a revision per object)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.config.yaml_text import parse_yaml, yaml_problem
from gateway.store.base import (
    RESOURCE_KINDS,
    Snapshot,
    StoreConflict,
    StoredObject,
    StoreError,
    StoreReadOnly,
    id_field,
)

log = logging.getLogger("protogate.store.file")

REVISIONS_KEY = "_revisions"  # the data file's bookkeeping: {"revision": n, "objects": {kind: {id: [created, mod]}}}
SETTLE = 0.2  # seconds a changed file must stay unchanged before it is read (an editor may still be writing)

Objects = dict[str, dict[str, StoredObject]]


@dataclass(frozen=True)
class _Signature:
    mtime_ns: int
    size: int
    inode: int


def _signature(path: Path) -> _Signature | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}") from None
    return _Signature(st.st_mtime_ns, st.st_size, st.st_ino)


def read_document(path: Path) -> tuple[dict[str, Any], str]:
    """The YAML mapping in `path` and the sha256 of its bytes; StoreError when unreadable or not a mapping."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}") from None
    try:
        document = parse_yaml(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise StoreError(f"{path} is not UTF-8 text ({exc.reason})") from None
    except yaml.YAMLError as exc:  # one line, with no quoted excerpt: the file may hold keys
        raise StoreError(f"{path} is not valid YAML: {yaml_problem(exc)}") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise StoreError(f"{path}: the document must be a mapping")
    return document, hashlib.sha256(data).hexdigest()


def resource_values(document: dict[str, Any], where: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """kind -> id -> value of the resource lists in a document. Values without an id are StoreError."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for kind in RESOURCE_KINDS:
        items = document.get(kind) or []
        if not isinstance(items, list):
            raise StoreError(f"{where}: {kind} must be a list")
        by_id: dict[str, dict[str, Any]] = {}
        key = id_field(kind)
        for index, item in enumerate(items):
            if not isinstance(item, dict) or not item.get(key):
                raise StoreError(f"{where}: {kind}[{index}] needs {key}")
            obj_id = str(item[key])
            # A duplicate id is the loader's to report with its path; keep both apart by position here.
            by_id[obj_id if obj_id not in by_id else f"{obj_id}#{index}"] = item
        out[kind] = by_id
    return out


def write_atomically(path: Path, text: str) -> None:
    """Write temp file + fsync + rename + fsync of the directory: a crash leaves the old file or the new one."""
    directory = path.parent
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)  # 0600: it may hold keys
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class _PolledFile:
    """Change detection by polling: (mtime, size, inode), then the content hash, after the file settled."""

    def __init__(self, path: Path, interval: float) -> None:
        self.path = path
        self.interval = interval
        self.signature: _Signature | None = None
        self.digest: str | None = None

    async def changed(self) -> tuple[dict[str, Any], str] | None:
        """The new document when the file changed (and settled) since the last call; None otherwise."""
        signature = await asyncio.to_thread(_signature, self.path)
        if signature == self.signature:
            return None
        await asyncio.sleep(min(SETTLE, self.interval))
        if await asyncio.to_thread(_signature, self.path) != signature:
            return None  # still being written: look again next time
        self.signature = signature
        if signature is None:
            raise StoreError(f"{self.path} is gone")
        document, digest = await asyncio.to_thread(read_document, self.path)
        if digest == self.digest:
            return None  # touched, not changed
        self.digest = digest
        return document, digest


class StandaloneFileStore:
    """The operator's own YAML file: its resource lists are the store; only the operator writes it.

    Revisions are generations of the file as this process read it: each change that parses bumps
    the store's revision, and an object's revision is the generation its value last changed in.
    """

    read_only = True

    def __init__(self, path: Path, *, poll_interval: float = 1.0) -> None:
        self.path = path
        self._file = _PolledFile(path, poll_interval)
        self._revision = 0
        self._objects: Objects = {}
        self._settings: dict[str, Any] | None = None
        self._closed = asyncio.Event()
        self.error: str | None = None  # why the file's last change was not read (the status page shows it)

    def _absorb(self, document: dict[str, Any]) -> Snapshot:
        values = resource_values(document, self.path)
        settings = {k: v for k, v in document.items() if k not in RESOURCE_KINDS}
        if self._settings is None:
            self._settings = settings
        elif settings != self._settings:
            log.warning("%s: settings outside the resources changed; they apply at the next restart", self.path)
        self._revision += 1
        objects: Objects = {}
        for kind, by_id in values.items():
            objects[kind] = {}
            for obj_id, value in by_id.items():
                old = self._objects.get(kind, {}).get(obj_id)
                if old is not None and old.value == value:
                    objects[kind][obj_id] = old
                else:
                    created = old.created_revision if old is not None else self._revision
                    objects[kind][obj_id] = StoredObject(kind, obj_id, value, self._revision, created)
        self._objects = objects
        return Snapshot(self._revision, objects)

    async def snapshot(self) -> Snapshot:
        if self._revision == 0:
            await self._file.changed()  # records signature and digest, so the watch starts from here
            document, _ = await asyncio.to_thread(read_document, self.path)
            return self._absorb(document)
        return Snapshot(self._revision, self._objects)

    async def watch(self, after_revision: int) -> AsyncIterator[Snapshot]:
        if self._revision == 0:
            await self.snapshot()
        if after_revision < self._revision:
            yield Snapshot(self._revision, self._objects)
        failing = False
        while not self._closed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), self._file.interval)
                return
            try:
                changed = await self._file.changed()
                snapshot = self._absorb(changed[0]) if changed is not None else None
            except StoreError as exc:
                # A torn or broken file: keep serving what was last read (THREATS 18), say it once per change.
                self._file.digest = None
                if not failing:
                    log.error("%s; keeping the last good config", exc)
                failing, self.error = True, str(exc)
                continue
            if snapshot is not None:
                failing, self.error = False, None
                yield snapshot

    async def put(self, kind: str, obj_id: str, value: dict[str, Any], *, expect_revision: int | None) -> StoredObject:
        raise StoreReadOnly(_read_only_message(self.path))

    async def delete(self, kind: str, obj_id: str, *, expect_revision: int | None) -> None:
        raise StoreReadOnly(_read_only_message(self.path))

    async def close(self) -> None:
        self._closed.set()


def _read_only_message(path: Path) -> str:
    return (
        f"standalone mode: the config is the file {path}, edit it (it is reloaded on change); "
        "to manage resources through the Admin API, set store: {type: file, path: ...} or {type: etcd, ...}"
    )


class FileStore:
    """A YAML data file that only this store writes: resource lists as in a config document, plus
    `_revisions` (the store's revision and each object's created/modified revisions).

    Every write replaces the whole file atomically, so a crash leaves the old file or the new one.
    A missing file is an empty store; the file is created by the first write.
    """

    read_only = False

    def __init__(self, path: Path, *, poll_interval: float = 1.0) -> None:
        self.path = path
        self._file = _PolledFile(path, poll_interval)
        self.revision = 0
        self._objects: Objects = {}
        self._loaded = False
        self._lock = asyncio.Lock()
        self._closed = asyncio.Event()
        self.error: str | None = None  # why the file's last change was not read (the status page shows it)
        self._unseen = False  # the file changed under us and the watch has not yielded it yet
        self._resync: str | None = None  # why that change must replace the running config whatever its revision

    def _parse(self, document: dict[str, Any]) -> tuple[int, Objects]:
        meta = document.get(REVISIONS_KEY) or {}
        if not isinstance(meta, dict):
            raise StoreError(f"{self.path}: {REVISIONS_KEY} must be a mapping")
        revision = int(meta.get("revision") or 0)
        marks = meta.get("objects") or {}
        objects: Objects = {}
        for kind, by_id in resource_values(document, self.path).items():
            objects[kind] = {}
            for obj_id, value in by_id.items():
                created, modified = (marks.get(kind) or {}).get(obj_id) or (revision, revision)
                objects[kind][obj_id] = StoredObject(kind, obj_id, value, int(modified), int(created))
        return revision, objects

    async def _refresh(self) -> bool:
        """Re-read the file when it changed under us (by hand, or by a restore); True when it did."""
        if not self._loaded and await asyncio.to_thread(_signature, self.path) is None:
            self._loaded = True
            return False
        changed = await self._file.changed()
        loaded, self._loaded = self._loaded, True
        if changed is None:
            return False
        before = self.revision
        self.revision, self._objects = self._parse(changed[0])
        self._unseen = loaded  # the first read is what snapshot() returns: nothing for the watch to deliver
        if loaded and self.revision <= before:
            self._resync = f"{self.path} went back from revision {before} to {self.revision} (restored?)"
        return True

    async def _absorbed(self) -> None:
        """Refresh before a write; a change from outside it finds is then delivered by the watch, whole."""
        if await self._refresh():
            # The writer's document was built on what it served, not on this: the watch must replace it.
            self._resync = self._resync or f"{self.path} changed outside this gateway, just before a write"

    async def snapshot(self) -> Snapshot:
        async with self._lock:
            await self._refresh()
            return Snapshot(self.revision, {kind: dict(by_id) for kind, by_id in self._objects.items()})

    def _deliver(self) -> Snapshot:
        """What the watch yields: everything, with why it must replace the running config if it must."""
        resync, self._unseen, self._resync = self._resync, False, None
        return Snapshot(self.revision, {kind: dict(by_id) for kind, by_id in self._objects.items()}, resync)

    async def watch(self, after_revision: int) -> AsyncIterator[Snapshot]:
        if after_revision < self.revision:
            async with self._lock:
                await self._refresh()
                snapshot = self._deliver()
            yield snapshot
        failing = False
        while not self._closed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), self._file.interval)
                return
            try:
                async with self._lock:
                    await self._refresh()
                    unseen = self._unseen
                    snapshot = self._deliver()
            except StoreError as exc:
                self._file.digest = None
                if not failing:
                    log.error("%s; keeping the last good config", exc)
                failing, self.error = True, str(exc)
                continue
            if unseen:
                failing, self.error = False, None
                yield snapshot

    async def put(self, kind: str, obj_id: str, value: dict[str, Any], *, expect_revision: int | None) -> StoredObject:
        if kind not in RESOURCE_KINDS:
            raise ValueError(f"unknown resource kind {kind!r}")
        async with self._lock:
            await self._absorbed()
            current = self._objects.get(kind, {}).get(obj_id)
            _check_expected(kind, obj_id, current, expect_revision)
            revision = self.revision + 1
            created = current.created_revision if current is not None else revision
            stored = StoredObject(kind, obj_id, dict(value), revision, created)
            objects = {k: dict(v) for k, v in self._objects.items()}
            objects.setdefault(kind, {})[obj_id] = stored
            await self._write(revision, objects)
            return stored

    async def delete(self, kind: str, obj_id: str, *, expect_revision: int | None) -> None:
        async with self._lock:
            await self._absorbed()
            current = self._objects.get(kind, {}).get(obj_id)
            if current is None:
                raise KeyError(f"{kind}/{obj_id}")
            _check_expected(kind, obj_id, current, expect_revision)
            objects = {k: dict(v) for k, v in self._objects.items()}
            del objects[kind][obj_id]
            await self._write(self.revision + 1, objects)

    async def _write(self, revision: int, objects: Objects) -> None:
        document: dict[str, Any] = {}
        marks: dict[str, dict[str, list[int]]] = {}
        for kind in RESOURCE_KINDS:
            by_id = objects.get(kind) or {}
            if by_id:
                document[kind] = [obj.value for obj in by_id.values()]
                marks[kind] = {obj.id: [obj.created_revision, obj.revision] for obj in by_id.values()}
        document[REVISIONS_KEY] = {"revision": revision, "objects": marks}
        text = "# Written by protogate's Admin API: change it through the API.\n" + yaml.safe_dump(
            document, sort_keys=False, allow_unicode=True
        )
        try:
            await asyncio.to_thread(write_atomically, self.path, text)
        except OSError as exc:
            raise StoreError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self.revision, self._objects = revision, objects
        self._file.signature = await asyncio.to_thread(_signature, self.path)
        self._file.digest = hashlib.sha256(text.encode()).hexdigest()

    async def close(self) -> None:
        self._closed.set()


def _check_expected(kind: str, obj_id: str, current: StoredObject | None, expect_revision: int | None) -> None:
    # expect_revision 0 means "must not exist yet", as with etcd's mod_revision of a missing key.
    if expect_revision is None:
        return
    actual = current.revision if current is not None else 0
    if actual != expect_revision:
        raise StoreConflict(f"{kind}/{obj_id} is at revision {actual}, not {expect_revision}")
