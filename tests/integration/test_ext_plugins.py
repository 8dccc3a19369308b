"""External plugins through the real gateway and real runner processes (Python SDK runner, Node.js runner)."""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import hmac
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from gateway_harness import Client, Gateway, GatewayFactory, bookstore_config, start_gateway
from google.protobuf import empty_pb2
from processes import BIN, REPO, start
from servers.grpc_gateway import start_grpc_gateway

PLUGINS = REPO / "examples" / "plugins"
HMAC_AUTH = PLUGINS / "python" / "hmac_auth.py"
REWRITE = PLUGINS / "python" / "rewrite.py"
PROBES = REPO / "tests" / "servers" / "ext_plugins" / "probes.py"
LEGACY_RUNNER = REPO / "tests" / "servers" / "ext_plugins" / "legacy_runner.py"
UPSTREAM_SCRIPT = REPO / "tests" / "servers" / "http_upstream.py"
NODE = shutil.which("node")
SECRET = "0123456789abcdef-secret"


def python_runner(name: str = "py", **extra: Any) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "plugin_runner", "--log-level", "WARNING"]
    for spec in (HMAC_AUTH, REWRITE, PROBES):
        cmd += ["--plugins", str(spec)]
    return {"name": name, "cmd": cmd, **extra}


def ext(*conf: tuple[str, dict[str, Any]], **options: Any) -> dict[str, Any]:
    return {"conf": [{"name": name, "value": value} for name, value in conf], **options}


def signed(method: str, path: str, secret: str = SECRET) -> dict[str, str]:
    date = formatdate(usegmt=True)
    text = "\n".join([method, path, date])
    signature = base64.b64encode(hmac.new(secret.encode(), text.encode(), hashlib.sha256).digest()).decode()
    return {"Date": date, "X-Signature": signature}


def echoed_headers(body: dict[str, Any]) -> dict[str, str]:
    return {name.lower(): value for name, value in body["headers"]}


def runner_pid(gateway: Gateway, after: int = 0) -> int:
    """The pid of the next runner the supervisor reports ready."""
    line = gateway.process.wait_for("plugin runner 'py' ready (pid", timeout=20)
    pid = int(re.search(r"\(pid (\d+)", line).group(1))  # type: ignore[union-attr]
    assert pid != after
    return pid


@pytest.fixture(scope="module")
def http_upstream() -> Iterator[int]:
    process = start([str(BIN / "python"), str(UPSTREAM_SCRIPT), "--port", "0", "--name", "echo"])
    try:
        line = process.wait_for("http upstream listening on")
        yield int(line.rsplit(":", 1)[1])
    finally:
        process.stop()


def upstream(port: int) -> dict[str, Any]:
    return {"id": "echo", "nodes": {f"127.0.0.1:{port}": 1}, "timeout": {"connect": 1, "read": 5}}


