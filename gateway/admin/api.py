"""Admin API handlers: `/protogate/admin/{kind}[/{id}]` after APISIX's, every write validated as a whole document."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import BaseModel

from gateway import __version__
from gateway.admin.auth import auth_middleware
from gateway.admin.redaction import REDACTED, restore
from gateway.admin.responses import error_response, issue_list, object_body, object_response
from gateway.config import models
from gateway.config.models import AdminSettings
from gateway.plugins import REGISTRY
from gateway.reload import ConfigManager, RefusedChange
from gateway.store.base import RESOURCE_KINDS, StoreConflict, StoredObject, StoreError, StoreReadOnly, id_field

PREFIX = "/protogate/admin"
MAX_BODY = 32 * 1024 * 1024  # a base64 descriptor set can be large
MAX_PAGE_SIZE = 500

KIND_MODELS: dict[str, type[BaseModel]] = {
    "routes": models.Route,
    "services": models.Service,
    "upstreams": models.Upstream,
    "consumers": models.Consumer,
    "consumer_groups": models.ConsumerGroup,
    "plugin_configs": models.PluginConfigSet,
    "global_rules": models.GlobalRule,
    "protos": models.Proto,
    "plugin_runners": models.PluginRunner,
}
if hasattr(models, "Ssl"):  # the HTTPS listener's certificates (added with the TLS work)
    KIND_MODELS["ssls"] = models.Ssl
MANAGER = web.AppKey("admin_manager", ConfigManager)


def build_admin_app(manager: ConfigManager, settings: AdminSettings, key: str) -> web.Application:
    app = web.Application(middlewares=[json_errors, auth_middleware(settings, key)], client_max_size=MAX_BODY)
    app[MANAGER] = manager
    app.on_response_prepare.append(_server_header)
    routes = app.router
    routes.add_get(f"{PREFIX}/status", status)
    routes.add_get(f"{PREFIX}/schema/plugins/{{name}}", plugin_schema)
    routes.add_get(f"{PREFIX}/schema/{{kind}}", kind_schema)
    routes.add_get(f"{PREFIX}/{{kind}}", list_objects)
    routes.add_post(f"{PREFIX}/{{kind}}", create_object)
    routes.add_put(f"{PREFIX}/{{kind}}", put_object)
    routes.add_get(f"{PREFIX}/{{kind}}/{{id}}", get_object)
    routes.add_put(f"{PREFIX}/{{kind}}/{{id}}", put_object)
    routes.add_patch(f"{PREFIX}/{{kind}}/{{id}}", patch_object)
    routes.add_delete(f"{PREFIX}/{{kind}}/{{id}}", delete_object)
    return app


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own refusals (no such path, method not allowed, body too large) as the API's JSON errors."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        message = f"{request.method} is not allowed on {request.path}" if exc.status == 405 else exc.reason
        if exc.status == 404:
            message = f"no Admin API endpoint at {request.path}"
        return error_response(exc.status, message, headers=headers)


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = f"protogate/{__version__}"  # not aiohttp's and Python's versions


class _Refusal(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


def _kind(request: web.Request) -> str:
    kind = request.match_info["kind"]
    if kind not in RESOURCE_KINDS:
        raise _Refusal(error_response(404, f"unknown resource kind {kind!r} (known: {', '.join(RESOURCE_KINDS)})"))
    return kind


def _objects(request: web.Request, kind: str) -> dict[str, StoredObject]:
    snapshot = request.app[MANAGER].snapshot
    return dict(snapshot.objects.get(kind, {})) if snapshot is not None else {}


def _found(request: web.Request, kind: str, obj_id: str) -> StoredObject:
    obj = _objects(request, kind).get(obj_id)
    if obj is None:
        raise _Refusal(error_response(404, f"{kind}/{obj_id} not found"))
    return obj


def _refusing(handler: Any) -> Any:
    async def run(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except _Refusal as refusal:
            return refusal.response

    run.__name__ = handler.__name__
    return run


# -- reads


@_refusing
async def list_objects(request: web.Request) -> web.Response:
    kind = _kind(request)
    objects = sorted(_objects(request, kind).values(), key=lambda o: (o.created_revision, o.id))
    page, page_size = _int_arg(request, "page", 1, 1), _int_arg(request, "page_size", 0, 0)
    if page_size:
        page_size = min(page_size, MAX_PAGE_SIZE)
        chosen = objects[(page - 1) * page_size : page * page_size]
    else:
        chosen = objects
    return web.json_response({"total": len(objects), "list": [object_body(o) for o in chosen]})


def _int_arg(request: web.Request, name: str, default: int, minimum: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) < minimum:
        raise _Refusal(error_response(400, f"{name} must be an integer of at least {minimum}"))
    return int(raw)


@_refusing
async def get_object(request: web.Request) -> web.Response:
    kind = _kind(request)
    return object_response(_found(request, kind, request.match_info["id"]))


async def kind_schema(request: web.Request) -> web.Response:
    kind = request.match_info["kind"]
    model = KIND_MODELS.get(kind)
    if model is None:
        return error_response(404, f"no schema for {kind!r} (known: {', '.join(KIND_MODELS)}, plugins/NAME)")
    return web.json_response(model.model_json_schema())


async def plugin_schema(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    plugin = REGISTRY.get(name)
    if plugin is None:
        return error_response(404, f"unknown plugin {name!r}")
    model = plugin.Config
    if request.query.get("schema_type") == "consumer":
        if plugin.ConsumerConfig is None:
            return error_response(404, f"plugin {name!r} has no consumer config")
        model = plugin.ConsumerConfig
    return web.json_response(model.model_json_schema())


async def status(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    error = manager.last_error
    store = manager.store
    store_error = getattr(store, "error", None)  # a file that could not be read: the last good config serves
    body = {
        "revision": manager.revision,
        "store": type(store).__name__ if store is not None else None,
        "read_only": bool(store is not None and store.read_only),
        "reloads": manager.reloads,
        "last_reload": _iso(manager.last_reload),
        "config_ok": error is None and store_error is None,
        "store_error": store_error,
        "last_error": None
        if error is None
        else {
            "at": _iso(manager.last_error_at),
            "errors": [{"path": i.path, "message": i.message} for i in error.issues],
        },
        "draining_runtimes": manager.draining,
        "routes": len(manager.loaded.config.routes),
        "upstream_health": _health(manager),
        "time": _iso(time.time()),
    }
    return web.json_response(body)


def _health(manager: ConfigManager) -> dict[str, Any] | None:
    try:
        return dict(manager.runtime.upstream_health())
    except Exception:  # health is a view of live clients; a status page must answer without it
        return None


def _iso(when: float | None) -> str | None:
    return datetime.fromtimestamp(when, UTC).isoformat() if when is not None else None


# -- writes


async def _body(request: web.Request) -> dict[str, Any]:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in pairs:
            if name in out:
                raise ValueError(f"duplicate key {name!r}")
            out[name] = value
        return out

    try:
        raw = await request.read()
        value = json.loads(raw, object_pairs_hook=no_duplicates)
    except web.HTTPRequestEntityTooLarge:
        raise _Refusal(error_response(413, f"the body is larger than {MAX_BODY} bytes")) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Refusal(error_response(400, f"the body is not valid JSON: {exc}")) from None
    if not isinstance(value, dict):
        raise _Refusal(error_response(400, "the body must be a JSON object"))
    return value


def _expected(request: web.Request) -> int | None:
    """If-Match: the revision the write expects (409 when stale); If-None-Match: * means create only."""
    if request.headers.get("If-None-Match", "").strip() == "*":
        return 0
    raw = request.headers.get("If-Match")
    if raw is None or raw.strip() == "*":
        return None
    tag = raw.strip().removeprefix("W/").strip('"')
    if not tag.isdigit():
        raise _Refusal(error_response(400, f"If-Match must be an ETag this API gave (a quoted revision), not {raw!r}"))
    return int(tag)


def _with_id(kind: str, obj_id: str, value: dict[str, Any]) -> dict[str, Any]:
    key = id_field(kind)
    given = value.get(key)
    if given is not None and str(given) != obj_id:
        raise _Refusal(error_response(400, f"the body's {key} {given!r} is not the {obj_id!r} of the path"))
    return {key: obj_id, **{k: v for k, v in value.items() if k != key}}


async def _write(
    request: web.Request, kind: str, obj_id: str, value: dict[str, Any] | None, expect: int | None
) -> StoredObject | None:
    manager = request.app[MANAGER]
    try:
        return await manager.write(kind, obj_id, value, expect_revision=expect)
    except RefusedChange as exc:
        issues = issue_list(exc.issues, exc.document, id_field)
        if value is None:
            referrers = sorted({f"{i['kind']}/{i['id']}" for i in issues if "kind" in i})
            message = f"{kind}/{obj_id} is still in use" + (f" by {', '.join(referrers)}" if referrers else "")
            raise _Refusal(error_response(400, message, errors=issues, referrers=referrers)) from None
        raise _Refusal(_invalid(kind, obj_id, issues)) from None
    except StoreReadOnly as exc:
        raise _Refusal(error_response(405, str(exc), headers={"Allow": "GET"})) from None
    except StoreConflict as exc:
        raise _Refusal(error_response(409, f"stale write: {exc}")) from None
    except KeyError:
        raise _Refusal(error_response(404, f"{kind}/{obj_id} not found")) from None
    except StoreError as exc:
        raise _Refusal(error_response(503, f"the config store did not take the change: {exc}")) from None


def _invalid(kind: str, obj_id: str, issues: list[dict[str, Any]]) -> web.Response:
    count = len(issues)
    message = f"invalid {kind} {obj_id!r} ({count} error{'s' if count != 1 else ''}): " + "; ".join(
        f"{i['path']}: {i['message']}" for i in issues
    )
    return error_response(400, message, errors=issues)


def _unredacted(
    request: web.Request, kind: str, obj_id: str, value: dict[str, Any], current: StoredObject | None
) -> dict[str, Any]:
    """`value` with the stored private keys where it says REDACTED (as GET showed them), or 400 naming the fields."""
    value, missing = restore(kind, value, current.value if current is not None else None)
    if missing:
        # The issue path points into the would-be document, as the loader's do: a new object goes last.
        ids = list(_objects(request, kind))
        index = ids.index(obj_id) if obj_id in ids else len(ids)
        message = f"{REDACTED!r} keeps the stored private key, and {kind}/{obj_id} has none here: "
        message += "send the key (PEM) or a file path"
        issues = [
            {"path": f"{kind}[{index}].{field}", "message": message, "kind": kind, "id": obj_id, "field": field}
            for field in missing
        ]
        raise _Refusal(_invalid(kind, obj_id, issues))
    return value


@_refusing
async def put_object(request: web.Request) -> web.Response:
    kind = _kind(request)
    value = await _body(request)
    obj_id = request.match_info.get("id") or str(value.get(id_field(kind)) or "")
    if not obj_id:
        raise _Refusal(error_response(400, f"give the id in the path (PUT {PREFIX}/{kind}/ID) or as {id_field(kind)}"))
    current = _objects(request, kind).get(obj_id)
    expect = _expected(request)
    sent = _with_id(kind, obj_id, value)
    value = _unredacted(request, kind, obj_id, sent, current)
    if value is not sent and expect is None and current is not None:
        expect = current.revision  # the kept key is that revision's: a key changed since then is not put back
    stored = await _write(request, kind, obj_id, value, expect)
    assert stored is not None
    return object_response(stored, 200 if current is not None else 201)


@_refusing
async def create_object(request: web.Request) -> web.Response:
    kind = _kind(request)
    value = await _body(request)
    key = id_field(kind)
    if key == "id":
        if value.get("id") is not None:
            raise _Refusal(
                error_response(400, f"POST creates with a generated id; PUT {PREFIX}/{kind}/ID to choose it")
            )
        obj_id = _new_id(_objects(request, kind))
    else:
        obj_id = str(value.get(key) or "")
        if not obj_id:
            raise _Refusal(error_response(400, f"{kind} are named by {key}: give it in the body"))
    value = _unredacted(request, kind, obj_id, _with_id(kind, obj_id, value), None)
    stored = await _write(request, kind, obj_id, value, 0)  # 0: only if it does not exist
    assert stored is not None
    return object_response(stored, 201)


def _new_id(existing: dict[str, StoredObject]) -> str:
    # Time-ordered, as APISIX's generated ids: lists sorted by id read in creation order.
    obj_id = str(time.time_ns())
    while obj_id in existing:
        obj_id = str(int(obj_id) + 1)
    return obj_id


@_refusing
async def patch_object(request: web.Request) -> web.Response:
    kind = _kind(request)
    obj_id = request.match_info["id"]
    patch = await _body(request)
    current = _found(request, kind, obj_id)
    merged = merge_patch(current.value, patch)
    if not isinstance(merged, dict):
        raise _Refusal(error_response(400, "the patch must leave an object"))
    expect = _expected(request)
    # Without If-Match the patch still applies to the revision it was merged with, or 409.
    merged = _unredacted(request, kind, obj_id, _with_id(kind, obj_id, merged), current)
    stored = await _write(request, kind, obj_id, merged, expect if expect is not None else current.revision)
    assert stored is not None
    return object_response(stored)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            out.pop(name, None)
        else:
            out[name] = merge_patch(out.get(name), value)
    return out


@_refusing
async def delete_object(request: web.Request) -> web.Response:
    kind = _kind(request)
    obj_id = request.match_info["id"]
    _found(request, kind, obj_id)
    await _write(request, kind, obj_id, None, _expected(request))
    return web.json_response({"deleted": "1", "key": f"/protogate/{kind}/{obj_id}"})
