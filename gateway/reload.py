"""Hot reload: ConfigManager owns the running config, validates every change whole, and swaps runtimes.

A change (a file edit, an etcd event, an Admin API write) becomes a whole document, which goes
through the one loader in a thread. A refused document changes nothing: the last good config keeps
serving and `last_error` says why. An accepted one is compiled into a new Runtime, which replaces
the old one between two requests (one assignment on the loop); the old one closes after the
requests that started on it finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.config.loader import ConfigError, ConfigIssue, LoadedConfig, load_document
from gateway.config.models import StoreSettings
from gateway.runner.pool import RunnerPool
from gateway.runtime import Runtime
from gateway.store.base import RESOURCE_KINDS, ConfigStore, Snapshot, StoredObject, StoreError

log = logging.getLogger("protogate.reload")

FOLLOW_RETRY = 1.0  # seconds before a store's watch that ended or failed is started again


def open_store(settings: StoreSettings, config_path: Path) -> ConfigStore:
    """The store the config file names; the file's directory anchors a relative data file path."""
    if settings.type == "standalone":
        from gateway.store.file import StandaloneFileStore

        return StandaloneFileStore(config_path, poll_interval=settings.poll_interval)
    if settings.type == "file":
        from gateway.store.file import FileStore

        assert settings.path is not None  # the model requires it
        path = Path(settings.path)
        return FileStore(
            path if path.is_absolute() else config_path.parent / path, poll_interval=settings.poll_interval
        )
    from gateway.store.etcd import EtcdStore

    return EtcdStore(
        settings.endpoints,
        settings.prefix,
        timeout=settings.timeout,
        username=settings.username,
        password=settings.password,
    )


def settings_of(document: dict[str, Any]) -> dict[str, Any]:
    """The sections of a config document that are not resources (gateway, telemetry, store, admin)."""
    return {key: value for key, value in document.items() if key not in RESOURCE_KINDS}


def with_objects(settings: dict[str, Any], objects: dict[str, dict[str, StoredObject]]) -> dict[str, Any]:
    return {**settings, **Snapshot(0, objects).document()}


class RefusedChange(ConfigError):
    """A write whose would-be document the loader refused; `document` is that document (issue paths point into it)."""

    def __init__(self, issues: list[ConfigIssue], document: dict[str, Any]) -> None:
        super().__init__(issues)
        self.document = document


