"""ConfigManager: a refused document changes nothing; a replaced runtime closes after its last request."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.config.loader import ConfigError, load_document
from gateway.reload import ConfigManager
from gateway.runtime import Runtime

UPSTREAM = {"id": "u", "nodes": {"127.0.0.1:9": 1}}


def document(*uris: str) -> dict[str, object]:
    return {
        "upstreams": [UPSTREAM],
        "routes": [{"id": f"r{i}", "uri": u, "upstream_id": "u"} for i, u in enumerate(uris)],
    }


async def test_apply_swaps_and_a_refused_document_keeps_the_old(tmp_path: Path) -> None:
    loaded = load_document(document("/a"), base_dir=tmp_path)
    manager = ConfigManager(loaded, Runtime(loaded), settings={})
    first = manager.runtime
    await manager.apply(document("/a", "/b"), revision=2)
    assert manager.runtime is not first and manager.revision == 2
    assert manager.runtime.table.match("", "GET", "/b") is not None
    good = manager.runtime
    with pytest.raises(ConfigError) as refused:
        await manager.apply({"routes": [{"id": "x", "uri": "/x", "upstream_id": "missing"}]}, revision=3)
    assert [i.path for i in refused.value.issues] == ["routes[0].upstream_id"]
    assert manager.runtime is good and manager.revision == 2
    assert manager.last_error is refused.value
    await manager.apply(document("/c"))
    assert manager.last_error is None
    await manager.close()


async def test_a_replaced_runtime_closes_after_its_last_request(tmp_path: Path) -> None:
    loaded = load_document(document("/a"), base_dir=tmp_path)
    manager = ConfigManager(loaded, Runtime(loaded), settings={})
    old = manager.runtime
    closed = asyncio.Event()
    real_close = old.close

    async def close() -> None:
        closed.set()
        await real_close()

    old.close = close  # type: ignore[method-assign]
    with old.in_use():
        await manager.apply(document("/b"))
        await asyncio.sleep(0.05)
        assert not closed.is_set() and manager.draining == 1  # a request still runs on it
    await asyncio.wait_for(closed.wait(), 1)
    await asyncio.sleep(0)
    assert manager.draining == 0
    await manager.close()


async def test_plugin_runners_cannot_change_without_a_restart(tmp_path: Path) -> None:
    loaded = load_document({}, base_dir=tmp_path)
    manager = ConfigManager(loaded, Runtime(loaded), settings={})
    with pytest.raises(ConfigError, match="restart"):
        await manager.apply({"plugin_runners": [{"name": "py", "cmd": ["true"]}]})
    await manager.close()
