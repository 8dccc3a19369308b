"""The Admin API on a real gateway process: CRUD of every kind, refusals, concurrency, auth, schemas, export, keys."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from admin_harness import KEY, AdminGateway, admin_section, start_admin_gateway, start_http_upstream, write_config
from processes import BIN, start
from tls_certs import CertificateAuthority, server_cert

from gateway.admin.redaction import REDACTED


@pytest.fixture(scope="module")
def upstream_port() -> Iterator[int]:
    process, port = start_http_upstream()
    yield port
    process.stop()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[AdminGateway]:
    config = write_config(
        tmp_path / "gateway.yaml", {"admin": admin_section(), "store": {"type": "file", "path": "data.yaml"}}
    )
    started = start_admin_gateway(config)
    yield started
    started.process.stop()


def upstream(port: int, id_: str = "echo") -> dict[str, Any]:
    return {"id": id_, "nodes": {f"127.0.0.1:{port}": 1}, "timeout": {"connect": 1, "read": 3}}


def test_every_kind_is_created_read_listed_patched_and_deleted(
    gateway: AdminGateway, upstream_port: int, bookstore_descriptor_set: Path
) -> None:
    blob = base64.b64encode(bookstore_descriptor_set.read_bytes()).decode()
    writes: list[tuple[str, str, dict[str, Any]]] = [
        ("upstreams", "echo", upstream(upstream_port)),
        ("services", "svc", {"upstream_id": "echo", "plugins": {"request-id": {}}}),
        ("plugin_configs", "pc", {"plugins": {"cors": {}}}),
        ("global_rules", "g", {"plugins": {"request-id": {"header_name": "X-Global-Id"}}}),
        ("consumer_groups", "grp", {"plugins": {}}),
        ("consumers", "alice", {"group_id": "grp", "plugins": {"key-auth": {"key": "alice-key"}}}),
        ("protos", "books", {"descriptor_set_base64": blob}),
        ("routes", "r1", {"uri": "/echo/*", "service_id": "svc", "plugin_config_id": "pc"}),
    ]
    for kind, obj_id, value in writes:
        status, headers, body = gateway.admin("PUT", f"/{kind}/{obj_id}", value)
        assert status == 201, (kind, body)
        assert body["key"] == f"/protogate/{kind}/{obj_id}"
        assert headers["etag"] == f'"{body["modifiedIndex"]}"'
    assert gateway.get("/echo/hello")[0] == 200
    health = gateway.admin("GET", "/status")[2]["upstream_health"]  # HTTP upstreams report their nodes too
    assert [node["node"] for node in health["echo"]] == [f"127.0.0.1:{upstream_port}"]

    for kind, obj_id, _ in writes:
        status, _, body = gateway.admin("GET", f"/{kind}/{obj_id}")
        assert status == 200 and body["value"][("username" if kind == "consumers" else "id")] == obj_id
        status, _, listed = gateway.admin("GET", f"/{kind}")
        assert status == 200 and listed["total"] == 1 and listed["list"][0]["key"] == body["key"]

    status, _, patched = gateway.admin("PATCH", "/routes/r1", {"uri": "/echo/patched", "plugin_config_id": None})
    assert status == 200, patched
    assert patched["value"]["uri"] == "/echo/patched" and "plugin_config_id" not in patched["value"]
    assert gateway.get("/echo/patched")[0] == 200
    assert gateway.get("/echo/hello")[0] == 404

    status, _, created = gateway.admin("POST", "/routes", {"uri": "/echo/posted", "upstream_id": "echo"})
    assert status == 201 and created["value"]["id"]
    assert gateway.get("/echo/posted")[0] == 200

    # plugin runners start with the process: a change is refused with its reason, not half-applied
    status, _, body = gateway.admin("PUT", "/plugin_runners/py", {"cmd": ["true"]})
    assert status == 400 and body["errors"][0]["path"] == "plugin_runners"

    for kind, obj_id in [("routes", created["value"]["id"]), ("routes", "r1")] + [(k, i) for k, i, _ in writes[-2::-1]]:
        status, _, body = gateway.admin("DELETE", f"/{kind}/{obj_id}")
        assert status == 200, (kind, body)
    for kind, _, _ in writes:
        assert gateway.admin("GET", f"/{kind}")[2]["total"] == 0
    assert gateway.get("/echo/patched")[0] == 404


def test_a_refused_write_lists_every_field_path_and_changes_nothing(gateway: AdminGateway, upstream_port: int) -> None:
    gateway.admin("PUT", "/upstreams/echo", upstream(upstream_port))
    bad = {"uri": "no-slash", "upstream_id": "missing", "plugins": {"key-auth": {"header": 5}, "nope": {}}}
    status, _, body = gateway.admin("PUT", "/routes/bad", bad)
    assert status == 400
    paths = {e["path"] for e in body["errors"]}
    assert "routes[0].uri" in paths
    status, _, body = gateway.admin("PUT", "/routes/bad", {**bad, "uri": "/ok"})
    paths = {e["path"] for e in body["errors"]}
    assert {"routes[0].upstream_id", "routes[0].plugins.key-auth.header", "routes[0].plugins.nope"} <= paths
    assert all(e["id"] == "bad" and e["kind"] == "routes" for e in body["errors"])
    assert gateway.admin("GET", "/routes/bad")[0] == 404
    assert gateway.admin("GET", "/routes")[2]["total"] == 0
    for raw in ("{not json", '{"uri": "/a", "uri": "/b"}', "[1]"):
        assert gateway.admin("PUT", "/routes/x", raw)[0] == 400


def test_if_match_with_a_stale_revision_is_409(gateway: AdminGateway, upstream_port: int) -> None:
    _, headers, _ = gateway.admin("PUT", "/upstreams/echo", upstream(upstream_port))
    first = headers["etag"]
    _, headers, _ = gateway.admin("PUT", "/upstreams/echo", upstream(upstream_port), {"If-Match": first})
    second = headers["etag"]
    assert second != first
    status, _, body = gateway.admin("PUT", "/upstreams/echo", upstream(upstream_port), {"If-Match": first})
    assert status == 409 and "stale" in body["error_msg"]
    assert gateway.admin("PATCH", "/upstreams/echo", {"type": "least_conn"}, {"If-Match": first})[0] == 409
    assert gateway.admin("DELETE", "/upstreams/echo", None, {"If-Match": first})[0] == 409
    assert gateway.admin("PUT", "/upstreams/echo", upstream(upstream_port), {"If-None-Match": "*"})[0] == 409
    assert gateway.admin("DELETE", "/upstreams/echo", None, {"If-Match": second})[0] == 200


def test_deleting_a_referenced_object_is_400_naming_the_referrers(gateway: AdminGateway, upstream_port: int) -> None:
    gateway.admin("PUT", "/upstreams/echo", upstream(upstream_port))
    gateway.admin("PUT", "/services/svc", {"upstream_id": "echo"})
    gateway.admin("PUT", "/routes/r1", {"uri": "/echo/*", "upstream_id": "echo"})
    status, _, body = gateway.admin("DELETE", "/upstreams/echo")
    assert status == 400
    assert body["referrers"] == ["routes/r1", "services/svc"]
    assert "routes/r1" in body["error_msg"]
    assert gateway.admin("GET", "/upstreams/echo")[0] == 200
    assert gateway.get("/echo/a")[0] == 200


def test_auth_key_and_allow_admin(tmp_path: Path) -> None:
    config = write_config(tmp_path / "gateway.yaml", {"admin": admin_section()})
    gateway = start_admin_gateway(config)
    try:
        assert gateway.admin("GET", "/routes", key=None)[0] == 401
        assert gateway.admin("GET", "/routes", key="wrong-key-123")[0] == 401
        assert gateway.admin("PUT", "/routes/r", {"uri": "/"}, key="wrong-key-123")[0] == 401
        assert gateway.admin("GET", "/routes")[0] == 200
        # a forwarded header does not make a caller local
        status, _, _ = gateway.admin("GET", "/routes", headers={"X-Forwarded-For": "10.1.1.1"})
        assert status == 200
    finally:
        gateway.process.stop()
    assert not any(KEY in line or "wrong-key-123" in line for line in gateway.process.output)  # never logged

    config = write_config(tmp_path / "outside.yaml", {"admin": admin_section(allow_admin=["10.0.0.0/8"])})
    gateway = start_admin_gateway(config)
    try:
        status, _, body = gateway.admin("GET", "/routes", headers={"X-Real-IP": "10.0.0.1"})
        assert status == 403 and "allow_admin" in body["error_msg"]
        assert gateway.admin("GET", "/routes", key=None)[0] == 403
    finally:
        gateway.process.stop()


def test_no_key_beyond_loopback_refuses_to_start(tmp_path: Path) -> None:
    config = write_config(tmp_path / "gateway.yaml", {"admin": {"listen": "0.0.0.0:0"}})
    done = subprocess.run(
        [str(BIN / "protogate"), "run", "-c", str(config), "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert "without a key" in done.stderr and "admin.key" in done.stderr


def test_no_key_on_loopback_generates_one_and_prints_it_once(tmp_path: Path) -> None:
    config = write_config(tmp_path / "gateway.yaml", {"admin": {"listen": "127.0.0.1:0"}})
    gateway = start_admin_gateway(config, expect_key=None)
    try:
        assert len(gateway.key) >= 32
        assert gateway.admin("GET", "/routes")[0] == 200
        assert gateway.admin("GET", "/routes", key="guess")[0] == 401
    finally:
        gateway.process.stop()
    assert sum(gateway.key in line for line in gateway.process.output) == 1


def test_unknown_paths_and_methods_get_json_errors(gateway: AdminGateway) -> None:
    status, headers, body = gateway.admin("GET", "/routes/x/y")
    assert (status, body["error_msg"]) == (404, "no Admin API endpoint at /protogate/admin/routes/x/y")
    status, headers, body = gateway.admin("POST", "/routes/x", {"uri": "/x"})
    assert status == 405 and "PUT" in headers["allow"] and body["error_msg"].startswith("POST is not allowed")
    assert headers["server"].startswith("protogate/")


def test_schema_endpoints(gateway: AdminGateway) -> None:
    status, _, schema = gateway.admin("GET", "/schema/routes")
    assert status == 200 and "uri" in schema["properties"]
    status, _, schema = gateway.admin("GET", "/schema/protos")
    assert "descriptor_set_base64" in schema["properties"]
    status, _, schema = gateway.admin("GET", "/schema/plugins/key-auth")
    assert status == 200 and "header" in schema["properties"]
    status, _, schema = gateway.admin("GET", "/schema/plugins/key-auth?schema_type=consumer")
    assert status == 200 and "key" in schema["properties"]
    assert gateway.admin("GET", "/schema/plugins/nope")[0] == 404
    assert gateway.admin("GET", "/schema/nope")[0] == 404


def test_standalone_admin_api_is_read_only(tmp_path: Path, upstream_port: int) -> None:
    config = write_config(
        tmp_path / "gateway.yaml",
        {
            "admin": admin_section(),
            "upstreams": [upstream(upstream_port)],
            "routes": [{"id": "r", "uri": "/echo", "upstream_id": "echo"}],
        },
    )
    gateway = start_admin_gateway(config)
    try:
        status, _, body = gateway.admin("GET", "/routes/r")
        assert status == 200 and body["value"]["uri"] == "/echo"
        status, headers, body = gateway.admin("PUT", "/routes/r", {"uri": "/other", "upstream_id": "echo"})
        assert status == 405 and headers["allow"] == "GET" and "standalone" in body["error_msg"]
        assert gateway.admin("DELETE", "/routes/r")[0] == 405
        assert gateway.admin("GET", "/status")[2]["read_only"] is True
        assert gateway.get("/echo")[0] == 200
    finally:
        gateway.process.stop()


def test_export_round_trips_through_run(gateway: AdminGateway, upstream_port: int, tmp_path: Path) -> None:
    gateway.admin("PUT", "/upstreams/echo", upstream(upstream_port))
    gateway.admin("PUT", "/routes/r1", {"uri": "/echo", "upstream_id": "echo"})
    done = subprocess.run(
        [str(BIN / "protogate"), "export", "-c", str(tmp_path / "gateway.yaml")],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    exported = yaml.safe_load(done.stdout)
    assert "store" not in exported and exported["routes"] == [{"id": "r1", "uri": "/echo", "upstream_id": "echo"}]
    exported["admin"]["listen"] = "127.0.0.1:0"
    again = write_config(tmp_path / "exported.yaml", exported)
    copy = start_admin_gateway(again)
    try:
        assert copy.get("/echo")[0] == 200
        assert copy.admin("GET", "/routes/r1")[2]["value"] == {"id": "r1", "uri": "/echo", "upstream_id": "echo"}
    finally:
        copy.process.stop()
    validate = start([str(BIN / "protogate"), "validate", "-c", str(again)])
    assert validate.popen.wait(timeout=30) == 0
    validate.stop()


def test_private_keys_never_leave_through_the_admin_api(gateway: AdminGateway, tmp_path: Path) -> None:
    api = server_cert(CertificateAuthority(tmp_path / "pki", "admin"), "api.test")
    pem_body = "".join(api.key_pem.strip().splitlines()[1:-1])
    status, _, body = gateway.admin(
        "PUT", "/ssls/api", {"cert": api.cert_pem, "key": api.key_pem, "snis": ["api.test"]}
    )
    assert status == 201 and body["value"]["key"] == REDACTED
    assert gateway.admin("GET", "/ssls")[2]["list"][0]["value"]["key"] == REDACTED
    # GET, change, PUT back: the stored key stays.
    value = gateway.admin("GET", "/ssls/api")[2]["value"]
    assert value["key"] == REDACTED and value["cert"] == api.cert_pem
    value["snis"] = ["api.test", "www.api.test"]
    status, _, body = gateway.admin("PUT", "/ssls/api", value)
    assert status == 200 and body["value"]["snis"] == ["api.test", "www.api.test"], body
    # The marker on a new object stands for nothing: refused, with the field's path.
    status, _, body = gateway.admin("POST", "/ssls", {**value, "id": None, "snis": ["new.test"]})
    assert status == 400 and body["errors"][0]["path"] == "ssls[1].key"
    # A key pasted without its -----BEGIN line is refused without being echoed.
    status, _, body = gateway.admin("PUT", "/ssls/pasted", {"cert": api.cert_pem, "key": pem_body, "snis": ["p.test"]})
    assert status == 400 and body["errors"][0]["path"] == "ssls[1].key"
    assert pem_body[:24] not in json.dumps(body)
    # `protogate export` is the operator's backup: it has the key itself.
    done = subprocess.run(
        [str(BIN / "protogate"), "export", "-c", str(tmp_path / "gateway.yaml")],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    exported = yaml.safe_load(done.stdout)["ssls"]
    assert [(s["id"], s["key"], s["snis"]) for s in exported] == [("api", api.key_pem, ["api.test", "www.api.test"])]
    backup = tmp_path / "backup.yaml"
    backup.write_text("")
    backup.chmod(0o644)
    args = [str(BIN / "protogate"), "export", "-c", str(tmp_path / "gateway.yaml"), "-o", str(backup)]
    subprocess.run(args, capture_output=True, timeout=30, check=True)
    assert backup.stat().st_mode & 0o777 == 0o600  # keys inside: the owner's only
    assert yaml.safe_load(backup.read_text())["ssls"] == exported
    # The same key written into the data file by hand: refused and logged without it, never shown.
    data = yaml.safe_load((tmp_path / "data.yaml").read_text())
    data["ssls"].append({"id": "by-hand", "cert": api.cert_pem, "key": pem_body, "snis": ["hand.test"]})
    data["_revisions"]["revision"] += 1
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(data))
    gateway.process.wait_for("config change refused")
    listed = gateway.admin("GET", "/ssls")[2]["list"]
    assert [item["value"]["key"] for item in listed] == [REDACTED, REDACTED]
    status = gateway.admin("GET", "/status")[2]
    assert status["last_error"]["errors"][0]["path"] == "ssls[1].key"
    assert pem_body[:24] not in json.dumps(status)
    gateway.process.stop()
    assert not any(pem_body[:24] in line or pem_body[-24:] in line for line in gateway.process.output)  # never logged