class ConfigManager:
    """The running config and runtime of one gateway, and every way they change."""

    def __init__(
        self,
        loaded: LoadedConfig,
        runtime: Runtime,
        *,
        settings: dict[str, Any] | None = None,
        runner_pool: Callable[[], RunnerPool | None] = lambda: None,
    ) -> None:
        self.loaded = loaded
        self.runtime = runtime
        self.base_dir = loaded.base_dir
        # Settings sections are read once, from the config file; a store only holds resources.
        self.settings: dict[str, Any] = (
            settings if settings is not None else loaded.config.model_dump(mode="json", include=_SETTINGS_FIELDS)
        )
        self._runner_pool = runner_pool
        self._runners = loaded.config.plugin_runners  # started with the process; a reload cannot change them
        self.store: ConfigStore | None = None
        self.snapshot: Snapshot | None = None
        self.revision = 0
        self.reloads = 0
        self.last_reload: float | None = None  # wall-clock time of the last applied change
        self.last_error: ConfigError | None = None
        self.last_error_at: float | None = None
        self._lock = asyncio.Lock()
        self._retiring: dict[asyncio.Task[None], Runtime] = {}
        self._watch: asyncio.Task[None] | None = None

    # -- validation and swap

    async def check(self, document: dict[str, Any]) -> LoadedConfig:
        """The document validated whole (in a thread: descriptor sources may block), or ConfigError."""
        loaded = await asyncio.to_thread(load_document, document, base_dir=self.base_dir)
        if loaded.config.plugin_runners != self._runners:
            message = "plugin runners start with the gateway; restart it to add, remove or change one"
            raise ConfigError([ConfigIssue("plugin_runners", message)])
        pool = self._runner_pool()
        if pool:
            from gateway.runner.startup import prepare_all

            issues, kept = await prepare_all(pool, loaded.config)
            pool.prepared_keys.update(kept)
            if issues:
                raise ConfigError(issues)
        return loaded

    async def apply(self, document: dict[str, Any], *, revision: int | None = None) -> LoadedConfig:
        """Validate a whole document and serve it; ConfigError (recorded as last_error) changes nothing."""
        async with self._lock:
            return await self._apply(document, revision)

    async def _apply(self, document: dict[str, Any], revision: int | None) -> LoadedConfig:
        try:
            loaded = await self.check(document)
        except ConfigError as exc:
            self._refused(exc)
            raise
        self._install(loaded, revision)
        return loaded

    def _refused(self, exc: ConfigError) -> None:
        self.last_error, self.last_error_at = exc, time.time()
        log.error("config change refused; the last good config keeps serving:\n%s", exc)

    def _install(self, loaded: LoadedConfig, revision: int | None) -> None:
        new = Runtime(loaded)
        old, self.runtime, self.loaded = self.runtime, new, loaded  # the swap: the next request gets `new`
        if revision is not None:
            self.revision = revision
        self.reloads += 1
        self.last_reload = time.time()
        self.last_error = self.last_error_at = None
        task = asyncio.get_running_loop().create_task(old.retire(), name="retire-runtime")
        self._retiring[task] = old
        task.add_done_callback(self._retired)
        log.info("config revision %d serving (%d routes)", self.revision, len(loaded.config.routes))

    def _retired(self, task: asyncio.Task[None]) -> None:
        self._retiring.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("closing a replaced runtime failed", exc_info=task.exception())

    @property
    def draining(self) -> int:
        """Replaced runtimes still finishing requests."""
        return len(self._retiring)

    # -- stores

    async def follow(self, store: ConfigStore, snapshot: Snapshot) -> None:
        """Track `store` from `snapshot` (the one the running config was loaded from)."""
        self.store, self.snapshot, self.revision = store, snapshot, snapshot.revision
        self._watch = asyncio.get_running_loop().create_task(self._follow(store), name="config-watch")

    async def _follow(self, store: ConfigStore) -> None:
        # Only close() ends this (it cancels the task before closing the store): a watch that ends or fails
        # is started again, or the node would keep serving an old config without a word.
        while True:
            try:
                async for snapshot in store.watch(self.revision):
                    await self.apply_snapshot(snapshot)
                log.warning("config store watch ended; following the store again from revision %d", self.revision)
            except asyncio.CancelledError:
                raise
            except Exception:  # the watch must outlive whatever a store throws; serve the last good config
                log.exception("config store watch failed; retrying")
            await asyncio.sleep(FOLLOW_RETRY)

    async def apply_snapshot(self, snapshot: Snapshot) -> bool:
        """Serve a store's snapshot unless it is not newer than the running one; False when refused.

        A snapshot marked `resync` (the store's history started over: etcd restored from a backup or
        replaced) is served even when its revision is lower: it is what the store holds now."""
        async with self._lock:
            if snapshot.resync is not None and self.snapshot is not None:
                log.warning(
                    "config store resynchronised (%s): serving its revision %d in place of revision %d",
                    snapshot.resync,
                    snapshot.revision,
                    self.revision,
                )
                if snapshot.objects == self.snapshot.objects:  # the same objects at the same revisions: no reload
                    self.snapshot, self.revision = snapshot, snapshot.revision
                    return True
            elif snapshot.revision <= self.revision and self.snapshot is not None:
                return True  # our own write, seen again through the watch
            self.snapshot = snapshot  # what the store holds, even when refused: writes build on it
            try:
                await self._apply(with_objects(self.settings, snapshot.objects), snapshot.revision)
            except ConfigError:
                self.revision = snapshot.revision
                return False
            return True

    async def write(
        self, kind: str, obj_id: str, value: dict[str, Any] | None, *, expect_revision: int | None
    ) -> StoredObject | None:
        """Put (`value`) or delete (None) one object: the would-be document must load, then the store takes it.

        RefusedChange: refused, nothing changed. StoreConflict, StoreReadOnly, StoreError, KeyError: from the store.
        """
        store = self.store
        if store is None:
            raise StoreError("this gateway has no config store")
        async with self._lock:
            objects = {kind: dict(by_id) for kind, by_id in (self.snapshot.objects if self.snapshot else {}).items()}
            by_id = objects.setdefault(kind, {})
            if value is None:
                if obj_id not in by_id:
                    raise KeyError(f"{kind}/{obj_id}")
                del by_id[obj_id]
            else:
                current = by_id.get(obj_id)
                by_id[obj_id] = StoredObject(kind, obj_id, value, current.revision if current else 0)
            if store.read_only:  # say so before validating: the operator's file is the only way in
                await store.put(kind, obj_id, value or {}, expect_revision=expect_revision)
            document = with_objects(self.settings, objects)
            try:
                loaded = await self.check(document)
            except ConfigError as exc:
                raise RefusedChange(exc.issues, document) from None  # nothing written
            stored: StoredObject | None = None
            if value is None:
                await store.delete(kind, obj_id, expect_revision=expect_revision)
                revision = getattr(store, "revision", None)
            else:
                stored = await store.put(kind, obj_id, value, expect_revision=expect_revision)
                by_id[obj_id] = stored
                revision = stored.revision
            # A store that does not tell a delete's revision delivers it through the watch (applied again, once).
            self.snapshot = Snapshot(revision if revision is not None else self.revision, objects)
            self._install(loaded, revision)
            return stored

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self.store is not None:
            await self.store.close()
        await self.runtime.close()
        # Shutting down: the app's own shutdown timeout already waited for requests; close what is left.
        for task, old in list(self._retiring.items()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await old.close()


_SETTINGS_FIELDS = {"gateway", "telemetry", "store", "admin"}
