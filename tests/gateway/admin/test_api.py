"""Admin API handlers over a real ConfigManager and FileStore: auth, CRUD shapes, paging, merge patch."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.admin.api import build_admin_app, merge_patch
from gateway.admin.auth import AdminKeyRequired, admin_key, allowed, is_loopback
from gateway.config.loader import load_document
from gateway.config.models import AdminSettings
from gateway.reload import ConfigManager
from gateway.runtime import Runtime
from gateway.store.file import FileStore

KEY = "unit-test-admin-key"
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
UPSTREAM = {"nodes": {"127.0.0.1:9": 1}}


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[ConfigManager]:
    loaded = load_document({}, base_dir=tmp_path)
    manager = ConfigManager(loaded, Runtime(loaded), settings={})
    store = FileStore(tmp_path / "data.yaml", poll_interval=0.05)
    await manager.follow(store, await store.snapshot())
    yield manager
    await manager.close()


@pytest.fixture
async def client(aiohttp_client: ClientFactory, manager: ConfigManager) -> TestClient[Any, Any]:
    return await aiohttp_client(build_admin_app(manager, AdminSettings(key=KEY), KEY), headers={"X-API-KEY": KEY})


def test_merge_patch_follows_rfc_7386() -> None:
    target = {"a": "b", "c": {"d": "e", "f": "g"}, "keep": [1]}
    assert merge_patch(target, {"a": "z", "c": {"f": None}, "n": {"x": 1}}) == {
        "a": "z",
        "c": {"d": "e"},
        "keep": [1],
        "n": {"x": 1},
    }
    assert merge_patch({"a": [1, 2]}, {"a": [3]}) == {"a": [3]}


def test_the_key_is_required_beyond_loopback() -> None:
    with pytest.raises(AdminKeyRequired, match=r"admin\.key"):
        admin_key(AdminSettings(listen="0.0.0.0:9180"))
    key, generated = admin_key(AdminSettings(listen="127.0.0.1:9180"))
    assert generated and len(key) >= 32
    assert admin_key(AdminSettings(listen="0.0.0.0:9180", key="configured")) == ("configured", False)
    assert is_loopback("::1") and is_loopback("localhost") and not is_loopback("example.com")


def test_allow_admin_matches_the_peer_address() -> None:
    import ipaddress

    networks = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128")]
    assert allowed("10.2.3.4", networks) and allowed("::1", networks) and allowed("::ffff:10.0.0.1", networks)
    assert not allowed("127.0.0.1", networks) and not allowed("", networks) and not allowed("junk", networks)


async def test_calls_without_the_right_key_are_401(client: TestClient[Any, Any]) -> None:
    for headers in ({"X-API-KEY": ""}, {"X-API-KEY": "nope"}):
        response = await client.get("/protogate/admin/routes", headers=headers)
        assert response.status == 401
    response = await client.put("/protogate/admin/upstreams/u", json=UPSTREAM, headers={"X-API-KEY": "x"})
    assert response.status == 401
    assert (await client.get("/protogate/admin/upstreams")).status == 200
    assert (await (await client.get("/protogate/admin/upstreams")).json())["total"] == 0


async def test_put_get_list_pages_and_delete(client: TestClient[Any, Any], manager: ConfigManager) -> None:
    response = await client.put("/protogate/admin/upstreams/u", json=UPSTREAM)
    assert response.status == 201
    for i in range(5):
        response = await client.put(f"/protogate/admin/routes/r{i}", json={"uri": f"/{i}", "upstream_id": "u"})
        assert response.status == 201
    assert manager.runtime.table.match("", "GET", "/3") is not None
    response = await client.put("/protogate/admin/routes/r1", json={"id": "r1", "uri": "/one", "upstream_id": "u"})
    assert response.status == 200 and response.headers["ETag"] == '"7"'
    page = await (await client.get("/protogate/admin/routes?page=2&page_size=2")).json()
    assert page["total"] == 5 and [item["value"]["id"] for item in page["list"]] == ["r2", "r3"]
    assert (await client.get("/protogate/admin/routes?page=0")).status == 400
    body = await (await client.get("/protogate/admin/routes/r1")).json()
    assert body == {
        "key": "/protogate/routes/r1",
        "value": {"id": "r1", "uri": "/one", "upstream_id": "u"},
        "createdIndex": 3,
        "modifiedIndex": 7,
    }
    response = await client.put("/protogate/admin/routes/r1", json={"id": "other", "uri": "/"})
    assert response.status == 400 and "is not the 'r1'" in (await response.json())["error_msg"]
    assert (await client.delete("/protogate/admin/routes/r4")).status == 200
    assert (await client.get("/protogate/admin/routes/r4")).status == 404
    assert (await client.delete("/protogate/admin/routes/r4")).status == 404
    assert (await client.get("/protogate/admin/widgets")).status == 404
    assert manager.runtime.table.match("", "GET", "/4") is None


async def test_post_generates_ids_except_for_named_kinds(client: TestClient[Any, Any]) -> None:
    first = await (await client.post("/protogate/admin/upstreams", json=UPSTREAM)).json()
    second = await (await client.post("/protogate/admin/upstreams", json=UPSTREAM)).json()
    assert first["value"]["id"] != second["value"]["id"]
    assert (await client.post("/protogate/admin/upstreams", json={**UPSTREAM, "id": "x"})).status == 400
    assert (await client.post("/protogate/admin/consumers", json={"username": "ann"})).status == 201
    assert (await client.post("/protogate/admin/consumers", json={"username": "ann"})).status == 409
    assert (await client.post("/protogate/admin/consumers", json={})).status == 400
    assert (await client.put("/protogate/admin/consumers", json={"username": "bob"})).status == 201


async def test_status_reports_revision_and_reloads(client: TestClient[Any, Any]) -> None:
    await client.put("/protogate/admin/upstreams/u", json=UPSTREAM)
    status = await (await client.get("/protogate/admin/status")).json()
    assert status["revision"] == 1 and status["reloads"] == 1 and status["config_ok"] is True
    assert status["store"] == "FileStore" and status["read_only"] is False and status["last_error"] is None
