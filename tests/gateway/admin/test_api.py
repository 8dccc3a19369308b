"""Admin API handlers over a real ConfigManager and FileStore: auth, CRUD shapes, paging, merge patch, key redaction."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from tls_certs import CertificateAuthority, Issued, server_cert

from gateway.admin.api import build_admin_app, merge_patch
from gateway.admin.auth import AdminKeyRequired, admin_key, allowed, is_loopback
from gateway.admin.redaction import REDACTED, is_key_material, redact, restore
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


# -- private keys ----------------------------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Issued, Issued]:
    ca = CertificateAuthority(tmp_path / "pki", "admin")
    return server_cert(ca, "api.test"), server_cert(ca, "other.test")


def _ssl(cert: Issued, key: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"cert": cert.cert_pem, "key": cert.key_pem if key is None else key, "snis": [cert.name], **extra}


def _stored(manager: ConfigManager, kind: str) -> dict[str, Any]:
    assert manager.snapshot is not None
    return {obj_id: obj.value for obj_id, obj in manager.snapshot.objects.get(kind, {}).items()}


async def test_inline_private_keys_are_never_returned(
    client: TestClient[Any, Any], manager: ConfigManager, pki: tuple[Issued, Issued]
) -> None:
    api, other = pki
    answers = [await client.put("/protogate/admin/ssls/api", json=_ssl(api))]
    answers.append(await client.get("/protogate/admin/ssls/api"))
    answers.append(await client.patch("/protogate/admin/ssls/api", json={"snis": ["api.test", "www.api.test"]}))
    for response in answers:
        assert response.status in (200, 201)
        body = await response.json()
        assert body["value"]["key"] == REDACTED and body["value"]["cert"] == api.cert_pem
        assert "PRIVATE KEY" not in await response.text()
    listed = await (await client.get("/protogate/admin/ssls")).json()
    assert [item["value"]["key"] for item in listed["list"]] == [REDACTED]
    assert _stored(manager, "ssls")["api"]["key"] == api.key_pem  # the store keeps the key itself
    # A file path is not a secret: it is shown as it is.
    response = await client.put("/protogate/admin/ssls/other", json=_ssl(other, str(other.key)))
    assert (await response.json())["value"]["key"] == str(other.key)
    # Every other inline private key too: an upstream's client certificate key, inline or in a route.
    tls = {"client_cert": api.cert_pem, "client_key": api.key_pem, "verify": False}
    response = await client.put("/protogate/admin/upstreams/u", json={**UPSTREAM, "scheme": "https", "tls": tls})
    assert response.status == 201, await response.text()
    assert (await response.json())["value"]["tls"]["client_key"] == REDACTED
    route = {"uri": "/r", "upstream": {**UPSTREAM, "scheme": "https", "tls": tls}}
    response = await client.put("/protogate/admin/routes/r", json=route)
    assert (await response.json())["value"]["upstream"]["tls"]["client_key"] == REDACTED
    assert "PRIVATE KEY" not in await (await client.get("/protogate/admin/routes")).text()


async def test_the_marker_sent_back_keeps_the_stored_key(
    client: TestClient[Any, Any], manager: ConfigManager, pki: tuple[Issued, Issued]
) -> None:
    api, other = pki
    await client.put("/protogate/admin/ssls/api", json=_ssl(api))
    # GET, change, PUT back: the marker stands for the key stored.
    value = (await (await client.get("/protogate/admin/ssls/api")).json())["value"]
    value["snis"] = ["api.test", "*.api.test"]
    response = await client.put("/protogate/admin/ssls/api", json=value)
    assert response.status == 200, await response.text()
    stored = _stored(manager, "ssls")["api"]
    assert stored["key"] == api.key_pem and stored["snis"] == ["api.test", "*.api.test"]
    # PATCH with the whole value read, or without the key: the same key.
    value["snis"] = ["api.test"]
    assert (await client.patch("/protogate/admin/ssls/api", json=value)).status == 200
    assert (await client.patch("/protogate/admin/ssls/api", json={"key_passphrase_env": None})).status == 200
    assert _stored(manager, "ssls")["api"]["key"] == api.key_pem
    # A new key replaces it; a certificate the kept key does not match is refused.
    assert (await client.put("/protogate/admin/ssls/api", json=_ssl(other, snis=["api.test"]))).status == 200
    assert _stored(manager, "ssls")["api"]["key"] == other.key_pem
    response = await client.put("/protogate/admin/ssls/api", json=_ssl(api, REDACTED))
    assert response.status == 400 and "does not match" in (await response.json())["error_msg"]
    # The kept key is the one of the revision the write was checked against.
    etag = (await client.get("/protogate/admin/ssls/api")).headers["ETag"]
    await client.patch("/protogate/admin/ssls/api", json={"snis": ["other.test"]})
    response = await client.put("/protogate/admin/ssls/api", json=_ssl(other, REDACTED), headers={"If-Match": etag})
    assert response.status == 409
    # Inline upstream keys round-trip the same way.
    tls = {"client_cert": api.cert_pem, "client_key": api.key_pem, "verify": False}
    await client.put("/protogate/admin/upstreams/u", json={**UPSTREAM, "scheme": "https", "tls": tls})
    value = (await (await client.get("/protogate/admin/upstreams/u")).json())["value"]
    value["type"] = "least_conn"
    assert (await client.put("/protogate/admin/upstreams/u", json=value)).status == 200
    assert _stored(manager, "upstreams")["u"]["tls"]["client_key"] == api.key_pem


async def test_the_marker_where_no_key_is_stored_is_refused_with_its_field_path(
    client: TestClient[Any, Any], manager: ConfigManager, pki: tuple[Issued, Issued]
) -> None:
    api, other = pki
    await client.put("/protogate/admin/ssls/other", json=_ssl(other))
    for response in (
        await client.put("/protogate/admin/ssls/api", json=_ssl(api, REDACTED)),
        await client.post("/protogate/admin/ssls", json=_ssl(api, REDACTED)),
    ):
        assert response.status == 400
        body = await response.json()
        assert body["errors"][0]["path"] == "ssls[1].key"
        assert body["errors"][0]["kind"] == "ssls" and body["errors"][0]["field"] == "key"
        assert "ssls[1].key" in body["error_msg"] and REDACTED in body["error_msg"]
    # A stored file path is shown, so the marker cannot stand for it.
    await client.put("/protogate/admin/ssls/api", json=_ssl(api, str(api.key)))
    response = await client.patch("/protogate/admin/ssls/api", json={"key": REDACTED})
    assert response.status == 400 and (await response.json())["errors"][0]["path"] == "ssls[1].key"
    tls = {"client_cert": api.cert_pem, "client_key": REDACTED, "verify": False}
    response = await client.put("/protogate/admin/upstreams/u", json={**UPSTREAM, "scheme": "https", "tls": tls})
    assert (await response.json())["errors"][0]["path"] == "upstreams[0].tls.client_key"
    assert set(_stored(manager, "ssls")) == {"other", "api"} and _stored(manager, "ssls")["api"]["key"] == str(api.key)
    assert _stored(manager, "upstreams") == {}


async def test_a_refused_key_is_not_echoed_or_logged(
    client: TestClient[Any, Any], pki: tuple[Issued, Issued], caplog: pytest.LogCaptureFixture
) -> None:
    api, _ = pki
    body = "".join(api.key_pem.strip().splitlines()[1:-1])  # pasted without its -----BEGIN line
    for key in (body, "x" + api.key_pem, api.key_pem.replace("M", "N", 3)):
        response = await client.put("/protogate/admin/ssls/api", json=_ssl(api, key))
        assert response.status == 400
        text = await response.text()
        assert "ssls[0].key" in text
        assert body[:24] not in text and body[-24:] not in text
    assert body[:24] not in caplog.text and body[-24:] not in caplog.text


@pytest.mark.parametrize(
    ("value", "hidden"),
    [
        ("certs/api.key", False),
        ("/etc/protogate/tls/api.test.key", False),
        ("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ0\n-----END PRIVATE KEY-----\n", True),
        ("MC4CAQAwBQYDK2VwBCIEIOb3nYVuF1sQ5r7v0mEIs2cmn5W0XQyP9Hq0vOqQ4r2c", True),  # PEM lines left out
        ("MC4CAQAwBQYDK2VwBCIE IOb3nYVuF1sQ5r7v0mEIs2cmn5W0XQyP9Hq0vOqQ4r2c", True),
        ("line one\nline two", True),
        (None, False),
        (["-----BEGIN"], True),
    ],
)
def test_what_counts_as_key_material(value: Any, hidden: bool) -> None:
    assert is_key_material(value) is hidden
    obj = {"id": "s", "key": value}
    assert redact("ssls", obj)["key"] == (REDACTED if hidden else value)
    assert obj["key"] == value  # a copy is redacted, never the stored value
    restored, missing = restore("ssls", {"id": "s", "key": REDACTED}, obj)
    assert (restored["key"], missing) == ((value, []) if hidden and isinstance(value, str) else (REDACTED, ["key"]))
