"""RunnerSupervisor and RunnerPool with real processes: start, env, restart with backoff, clean stop, failures."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import sys
import time
from pathlib import Path

import pytest
from processes import REPO

from gateway.config.models import PluginRunner
from gateway.runner.pool import RunnerPool
from gateway.runner.supervisor import RunnerStartError

PYTHON_RUNNER = [
    sys.executable,
    "-m",
    "plugin_runner",
    "--log-level",
    "WARNING",
    "--plugins",
    str(REPO / "examples/plugins/python/rewrite.py"),
]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_starts_with_env_restarts_after_a_crash_and_stops_cleanly(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "protogate.runner")
    pool = RunnerPool([PluginRunner(name="py", cmd=PYTHON_RUNNER, conf_expiry=30, env={"EXTRA": "1"})])
    supervisor = pool.supervisors["py"]
    try:
        await pool.start()
        assert pool.socket_dir is not None and stat.S_IMODE(pool.socket_dir.stat().st_mode) == 0o700
        socket = Path(supervisor.address.removeprefix("unix:"))
        assert stat.S_IMODE(socket.stat().st_mode) == 0o600
        assert supervisor.ready and [p.name for p in supervisor.described.plugins] == ["path-rewrite"]  # type: ignore[union-attr]
        environ = Path(f"/proc/{supervisor.pid}/environ").read_bytes().split(b"\0")
        assert f"PROTOGATE_PARENT_PID={os.getpid()}".encode() in environ
        assert b"PROTOGATE_CONF_EXPIRY=30" in environ and b"EXTRA=1" in environ
        assert f"PROTOGATE_RUNNER_ADDRESS={supervisor.address}".encode() in environ
        first = supervisor.pid
        assert first is not None
        os.kill(first, 9)
        assert await gone(first)
        deadline = time.monotonic() + 20
        while not (supervisor.ready and supervisor.pid != first):
            assert time.monotonic() < deadline, "not restarted"
            await asyncio.sleep(0.02)
        assert supervisor.restarts == 1
        assert any("exited with code -9; restarting in 0.1s" in r.getMessage() for r in caplog.records)
        second = supervisor.pid
        assert second is not None
    finally:
        await pool.close()
    assert not alive(second)  # SIGTERM, reaped
    assert not pool.socket_dir.exists()


async def test_a_runner_that_exits_at_once_fails_the_start_fast() -> None:
    pool = RunnerPool([PluginRunner(name="bad", cmd=[sys.executable, "-c", "raise SystemExit(3)"], start_timeout=30)])
    started = time.monotonic()
    with pytest.raises(RunnerStartError, match="exited with code 3 before ready"):
        await pool.start()
    assert time.monotonic() - started < 10


async def test_a_runner_that_never_serves_is_killed_after_start_timeout(tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    script = f"import os, time; open({str(marker)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    pool = RunnerPool([PluginRunner(name="mute", cmd=[sys.executable, "-c", script], start_timeout=0.5)])
    with pytest.raises(RunnerStartError, match="not ready"):
        await pool.start()
    assert await gone(int(marker.read_text()))


async def test_a_missing_command_is_a_start_error() -> None:
    pool = RunnerPool([PluginRunner(name="x", cmd=["/nonexistent/runner"])])
    with pytest.raises(RunnerStartError, match="cannot start"):
        await pool.start()


async def test_dev_runner_not_there_is_a_start_error(tmp_path: Path) -> None:
    pool = RunnerPool([PluginRunner(name="dev", dev=True, address=f"unix:{tmp_path}/none.sock", start_timeout=0.3)])
    with pytest.raises(RunnerStartError, match="not reachable"):
        await pool.start()
    assert pool.socket_dir is None  # a dev runner's address is its own
