"""Liveness and readiness on their own port: a real gateway process, its data file broken and mended, a drain."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from gateway_harness import start_http_upstream, start_protogate
from processes import Process


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    process, port = start_http_upstream("status")
    yield port
    process.stop()


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_until(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.05)
    return value


def start(tmp_path: Path, upstream: int) -> tuple[Process, str, str]:
    """A gateway keeping its routes in a data file: (process, status base URL, gateway base URL)."""
    data = {
        "upstreams": [{"id": "u", "nodes": {f"127.0.0.1:{upstream}": 1}}],
        "routes": [{"id": "r", "uri": "/*", "upstream_id": "u"}],
    }
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(data))
    config = {
        "gateway": {"status_listen": "127.0.0.1:0"},
        "store": {"type": "file", "path": "data.yaml", "poll_interval": 0.1},
    }
    process, (status_line, http_line) = start_protogate(
        config, tmp_path / "gateway.yaml", "status on http://", "listening on http://"
    )
    status = status_line.rsplit(" ", 1)[1].removesuffix("/status/ready")
    return process, status, "http://" + http_line.rsplit("http://", 1)[1]


def test_ready_while_serving_and_degraded_but_ready_on_a_broken_store(tmp_path: Path, upstream: int) -> None:
    process, status, gateway = start(tmp_path, upstream)
    try:
        assert get(f"{status}/status") == (200, {"status": "ok"})
        code, body = get(f"{status}/status/ready")
        assert (code, body["status"]) == (200, "ok") and "reasons" not in body

        good = (tmp_path / "data.yaml").read_text()
        (tmp_path / "data.yaml").write_text("routes: [unclosed\n")  # a half-written file
        code, body = wait_until(lambda: (r := get(f"{status}/status/ready"))[1]["status"] == "degraded" and r)
        assert code == 200  # still serving its last good config: taking it out would turn this into an outage
        assert "serving the last good config" in body["reasons"][0]
        assert urllib.request.urlopen(f"{gateway}/echo/x", timeout=10).status == 200

        (tmp_path / "data.yaml").write_text(good.replace("/*", "/echo/*"))  # mended (and changed, so it reloads)
        wait_until(lambda: get(f"{status}/status/ready")[1]["status"] == "ok")
    finally:
        process.stop()


def test_not_ready_from_the_stop_signal_while_requests_drain(tmp_path: Path, upstream: int) -> None:
    process, status, gateway = start(tmp_path, upstream)
    answers: list[int] = []
    slow = threading.Thread(
        target=lambda: answers.append(urllib.request.urlopen(f"{gateway}/slow?ms=1500", timeout=10).status)
    )
    try:
        slow.start()
        time.sleep(0.3)  # the slow request is in flight (a stop before it arrives would refuse it instead)
        process.popen.send_signal(signal.SIGTERM)
        _, body = wait_until(lambda: (r := get(f"{status}/status/ready"))[0] == 503 and r)
        assert body == {"status": "error", "error": "shutting down"}
        slow.join(timeout=10)
        assert answers == [200]  # the request in flight finished
    finally:
        process.stop()
