"""Helpers for integration tests: start the real backend and gateway, talk raw HTTP to them."""

from __future__ import annotations

import contextlib
import http.client
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from processes import BIN, REPO, Process, start

QUICKSTART = REPO / "examples" / "quickstart"


def start_backend(name: str = "backend-1") -> tuple[Process, int]:
    backend = start([str(BIN / "python"), str(QUICKSTART / "server.py"), "--port", "0", "--name", name])
    try:
        line = backend.wait_for("listening on")
    except BaseException:
        backend.stop()
        raise
    return backend, int(line.rsplit(":", 1)[1])


class Gateway:
    def __init__(self, process: Process, address: str) -> None:
        self.process = process
        self.address = address  # host:port
        self.url = f"http://{address}"

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])


def bookstore_config(descriptor_set: Path, backend_port: int, **transcode: Any) -> dict[str, Any]:
    """The quickstart's routes, pointed at a backend on `backend_port`."""
    return {
        "protos": [{"id": "bookstore", "descriptor_set": str(descriptor_set)}],
        "upstreams": [
            {
                "id": "bookstore",
                "scheme": "grpc",
                "nodes": {f"127.0.0.1:{backend_port}": 1},
                "timeout": {"connect": 1, "read": 3},
            }
        ],
        "routes": [
            {
                "id": "rest",
                "uri": "/v1/*",
                "upstream_id": "bookstore",
                "plugins": {
                    "grpc-transcode": {"proto_id": "bookstore", "service": "bookstore.v1.Bookstore", **transcode}
                },
            },
            {
                "id": "auto",
                "uri": "/bookstore.v1.Bookstore/*",
                "methods": ["POST"],
                "upstream_id": "bookstore",
                "plugins": {"grpc-transcode": {"proto_id": "bookstore", "auto_mapping": True}},
            },
        ],
    }


class Client:
    """A raw HTTP/1.1 client: sends the path exactly as given, returns status, headers, JSON."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def request(
        self, method: str, path: str, body: bytes | str | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, http.client.HTTPMessage, Any]:
        conn = http.client.HTTPConnection(self.gateway.host, self.gateway.port, timeout=10)
        try:
            data = body.encode() if isinstance(body, str) else body
            conn.request(method, path, body=data, headers=headers or {})
            response = conn.getresponse()
            raw = response.read()
            parsed = json.loads(raw) if raw and "json" in (response.getheader("Content-Type") or "") else raw
            return response.status, response.headers, parsed
        finally:
            conn.close()

    def get(self, path: str, **kwargs: Any) -> tuple[int, http.client.HTTPMessage, Any]:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any, **kwargs: Any) -> tuple[int, http.client.HTTPMessage, Any]:
        return self.request("POST", path, body=body if isinstance(body, str | bytes) else json.dumps(body), **kwargs)


def start_gateway(config_path: Path) -> Gateway:
    process = start([str(BIN / "protogate"), "run", "-c", str(config_path), "--listen", "127.0.0.1:0"])
    try:
        line = process.wait_for("listening on http://")
    except BaseException:
        process.stop()
        raise
    return Gateway(process, line.rsplit("http://", 1)[1].strip())


def start_protogate(config: dict[str, Any], path: Path, *ready: str) -> tuple[Process, list[str]]:
    """Write `config` to `path` and run it (plain listener on an OS-picked port); wait for a line containing
    each of `ready`, in the order the gateway prints them (grpc, then https, then http). The lines, stripped."""
    path.write_text(yaml.safe_dump(config))
    process = start([str(BIN / "protogate"), "run", "-c", str(path), "--listen", "127.0.0.1:0"])
    try:
        lines = [process.wait_for(text).strip() for text in ready]
    except BaseException:
        process.stop()
        raise
    return process, lines


GatewayFactory = Callable[[dict[str, Any]], Gateway]


HTTP_UPSTREAM_SCRIPT = REPO / "tests" / "servers" / "http_upstream.py"


def start_http_upstream(name: str) -> tuple[Process, int]:
    """The real HTTP upstream (tests/servers/http_upstream.py) on an OS-picked port, answering as `name`."""
    process = start([str(BIN / "python"), str(HTTP_UPSTREAM_SCRIPT), "--port", "0", "--name", name])
    try:
        line = process.wait_for("http upstream listening on")
    except BaseException:
        process.stop()
        raise
    return process, int(line.rsplit(":", 1)[1])


@contextlib.contextmanager
def gateway_with_http_upstream(
    directory: Path, name: str, make_config: Callable[[int], dict[str, Any]]
) -> Iterator[Gateway]:
    """A real HTTP upstream answering as `name`, and a gateway serving `make_config(upstream port)`; both
    stopped afterwards (module fixtures of plugin tests yield from this)."""
    upstream, port = start_http_upstream(name)
    try:
        path = directory / "gateway.yaml"
        path.write_text(yaml.safe_dump(make_config(port)))
        gateway = start_gateway(path)
        try:
            yield gateway
        finally:
            gateway.process.stop()
    finally:
        upstream.stop()


def start_gateways(tmp_path: Path, count: int, config: dict[str, Any]) -> list[Gateway]:
    """`count` gateway processes on one config, started side by side (each takes a while to boot)."""
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    processes = [
        start([str(BIN / "protogate"), "run", "-c", str(path), "--listen", "127.0.0.1:0"]) for _ in range(count)
    ]
    try:
        lines = [process.wait_for("listening on http://") for process in processes]
    except BaseException:
        for process in processes:
            process.stop()
        raise
    return [
        Gateway(process, line.rsplit("http://", 1)[1].strip()) for process, line in zip(processes, lines, strict=True)
    ]
