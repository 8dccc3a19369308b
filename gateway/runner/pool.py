"""RunnerPool: the configured plugin runners by name, their supervisors, and the call counter hook."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Hashable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.runner.supervisor import RunnerSupervisor

if TYPE_CHECKING:
    from gateway.config.models import PluginRunner
    from gateway.telemetry.metrics import Metrics

log = logging.getLogger("protogate.runner")

LOG_EVERY = 5.0  # seconds: at most one failure line per (runner, phase, kind) in this window


class RunnerPool:
    """Every runner of one gateway. Runners with no address get a socket in a private 0700 directory."""

    def __init__(
        self, runners: Iterable[PluginRunner], *, base_dir: Path = Path(), metrics: Metrics | None = None
    ) -> None:
        self.metrics = metrics
        self.socket_dir: Path | None = None
        self.supervisors: dict[str, RunnerSupervisor] = {}
        self._logged: dict[tuple[str, str, str], tuple[float, int]] = {}
        # (runner, key) of every chain prepared for requests: released when the app (its runtime) stops.
        self.prepared_keys: set[tuple[str, Hashable]] = set()
        for runner in runners:
            address = runner.address
            if address is None:
                if self.socket_dir is None:
                    # mkdtemp makes it 0700: only the gateway's user can even reach the sockets inside.
                    self.socket_dir = Path(tempfile.mkdtemp(prefix="protogate-runners-"))
                address = f"unix:{self.socket_dir / (runner.name + '.sock')}"
            self.supervisors[runner.name] = RunnerSupervisor(runner, address, base_dir=base_dir)

    def __bool__(self) -> bool:
        return bool(self.supervisors)

    def get(self, name: str | None) -> RunnerSupervisor | None:
        """The runner called `name`; None means the only one (the loader made sure there is exactly one)."""
        if name is None:
            return next(iter(self.supervisors.values())) if len(self.supervisors) == 1 else None
        return self.supervisors.get(name)

    async def start(self) -> None:
        """Start every runner and wait until each is SERVING; on any failure the started ones are stopped."""
        try:
            for supervisor in self.supervisors.values():
                await supervisor.start()
        except BaseException:
            await self.close()
            raise

    async def release(self, keys: Iterable[tuple[str, Hashable]]) -> None:
        """ReleaseConf for prepared chains that are no longer used: (runner name, key) pairs."""
        for name, key in keys:
            supervisor = self.supervisors.get(name)
            if supervisor is not None and supervisor.client is not None and supervisor.ready:
                await supervisor.client.release(key)

    async def release_all(self) -> None:
        await self.release(sorted(self.prepared_keys, key=repr))
        self.prepared_keys.clear()

    async def close(self) -> None:
        for supervisor in self.supervisors.values():
            await supervisor.stop()
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    # -- observability ------------------------------------------------------------------------------------------

    def count_call(self, runner: str, phase: str, failure: str | None = None) -> None:
        """The one hook for runner-call metrics: every call, and why it failed (timeout, unavailable, ...)."""
        if self.metrics is not None:
            self.metrics.count_plugin_runner_call(phase, failure)

    def log_failure(self, runner: str, phase: str, kind: str, message: str, degraded: bool) -> None:
        """A failed call, logged at most once per LOG_EVERY seconds per (runner, phase, kind)."""
        key = (runner, phase, kind)
        now = time.monotonic()
        last, suppressed = self._logged.get(key, (0.0, 0))
        if now - last < LOG_EVERY:
            self._logged[key] = (last, suppressed + 1)
            return
        self._logged[key] = (now, 0)
        outcome = "request passed on untouched (allow_degradation)" if degraded else "request refused"
        more = f" ({suppressed} more like it since the last report)" if suppressed else ""
        log.warning("ext-plugin %s via runner %r: %s: %s; %s%s", phase, runner, kind, message, outcome, more)


RUNNER_POOL = web.AppKey("runner_pool", RunnerPool)
