"""ConfigStore: the interface every config store implements, and its errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

# The resource kinds a store holds, as they are named in the config document and the Admin API.
RESOURCE_KINDS: tuple[str, ...] = (
    "routes",
    "services",
    "upstreams",
    "consumers",
    "consumer_groups",
    "plugin_configs",
    "global_rules",
    "protos",
    "plugin_runners",
    "ssls",  # certificates of the HTTPS listener: a change serves new connections without a restart
)

# The field that names an object of each kind; `id` unless listed (as in the config document).
ID_FIELDS: dict[str, str] = {"consumers": "username", "plugin_runners": "name"}


def id_field(kind: str) -> str:
    return ID_FIELDS.get(kind, "id")


@dataclass(frozen=True)
class StoredObject:
    """One resource as stored: its id, its value (a plain dict, as in the document) and its revision."""

    kind: str
    id: str
    value: dict[str, Any]
    revision: int  # changes on every write of this object; If-Match compares it
    created_revision: int = 0  # the store's revision when the object was created; 0: the store does not say


@dataclass(frozen=True)
class Snapshot:
    """Every resource of the store at one revision of the store as a whole."""

    revision: int
    objects: dict[str, dict[str, StoredObject]]  # kind -> id -> object
    # Set (to why) when the store's history started over: etcd restored from a backup or replaced by another
    # cluster, a data file restored. Such a snapshot is the whole truth even when its revision is lower than
    # one already applied, and replaces the running config.
    resync: str | None = field(default=None, compare=False)

    def document(self) -> dict[str, list[dict[str, Any]]]:
        """The resources as a config document's lists (the shape load_document takes)."""
        return {kind: [dict(obj.value) for obj in by_id.values()] for kind, by_id in self.objects.items() if by_id}


class StoreError(Exception):
    """The store could not do what was asked (unreachable, refused); the running config is unchanged."""


class StoreConflict(StoreError):
    """A write whose expected revision is not the object's current one (HTTP 409)."""


class StoreReadOnly(StoreError):
    """A write to a store that only the operator's hand-written file may change (standalone mode)."""


class ConfigStore(Protocol):
    """A source of the gateway's resources that can be watched and, unless read-only, written.

    Gateway-wide settings (`gateway:`, `telemetry:`, `store:`) always come from the local config
    file; a store holds the resources (RESOURCE_KINDS). Writes are validated by the caller (the
    Admin API runs the whole would-be document through the loader) before they reach the store.
    """

    read_only: bool

    async def snapshot(self) -> Snapshot:
        """Everything, now. Raises StoreError when the store cannot be read."""
        ...

    def watch(self, after_revision: int) -> AsyncIterator[Snapshot]:
        """Snapshots as the store changes after `after_revision`; resumes by itself after an outage."""
        ...

    async def put(self, kind: str, obj_id: str, value: dict[str, Any], *, expect_revision: int | None) -> StoredObject:
        """Create or replace one object. `expect_revision` (If-Match) must match, or StoreConflict."""
        ...

    async def delete(self, kind: str, obj_id: str, *, expect_revision: int | None) -> None:
        """Remove one object. KeyError when it does not exist."""
        ...

    async def close(self) -> None: ...