@pytest.fixture(scope="module")
def shared(
    tmp_path_factory: pytest.TempPathFactory, http_upstream: int, bookstore: int, bookstore_descriptor_set: Path
) -> Iterator[Gateway]:
    """One gateway, one runner: stop, rewrite and pass on HTTP and transcoded routes, and response changes."""
    config = bookstore_config(bookstore_descriptor_set, bookstore)
    transcode = config["routes"][0]["plugins"]["grpc-transcode"]
    hmac_conf = ("hmac-auth", {"secret": SECRET, "hide_credentials": True})
    routes = [
        {
            "id": "http-stop",
            "uri": "/signed/*",
            "upstream_id": "echo",
            "plugins": {"ext-plugin-pre-req": ext(hmac_conf)},
        },
        {
            "id": "http-rewrite",
            "uri": "/old/*",
            "upstream_id": "echo",
            "plugins": {
                "ext-plugin-pre-req": ext(
                    (
                        "path-rewrite",
                        {
                            "request_headers": {"x-added": "by-runner"},
                            "strip_prefix": "/old",
                            "replace_prefix": "/echo",
                        },
                    ),
                    ("set-args", {"args": {"page": "2"}, "remove": ["drop"]}),
                )
            },
        },
        {
            "id": "http-pass",
            "uri": "/echo/*",
            "upstream_id": "echo",
            "plugins": {"ext-plugin-pre-req": ext(("path-rewrite", {}))},
        },
        {
            "id": "http-post-req",
            "uri": "/authed/*",
            "upstream_id": "echo",
            "plugins": {
                "key-auth": {},
                "proxy-rewrite": {"regex_uri": ["^/authed/(.*)", "/echo/$1"]},
                "ext-plugin-post-req": ext(("report-pid", {})),
            },
        },
        {
            "id": "http-resp",
            "uri": "/resp/*",
            "upstream_id": "echo",
            "plugins": {
                "proxy-rewrite": {"regex_uri": ["^/resp/(.*)", "/echo/$1"]},
                "ext-plugin-post-resp": ext(
                    ("path-rewrite", {"response_headers": {"x-resp-by": "runner"}}), ("wrap-body", {})
                ),
            },
        },
        {
            "id": "grpc-stop",
            "uri": "/signed-grpc/*",
            "upstream_id": "bookstore",
            "plugins": {
                "ext-plugin-pre-req": ext(
                    hmac_conf, ("path-rewrite", {"strip_prefix": "/signed-grpc", "replace_prefix": "/"})
                ),
                "grpc-transcode": transcode,
            },
        },
        {
            "id": "grpc-rewrite",
            "uri": "/api/v1/*",
            "upstream_id": "bookstore",
            "plugins": {
                "ext-plugin-pre-req": ext(
                    ("path-rewrite", {"strip_prefix": "/api"}), ("set-args", {"args": {"page_size": "1"}})
                ),
                "ext-plugin-post-resp": ext(("path-rewrite", {"response_headers": {"x-resp-by": "runner"}})),
                "grpc-transcode": transcode,
            },
        },
        {
            "id": "grpc-pass",
            "uri": "/v1/*",
            "upstream_id": "bookstore",
            "plugins": {"ext-plugin-pre-req": ext(("path-rewrite", {})), "grpc-transcode": transcode},
        },
    ]
    config["routes"] = routes
    config["upstreams"].append(upstream(http_upstream))
    config["consumers"] = [{"username": "alice", "plugins": {"key-auth": {"key": "alice-key"}}}]
    config["plugin_runners"] = [python_runner()]
    path = tmp_path_factory.mktemp("ext-shared") / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    gateway = start_gateway(path)
    yield gateway
    gateway.process.stop()


def test_stop_on_an_http_route(shared: Gateway) -> None:
    client = Client(shared)
    status, _, body = client.get("/signed/x")
    assert status == 401 and body == {"message": "missing x-signature header"}
    status, _, body = client.get("/signed/x", headers={**signed("GET", "/signed/x"), "X-Signature": "bad"})
    assert status == 401 and body == {"message": "invalid signature"}


def test_pass_with_a_valid_signature_hides_the_credential(shared: Gateway) -> None:
    status, _, body = Client(shared).get("/signed/x", headers=signed("GET", "/signed/x"))
    # /signed/x is no echo path: the upstream's 404 proves the request went through, signature removed.
    assert status == 404, body


def test_rewrite_on_an_http_route(shared: Gateway) -> None:
    status, headers, body = Client(shared).get("/old/a%2Fb/c?drop=1&keep=a+b&page=1")
    assert status == 200, body
    assert body["path"] == "/echo/a%2Fb/c?keep=a%20b&page=2"  # percent-encoding kept, args rewritten in place
    assert echoed_headers(body)["x-added"] == "by-runner"
    assert headers.get("X-Protogate-Ext-Plugin") is None


