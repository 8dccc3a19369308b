"""Hot reload on a real gateway: under load, from a watched standalone file, and with a broken file."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from admin_harness import KEY, AdminGateway, admin_section, start_admin_gateway, start_http_upstream, write_config


@pytest.fixture(scope="module")
def upstream_port() -> Iterator[int]:
    process, port = start_http_upstream()
    yield port
    process.stop()


def echo_upstream(port: int) -> dict[str, Any]:
    return {"id": "echo", "nodes": {f"127.0.0.1:{port}": 1}, "timeout": {"connect": 1, "read": 5}}


def standalone(port: int, *uris: str) -> dict[str, Any]:
    return {
        "admin": admin_section(),
        "store": {"type": "standalone", "poll_interval": 0.1},
        "upstreams": [echo_upstream(port)],
        "routes": [{"id": f"r{i}", "uri": uri, "upstream_id": "echo"} for i, uri in enumerate(uris)],
    }


def wait_until(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


async def test_reload_under_load_fails_no_request_and_new_routes_appear(tmp_path: Path, upstream_port: int) -> None:
    config = write_config(
        tmp_path / "gateway.yaml", {"admin": admin_section(), "store": {"type": "file", "path": "data.yaml"}}
    )
    gateway = start_admin_gateway(config)
    try:
        assert gateway.admin("PUT", "/upstreams/echo", echo_upstream(upstream_port))[0] == 201
        assert gateway.admin("PUT", "/routes/base", {"uri": "/echo/*", "upstream_id": "echo"})[0] == 201
        assert gateway.admin("PUT", "/routes/slow", {"uri": "/slow", "upstream_id": "echo"})[0] == 201
        await _reload_under_load(gateway)
    finally:
        gateway.process.stop()


async def _reload_under_load(gateway: AdminGateway) -> None:
    url, admin = gateway.gateway.url, f"http://{gateway.admin_address}/protogate/admin"
    outcomes: Counter[str] = Counter()
    stop = asyncio.Event()
    async with aiohttp.ClientSession(headers={"X-API-KEY": KEY}) as session:

        async def load(slow: bool) -> None:
            path = "/echo/load" if not slow else "/slow?ms=300"  # slow ones are in flight across reloads
            while not stop.is_set():
                try:
                    async with session.get(url + path) as response:
                        await response.read()
                        outcomes[str(response.status)] += 1
                except aiohttp.ClientError as exc:
                    outcomes[type(exc).__name__] += 1

        workers = [asyncio.create_task(load(slow=i < 2)) for i in range(8)]
        await asyncio.sleep(0.2)
        for i in range(25):
            async with session.get(f"{url}/new{i}") as response:
                assert response.status == 404
            route = {"uri": f"/new{i}", "upstream_id": "echo", "plugins": {"proxy-rewrite": {"uri": "/echo/new"}}}
            async with session.put(f"{admin}/routes/new{i}", json=route) as response:
                assert response.status == 201, await response.text()
            async with session.get(f"{url}/new{i}") as response:  # the write answers once the route serves
                assert response.status == 200
            await asyncio.sleep(0.03)
        stop.set()
        await asyncio.gather(*workers)
        async with session.get(f"{admin}/status") as response:
            status = await response.json()
    assert set(outcomes) == {"200"}, outcomes
    assert outcomes["200"] > 100
    assert status["reloads"] >= 25 and status["config_ok"]


async def test_requests_in_flight_finish_on_the_old_config(tmp_path: Path, upstream_port: int) -> None:
    config = write_config(
        tmp_path / "gateway.yaml", {"admin": admin_section(), "store": {"type": "file", "path": "data.yaml"}}
    )
    gateway = start_admin_gateway(config)
    try:
        gateway.admin("PUT", "/upstreams/echo", echo_upstream(upstream_port))
        gateway.admin("PUT", "/routes/slow", {"uri": "/slow", "upstream_id": "echo"})
        async with aiohttp.ClientSession() as session:
            slow = [asyncio.create_task(session.get(f"{gateway.gateway.url}/slow?ms=800")) for _ in range(5)]
            await asyncio.sleep(0.3)
            # remove the route, and the upstream with it, while those requests wait on the upstream
            assert gateway.admin("DELETE", "/routes/slow")[0] == 200
            assert gateway.admin("DELETE", "/upstreams/echo")[0] == 200
            responses = await asyncio.gather(*slow)
            assert [r.status for r in responses] == [200] * 5
            assert [await r.text() for r in responses] == ["slow done"] * 5
            async with session.get(f"{gateway.gateway.url}/slow") as after:
                assert after.status == 404
    finally:
        gateway.process.stop()


def test_standalone_file_edit_is_picked_up(tmp_path: Path, upstream_port: int) -> None:
    path = write_config(tmp_path / "gateway.yaml", standalone(upstream_port, "/echo/one"))
    gateway = start_admin_gateway(path)
    try:
        assert gateway.get("/echo/one")[0] == 200
        assert gateway.get("/echo/two")[0] == 404
        write_config(path, standalone(upstream_port, "/echo/one", "/echo/two"))
        wait_until(lambda: gateway.get("/echo/two")[0] == 200)
        write_config(path, standalone(upstream_port, "/echo/two"))
        wait_until(lambda: gateway.get("/echo/one")[0] == 404)
    finally:
        gateway.process.stop()


def test_torn_or_invalid_file_keeps_the_last_good_config(tmp_path: Path, upstream_port: int) -> None:
    path = write_config(tmp_path / "gateway.yaml", standalone(upstream_port, "/echo/one"))
    good = path.read_text()
    gateway = start_admin_gateway(path)
    try:
        # half-written: cut in the middle of the document
        path.write_text(good[: len(good) // 2] + "\n  - {unclosed: [")
        wait_until(lambda: gateway.admin("GET", "/status")[2]["store_error"] is not None)
        status = gateway.admin("GET", "/status")[2]
        assert status["config_ok"] is False and "not valid YAML" in status["store_error"]
        assert gateway.get("/echo/one")[0] == 200

        # parses, but refers to an upstream that does not exist: refused whole, with the path
        broken = standalone(upstream_port, "/echo/one", "/echo/two")
        broken["routes"][1]["upstream_id"] = "missing"
        write_config(path, broken)
        wait_until(lambda: gateway.admin("GET", "/status")[2]["last_error"] is not None)
        status = gateway.admin("GET", "/status")[2]
        assert status["last_error"]["errors"] == [
            {"path": "routes[1].upstream_id", "message": "no upstream has id 'missing'"}
        ]
        assert gateway.get("/echo/one")[0] == 200 and gateway.get("/echo/two")[0] == 404

        path.write_text(good)  # fixed: serves again, and the status clears
        write_config(path, standalone(upstream_port, "/echo/one", "/echo/three"))
        wait_until(lambda: gateway.get("/echo/three")[0] == 200)
        assert gateway.admin("GET", "/status")[2]["config_ok"] is True
    finally:
        gateway.process.stop()


def test_data_file_is_replaced_whole_and_reread_on_restart(tmp_path: Path, upstream_port: int) -> None:
    config = write_config(
        tmp_path / "gateway.yaml", {"admin": admin_section(), "store": {"type": "file", "path": "data.yaml"}}
    )
    gateway = start_admin_gateway(config)
    try:
        gateway.admin("PUT", "/upstreams/echo", echo_upstream(upstream_port))
        for i in range(10):
            gateway.admin("PUT", f"/routes/r{i}", {"uri": f"/echo/{i}", "upstream_id": "echo"})
    finally:
        gateway.process.stop()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.yaml", "gateway.yaml"]  # no temp file left
    assert (tmp_path / "data.yaml").stat().st_mode & 0o077 == 0  # it holds consumer credentials
    again = start_admin_gateway(config)
    try:
        assert again.get("/echo/9")[0] == 200
        _, headers, body = again.admin("GET", "/routes/r9")
        assert body["modifiedIndex"] == 11 and headers["etag"] == '"11"'
    finally:
        again.process.stop()
