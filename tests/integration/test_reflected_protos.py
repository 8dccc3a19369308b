"""End to end: a gateway whose proto comes from the backend's server reflection serves REST through it."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from gateway_harness import Client, GatewayFactory
from processes import BIN, REPO, Process, start

BACKEND = REPO / "tests" / "servers" / "reflection_backend.py"


def start_reflection_backend(services: str) -> tuple[Process, int]:
    backend = start([str(BIN / "python"), str(BACKEND), "--port", "0", "--services", services])
    try:
        line = backend.wait_for("reflection backend listening on")
    except BaseException:
        backend.stop()
        raise
    return backend, int(line.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def backend() -> Iterator[int]:
    process, port = start_reflection_backend("bookstore,greeter")
    yield port
    process.stop()


def reflection_config(port: int, **reflection: Any) -> dict[str, Any]:
    return {
        "protos": [{"id": "shop", "reflection": {"upstream_id": "shop", **reflection}}],
        "upstreams": [{"id": "shop", "scheme": "grpc", "nodes": {f"127.0.0.1:{port}": 1}}],
        "routes": [
            {"id": "rest", "uri": "/v1/*", "upstream_id": "shop", "plugins": {"grpc-transcode": {"proto_id": "shop"}}},
        ],
    }


def test_a_reflected_proto_serves_rest_through_the_gateway(backend: int, gateway_factory: GatewayFactory) -> None:
    client = Client(gateway_factory(reflection_config(backend)))
    status, _, body = client.get("/v1/shelves")
    assert status == 200
    assert [shelf["theme"] for shelf in body["shelves"]] == ["Fiction", "Poetry"]
    # The second service, and its messages from an imported file, came over reflection too.
    status, _, body = client.get("/v1/greetings/Ada")
    assert status == 200 and body["message"].startswith("Hello, Ada!")


def test_a_service_filter_limits_what_is_transcoded(backend: int, gateway_factory: GatewayFactory) -> None:
    client = Client(gateway_factory(reflection_config(backend, services=["bookstore.v1.Bookstore"])))
    assert client.get("/v1/shelves")[0] == 200
    assert client.get("/v1/greetings/Ada")[0] == 404


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_validate_refuses_a_config_whose_reflection_backend_is_down(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(reflection_config(_closed_port())))
    done = subprocess.run(
        [str(BIN / "protogate"), "validate", "-c", str(config)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    assert "protos[0].reflection: cannot read descriptors from upstream 'shop'" in done.stderr