def test_pass_on_an_http_route_leaves_the_request_alone(shared: Gateway) -> None:
    status, _, body = Client(shared).post("/echo/p?q=1", b"payload", headers={"X-Mine": "1"})
    assert status == 200, body
    assert body["path"] == "/echo/p?q=1" and body["body"] == "payload"
    assert echoed_headers(body)["x-mine"] == "1"


def test_post_req_runs_after_auth_and_sees_the_consumer(shared: Gateway) -> None:
    client = Client(shared)
    status, _, _ = client.get("/authed/x")
    assert status == 401  # key-auth refused before the runner was asked
    status, _, body = client.get("/authed/x", headers={"apikey": "alice-key", "traceparent": _TRACEPARENT})
    assert status == 200, body
    seen = echoed_headers(body)
    assert seen["x-runner-consumer"] == "alice"
    assert seen["x-runner-traceparent"] == _TRACEPARENT  # the trace context reached the runner
    assert int(seen["x-runner-pid"]) > 0


_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_post_resp_changes_the_real_upstream_response(shared: Gateway) -> None:
    status, headers, body = Client(shared).get("/resp/x")
    assert status == 202
    assert headers["x-resp-by"] == "runner" and headers["x-wrapped"] == "yes"
    assert body.startswith(b"wrapped:{") and b'"path": "/echo/x"' in body
    assert headers["Content-Length"] == str(len(body))


def test_stop_rewrite_and_pass_on_a_transcoded_route(shared: Gateway) -> None:
    client = Client(shared)
    status, _, body = client.get("/signed-grpc/v1/shelves")
    assert status == 401, body
    status, _, body = client.get("/signed-grpc/v1/shelves", headers=signed("GET", "/signed-grpc/v1/shelves"))
    assert status == 200 and body["shelves"], body
    status, headers, body = client.get("/api/v1/shelves/1/books")
    assert status == 200, body
    assert len(body["books"]) == 1 and body.get("nextPageToken")  # page_size=1 added by the runner
    assert headers["x-resp-by"] == "runner"  # post-resp on the transcoded answer
    status, _, body = client.get("/v1/shelves/1/books?page_size=2")
    assert status == 200 and len(body["books"]) == 2, body


# -- failure policy and the runner's life ---------------------------------------------------------------------------


def _pid_config(http_port: int, **runner: Any) -> dict[str, Any]:
    return {
        "upstreams": [upstream(http_port)],
        "plugin_runners": [python_runner(**runner)],
        "routes": [
            {
                "id": "closed",
                "uri": "/echo/closed",
                "upstream_id": "echo",
                "plugins": {"ext-plugin-pre-req": ext(("report-pid", {}), timeout=2)},
            },
            {
                "id": "open",
                "uri": "/echo/open",
                "upstream_id": "echo",
                "plugins": {"ext-plugin-pre-req": ext(("report-pid", {}), timeout=2, allow_degradation=True)},
            },
        ],
    }


def test_token_lost_after_a_runner_restart_fails_no_request(
    gateway_factory: GatewayFactory, http_upstream: int
) -> None:
    gateway = gateway_factory(_pid_config(http_upstream))
    client = Client(gateway)
    first = runner_pid_from_output(gateway)
    status, _, body = client.get("/echo/closed")
    assert status == 200 and echoed_headers(body)["x-runner-pid"] == str(first)
    os.kill(first, signal.SIGKILL)
    exit_line = gateway.process.wait_for("exited with code", timeout=10)
    assert f"pid {first}" in exit_line and "code -9" in exit_line
    second = runner_pid(gateway, after=first)
    status, _, body = client.get("/echo/closed")  # the old token is gone with the old process
    assert status == 200, body
    assert echoed_headers(body)["x-runner-pid"] == str(second)


def runner_pid_from_output(gateway: Gateway) -> int:
    for line in gateway.process.output:
        match = re.search(r"plugin runner 'py' ready \(pid (\d+)", line)
        if match:
            return int(match.group(1))
    raise AssertionError("no ready line:\n" + "".join(gateway.process.output))


