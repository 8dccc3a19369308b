"""The Admin API's answers: APISIX's shapes ({"key", "value", "createdIndex", "modifiedIndex"}, {"error_msg"})."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from gateway.admin.redaction import redact
from gateway.config.loader import ConfigIssue
from gateway.store.base import RESOURCE_KINDS, StoredObject

KEY_PREFIX = "/protogate"
_ITEM = re.compile(r"^(?P<kind>[a-z_]+)\[(?P<index>\d+)\](?P<rest>.*)$")


def error_response(status: int, message: str, *, headers: dict[str, str] | None = None, **extra: Any) -> web.Response:
    return web.json_response({"error_msg": message, **extra}, status=status, headers=headers)


def object_body(obj: StoredObject) -> dict[str, Any]:
    return {
        "key": f"{KEY_PREFIX}/{obj.kind}/{obj.id}",
        "value": redact(obj.kind, obj.value),  # inline private keys never leave the gateway
        "createdIndex": obj.created_revision or obj.revision,
        "modifiedIndex": obj.revision,
    }


def object_response(obj: StoredObject, status: int = 200) -> web.Response:
    return web.json_response(object_body(obj), status=status, headers={"ETag": etag(obj.revision)})


def etag(revision: int) -> str:
    return f'"{revision}"'


def issue_list(issues: Sequence[ConfigIssue], document: dict[str, Any], id_of: Any) -> list[dict[str, Any]]:
    """Each issue with its document path, and the object it is in (kind, id, field) when it is in one."""
    out: list[dict[str, Any]] = []
    for issue in issues:
        entry: dict[str, Any] = {"path": issue.path, "message": issue.message}
        match = _ITEM.match(issue.path)
        if match is not None and match["kind"] in RESOURCE_KINDS:
            items = document.get(match["kind"]) or []
            index = int(match["index"])
            if index < len(items):
                entry["kind"] = match["kind"]
                entry["id"] = str(items[index].get(id_of(match["kind"]), ""))
                entry["field"] = match["rest"].lstrip(".")
        out.append(entry)
    return out
