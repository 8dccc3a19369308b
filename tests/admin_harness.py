"""Helpers for Admin API tests: a gateway with an Admin API, a raw HTTP client for it, an HTTP upstream."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from gateway_harness import Gateway
from processes import BIN, REPO, Process, start

HTTP_UPSTREAM = REPO / "tests" / "servers" / "http_upstream.py"
KEY = "test-admin-key-0123456789"


def start_http_upstream(name: str = "a") -> tuple[Process, int]:
    process = start([str(BIN / "python"), str(HTTP_UPSTREAM), "--port", "0", "--name", name])
    try:
        line = process.wait_for("listening on")
    except BaseException:
        process.stop()
        raise
    return process, int(line.rsplit(":", 1)[1])


@dataclass
class AdminGateway:
    gateway: Gateway
    admin_address: str
    key: str

    @property
    def process(self) -> Process:
        return self.gateway.process

    def admin(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        key: str | None = "default",
    ) -> tuple[int, dict[str, str], Any]:
        host, port = self.admin_address.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        sent = dict(headers or {})
        if key is not None:
            sent["X-API-KEY"] = self.key if key == "default" else key
        data = None if body is None else (body if isinstance(body, str | bytes) else json.dumps(body))
        try:
            conn.request(method, "/protogate/admin" + path, body=data, headers=sent)
            response = conn.getresponse()
            raw = response.read()
            parsed = json.loads(raw) if raw else None
            return response.status, {k.lower(): v for k, v in response.getheaders()}, parsed
        finally:
            conn.close()

    def get(self, path: str) -> tuple[int, Any]:
        conn = http.client.HTTPConnection(self.gateway.host, self.gateway.port, timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            raw = response.read()
            return response.status, json.loads(raw) if raw.startswith(b"{") else raw
        finally:
            conn.close()


def start_admin_gateway(config_path: Path, *, expect_key: str | None = KEY) -> AdminGateway:
    """A gateway whose config has an `admin:` section listening on 127.0.0.1:0."""
    process = start([str(BIN / "protogate"), "run", "-c", str(config_path), "--listen", "127.0.0.1:0"])
    try:
        admin_line = process.wait_for("admin API on http://")
        line = process.wait_for("listening on http://")
    except BaseException:
        process.stop()
        raise
    key = expect_key
    if key is None:
        printed = [x for x in process.output if "admin key" in x]
        key = printed[0].rsplit(" ", 1)[1].strip()
    gateway = Gateway(process, line.rsplit("http://", 1)[1].strip())
    return AdminGateway(gateway, admin_line.rsplit("http://", 1)[1].strip(), key)


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def admin_section(**extra: Any) -> dict[str, Any]:
    return {"listen": "127.0.0.1:0", "key": KEY, **extra}