def test_expired_token_is_prepared_again(gateway_factory: GatewayFactory, http_upstream: int) -> None:
    gateway = gateway_factory(_pid_config(http_upstream, conf_expiry=0.2))
    client = Client(gateway)
    assert client.get("/echo/closed")[0] == 200
    time.sleep(0.5)  # idle past PROTOGATE_CONF_EXPIRY: the runner forgets the token, answers TOKEN_UNKNOWN
    status, _, body = client.get("/echo/closed")
    assert status == 200, body


def test_runner_killed_under_load_fails_fast_or_degrades_then_recovers(
    gateway_factory: GatewayFactory, http_upstream: int
) -> None:
    gateway = gateway_factory(_pid_config(http_upstream))
    client = Client(gateway)
    pid = runner_pid_from_output(gateway)
    assert client.get("/echo/closed")[0] == 200

    def timed(route: str) -> tuple[int, str | None]:
        started = time.monotonic()
        status, headers, body = client.get(f"/echo/{route}")
        assert time.monotonic() - started < 3, "a request hung on a dead runner"
        assert status in ((200, 503) if route == "closed" else (200,)), body
        return status, headers.get("X-Protogate-Ext-Plugin")

    os.kill(pid, signal.SIGKILL)
    closed: list[int] = []
    opened: list[str | None] = []
    deadline = time.monotonic() + 10
    while (503 not in closed or "degraded" not in opened) and time.monotonic() < deadline:
        closed.append(timed("closed")[0])
        opened.append(timed("open")[1])
    assert 503 in closed, "no request saw the runner down"
    assert "degraded" in opened, "no request passed degraded"
    deadline = time.monotonic() + 20
    while timed("closed")[0] != 200:
        assert time.monotonic() < deadline, "the gateway did not recover after the runner came back"
    assert timed("open") == (200, None)


def test_runner_killed_with_requests_in_flight_fails_them_fast(
    gateway_factory: GatewayFactory, http_upstream: int
) -> None:
    held = (("announce", {}), ("sleep", {"seconds": 30}))
    gateway = gateway_factory(
        {
            "upstreams": [upstream(http_upstream)],
            "plugin_runners": [python_runner()],
            "routes": [
                {
                    "id": "held",
                    "uri": "/echo/held",
                    "upstream_id": "echo",
                    "plugins": {"ext-plugin-pre-req": ext(*held, timeout=20)},
                },
                {
                    "id": "held-open",
                    "uri": "/echo/held-open",
                    "upstream_id": "echo",
                    "plugins": {"ext-plugin-pre-req": ext(*held, timeout=20, allow_degradation=True)},
                },
            ],
        }
    )
    pid = runner_pid_from_output(gateway)
    client = Client(gateway)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        closed = [pool.submit(client.get, "/echo/held") for _ in range(2)]
        opened = [pool.submit(client.get, "/echo/held-open") for _ in range(2)]
        for _ in range(4):  # the runner holds all four calls (on the gateway's one Calls stream)
            gateway.process.wait_for("ext-plugin call for /echo/held", timeout=20)
        started = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        for future in closed:
            status, _, body = future.result(timeout=10)
            assert status == 503, body
        for future in opened:
            status, headers, body = future.result(timeout=10)
            assert status == 200 and headers["X-Protogate-Ext-Plugin"] == "degraded", body
        assert time.monotonic() - started < 3, "in-flight calls waited for their timeout instead of failing"


@pytest.mark.parametrize("claim", [1, 2])
def test_a_runner_without_the_calls_stream_still_works(
    gateway_factory: GatewayFactory, http_upstream: int, claim: int
) -> None:
    runner = python_runner()
    runner["cmd"] = [sys.executable, str(LEGACY_RUNNER), "--claim", str(claim), *runner["cmd"][3:]]
    config = _pid_config(http_upstream)
    config["plugin_runners"] = [runner]
    gateway = gateway_factory(config)
    pid = runner_pid_from_output(gateway)
    client = Client(gateway)
    for _ in range(3):  # a runner that claims the stream without serving it: the first call falls back
        status, headers, body = client.get("/echo/closed")
        assert status == 200 and echoed_headers(body)["x-runner-pid"] == str(pid), body
        assert headers.get("X-Protogate-Ext-Plugin") is None


