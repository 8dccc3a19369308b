"""Integration fixtures: the real bookstore backend and real gateway processes on OS-picked ports."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from gateway_harness import QUICKSTART, Gateway, GatewayFactory, start_backend, start_gateway


@pytest.fixture(scope="session")
def bookstore_descriptor_set() -> Path:
    spec = importlib.util.spec_from_file_location("quickstart_build", QUICKSTART / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Path(module.build())


@pytest.fixture(scope="session")
def bookstore(bookstore_descriptor_set: Path) -> Iterator[int]:
    """The port of a bookstore backend shared by the session (tests that change data use their own)."""
    backend, port = start_backend()
    yield port
    backend.stop()


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[GatewayFactory]:
    started: list[Gateway] = []

    def make(config: dict[str, Any]) -> Gateway:
        path = tmp_path / f"gateway-{len(started)}.yaml"
        path.write_text(yaml.safe_dump(config))
        gateway = start_gateway(path)
        started.append(gateway)
        return gateway

    yield make
    for gateway in started:
        gateway.process.stop()