def test_runner_slower_than_the_timeout(gateway_factory: GatewayFactory, http_upstream: int) -> None:
    sleep = ("sleep", {"seconds": 2})
    gateway = gateway_factory(
        {
            "upstreams": [upstream(http_upstream)],
            "plugin_runners": [python_runner()],
            "routes": [
                {
                    "id": "closed",
                    "uri": "/echo/slow",
                    "upstream_id": "echo",
                    "plugins": {"ext-plugin-pre-req": ext(sleep, timeout=0.2)},
                },
                {
                    "id": "open",
                    "uri": "/echo/slow-open",
                    "upstream_id": "echo",
                    "plugins": {"ext-plugin-pre-req": ext(sleep, timeout=0.2, allow_degradation=True)},
                },
            ],
        }
    )
    client = Client(gateway)
    started = time.monotonic()
    status, _, body = client.get("/echo/slow")
    assert status == 504 and "did not answer in time" in body["message"]
    status, headers, body = client.get("/echo/slow-open")
    assert status == 200 and headers["X-Protogate-Ext-Plugin"] == "degraded", body
    assert time.monotonic() - started < 1.5
    gateway.process.wait_for("ext-plugin pre-req via runner 'py': timeout", timeout=5)


def test_runner_refusing_a_config_stops_the_start(tmp_path: Path, http_upstream: int) -> None:
    config = {
        "upstreams": [upstream(http_upstream)],
        "plugin_runners": [python_runner()],
        "routes": [
            {
                "id": "ok",
                "uri": "/echo/ok",
                "upstream_id": "echo",
                "plugins": {"ext-plugin-pre-req": ext(("path-rewrite", {}))},
            },
            {
                "id": "bad",
                "uri": "/echo/bad",
                "upstream_id": "echo",
                "plugins": {"ext-plugin-pre-req": ext(("path-rewrite", {}), ("hmac-auth", {"secret": "short"}))},
            },
        ],
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    validate = subprocess.run([str(BIN / "protogate"), "validate", "-c", str(path)], capture_output=True, text=True)
    assert validate.returncode == 0, validate.stderr  # structure only: the runner's schema needs the runner
    field = "routes[1].plugins.ext-plugin-pre-req.conf[1].value.secret"
    checked = subprocess.run(
        [str(BIN / "protogate"), "validate", "--with-runners", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 1 and field in checked.stderr, checked.stderr
    run = subprocess.run(
        [str(BIN / "protogate"), "run", "-c", str(path), "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 1
    assert f"{field}: String should have at least 16 characters" in run.stderr, run.stderr
    assert "listening on http" not in run.stdout


def test_socket_is_private_and_the_runner_stops_with_the_gateway(tmp_path: Path, http_upstream: int) -> None:
    config = _pid_config(http_upstream)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    gateway = start_gateway(path)
    try:
        line = next(line for line in gateway.process.output if "plugin runner 'py' started" in line)
        socket_path = Path(line.rsplit(" on unix:", 1)[1].strip())
        assert stat.S_ISSOCK(socket_path.stat().st_mode)
        assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(socket_path.parent.stat().st_mode) == 0o700
        pid = runner_pid_from_output(gateway)
    finally:
        gateway.process.stop()
    assert gateway.process.popen.returncode == 0
    assert not _alive(pid), "the runner outlived the gateway"
    assert not socket_path.parent.exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_dev_mode_uses_a_runner_started_by_hand(tmp_path: Path, http_upstream: int) -> None:
    socket_path = tmp_path / "dev.sock"
    runner = python_runner()
    dev = start(runner["cmd"], cwd=REPO, env={"PROTOGATE_RUNNER_ADDRESS": f"unix:{socket_path}"})
    try:
        dev.wait_for("plugin runner listening on", timeout=20)
        config = _pid_config(http_upstream)
        config["plugin_runners"] = [{"name": "py", "dev": True, "address": f"unix:{socket_path}"}]
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(config))
        gateway = start_gateway(path)
        try:
            status, _, body = Client(gateway).get("/echo/closed")
            assert status == 200 and echoed_headers(body)["x-runner-pid"] == str(dev.popen.pid)
            assert not any("started (pid" in line for line in gateway.process.output)  # nothing spawned
        finally:
            gateway.process.stop()
        assert dev.popen.poll() is None  # the gateway leaves a dev runner alone
    finally:
        dev.stop()


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_node_runner_end_to_end(gateway_factory: GatewayFactory, http_upstream: int) -> None:
    node_dir = PLUGINS / "node"
    if not (node_dir / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("run `npm ci --prefix examples/plugins/node` first")
    gateway = gateway_factory(
        {
            "upstreams": [upstream(http_upstream)],
            "plugin_runners": [{"name": "node", "cmd": [NODE, str(node_dir / "runner.js")]}],
            "routes": [
                {
                    "id": "node",
                    "uri": "/echo/*",
                    "upstream_id": "echo",
                    "plugins": {
                        "ext-plugin-pre-req": ext(("require-header", {"header": "x-team", "status": 403}), timeout=2)
                    },
                }
            ],
        }
    )
    client = Client(gateway)
    status, _, body = client.get("/echo/n")
    assert status == 403, body
    status, _, body = client.get("/echo/n", headers={"X-Team": "core"})
    assert status == 200 and body["path"] == "/echo/n", body


# -- the native gRPC listener ------------------------------------------------------------------------------------------


def test_ext_plugins_on_native_grpc_calls(tmp_path: Path, bookstore: int, bookstore_descriptor_set: Path) -> None:
    """A call on the gRPC listener goes through the same runner: refused without a signature, passed with
    one, and its metadata rewritten by the runner before the backend sees it."""
    sys.path.insert(0, str(REPO / "examples" / "quickstart" / "generated"))
    try:
        from bookstore.v1 import bookstore_pb2, bookstore_pb2_grpc
    finally:
        sys.path.remove(str(REPO / "examples" / "quickstart" / "generated"))
    service = "/bookstore.v1.Bookstore"
    config = {
        "upstreams": [{"id": "bookstore", "scheme": "grpc", "nodes": {f"127.0.0.1:{bookstore}": 1}}],
        "plugin_runners": [python_runner()],
        "routes": [
            {
                "id": "signed",
                "uri": f"{service}/ListShelves",
                "upstream_id": "bookstore",
                "plugins": {"ext-plugin-pre-req": ext(("hmac-auth", {"secret": SECRET}))},
            },
            {
                "id": "rewritten",
                "uri": f"{service}/EchoHeaders",
                "upstream_id": "bookstore",
                "plugins": {"ext-plugin-pre-req": ext(("path-rewrite", {"request_headers": {"x-added": "by-runner"}}))},
            },
        ],
    }
    process, _, address = start_grpc_gateway(config, tmp_path / "gateway.yaml")
    try:
        with grpc.insecure_channel(address) as channel:
            stub = bookstore_pb2_grpc.BookstoreStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.ListShelves(bookstore_pb2.ListShelvesRequest(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            metadata = [(name.lower(), value) for name, value in signed("POST", f"{service}/ListShelves").items()]
            assert stub.ListShelves(bookstore_pb2.ListShelvesRequest(), metadata=metadata, timeout=10).shelves
            echoed = stub.EchoHeaders(empty_pb2.Empty(), timeout=10)
            assert echoed.metadata["x-added"] == "by-runner"
    finally:
        process.stop()
