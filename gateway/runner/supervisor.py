"""RunnerSupervisor: start one plugin runner, wait for its health, restart it with backoff, stop it cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from plugin_runner.client import RunnerClient
from plugin_runner.proto import runner_pb2 as pb

if TYPE_CHECKING:
    from gateway.config.models import PluginRunner

log = logging.getLogger("protogate.runner")

ADDRESS_ENV = "PROTOGATE_RUNNER_ADDRESS"
CONF_EXPIRY_ENV = "PROTOGATE_CONF_EXPIRY"
PARENT_PID_ENV = "PROTOGATE_PARENT_PID"
FIRST_RESTART_DELAY = 0.1  # seconds; doubles per failed start, up to the runner's max_restart_delay
STABLE_AFTER = 10.0  # a runner up this long had a good run: the next restart starts the backoff over
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL


class RunnerStartError(RuntimeError):
    """A runner did not become ready (exited, or not SERVING within start_timeout)."""


class RunnerSupervisor:
    """One configured runner. `client` talks to the current process; `ready` is False while it is down.

    Each process start gets a fresh RunnerClient: its channel has no reconnect backoff left over from the
    dead process, and its token cache starts empty (tokens die with the process anyway; they are prepared
    again on first use). A dev runner (started by hand) keeps one client for its whole life, and the client's
    re-prepare on TOKEN_UNKNOWN covers the developer restarting it.
    """

    def __init__(self, config: PluginRunner, address: str, *, base_dir: Path = Path()) -> None:
        self.config = config
        self.name = config.name
        self.address = address
        self.base_dir = base_dir
        self.client: RunnerClient | None = None
        self.described: pb.DescribeResponse | None = None
        self.pid: int | None = None
        self.restarts = 0
        self._process: asyncio.subprocess.Process | None = None
        self._output: asyncio.Task[None] | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._stopping = False
        self._ready = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def target(self) -> str:
        """The gRPC target of the runner (`unix:/abs/path` or `host:port`)."""
        return self.address

    async def start(self) -> None:
        """Start (or, in dev mode, reach) the runner and wait until it is SERVING; RunnerStartError if not."""
        if self.config.dev:
            client = self._new_client()
            try:
                self.described = await client.wait_ready(self.config.start_timeout)
            except (TimeoutError, grpc.aio.AioRpcError) as exc:
                await client.close()
                raise RunnerStartError(
                    f"dev plugin runner {self.name!r} not reachable at {self.address}: {exc}"
                ) from None
            self.client = client
            self._ready.set()
            log.info("plugin runner %r (dev mode) ready on %s: %s", self.name, self.address, self._plugin_names())
            return
        await self._spawn_until_ready()
        self._monitor = asyncio.create_task(self._watch(), name=f"runner-{self.name}-monitor")

    async def wait_ready(self, timeout: float) -> bool:
        """True once the runner is ready (immediately if it is), False after `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)
        return self.ready

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace; never restarted after this."""
        self._stopping = True
        self._ready.clear()
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        await self._terminate()
        if self.client is not None:
            await self.client.close()
            self.client = None

    # -- processes ----------------------------------------------------------------------------------------------

    def _new_client(self) -> RunnerClient:
        credentials, options = None, ()
        if self.config.tls is not None:
            from gateway.tls import client_tls_of

            tls = client_tls_of(self.config.tls, self.base_dir)  # checked at load
            credentials, options = tls.grpc_credentials(), tls.grpc_options()
        return RunnerClient(
            self.address,
            timeout=1.0,
            prepare_timeout=max(1.0, self.config.start_timeout),
            credentials=credentials,
            channel_options=options,
        )

    def _plugin_names(self) -> str:
        return ", ".join(p.name for p in self.described.plugins) if self.described else "-"

    async def _spawn_until_ready(self) -> None:
        process = await self._spawn()
        client = self._new_client()
        waiting = asyncio.create_task(client.wait_ready(self.config.start_timeout))
        exited = asyncio.create_task(process.wait())
        try:
            await asyncio.wait({waiting, exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
        if not waiting.done():
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await waiting
            await client.close()
            await self._terminate()
            raise RunnerStartError(f"plugin runner {self.name!r} exited with code {process.returncode} before ready")
        try:
            described = waiting.result()
        except (TimeoutError, grpc.aio.AioRpcError) as exc:
            await client.close()
            await self._terminate()
            raise RunnerStartError(f"plugin runner {self.name!r} not ready: {exc}") from None
        old, self.client = self.client, client
        self.described = described
        self._ready.set()
        if old is not None:
            await old.close()
        log.info(
            "plugin runner %r ready (pid %d, epoch %s) on %s: %s",
            self.name,
            process.pid,
            described.epoch,
            self.address,
            self._plugin_names(),
        )

    async def _spawn(self) -> asyncio.subprocess.Process:
        assert self.config.cmd is not None
        env = {
            **os.environ,
            **self.config.env,
            ADDRESS_ENV: self.address,
            CONF_EXPIRY_ENV: _seconds(self.config.conf_expiry),
            PARENT_PID_ENV: str(os.getpid()),
        }
        cwd = self.base_dir / self.config.cwd if self.config.cwd is not None else None
        try:
            # A session of its own: a Ctrl-C meant for the gateway does not kill the runner behind the
            # supervisor's back (the gateway stops it); the runner still exits when the gateway dies.
            process = await asyncio.create_subprocess_exec(
                *self.config.cmd,
                env=env,
                cwd=cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise RunnerStartError(f"cannot start plugin runner {self.name!r} ({self.config.cmd[0]}): {exc}") from None
        self._process = process
        self.pid = process.pid
        log.info("plugin runner %r started (pid %d) on %s", self.name, process.pid, self.address)
        self._output = asyncio.create_task(self._relay(process), name=f"runner-{self.name}-output")
        return process

    async def _relay(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        prefix = f"runner {self.name}[{process.pid}]"
        while line := await process.stdout.readline():
            log.info("%s: %s", prefix, line.decode("utf-8", "replace").rstrip())

    async def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE)
            except TimeoutError:
                log.warning("plugin runner %r (pid %d) ignored SIGTERM; killing it", self.name, process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
            log.info("plugin runner %r (pid %d) stopped (code %s)", self.name, process.pid, process.returncode)
        if self._output is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._output, 1.0)
            self._output = None

    async def _watch(self) -> None:
        """Restart the runner whenever it exits, with exponential backoff between failed starts."""
        failures = 0
        while not self._stopping:
            process = self._process
            assert process is not None
            started = time.monotonic()
            code = await process.wait()
            self._ready.clear()
            if self._stopping:
                return
            if time.monotonic() - started >= STABLE_AFTER:
                failures = 0
            delay = min(self.config.max_restart_delay, FIRST_RESTART_DELAY * 2**failures)
            log.warning(
                "plugin runner %r (pid %d) exited with code %s; restarting in %.1fs",
                self.name,
                process.pid,
                code,
                delay,
            )
            await self._terminate()  # reaps it and drains its output
            while not self._stopping:
                await asyncio.sleep(delay)
                try:
                    await self._spawn_until_ready()
                except RunnerStartError as exc:
                    failures += 1
                    delay = min(self.config.max_restart_delay, FIRST_RESTART_DELAY * 2**failures)
                    log.error("%s; retrying in %.1fs", exc, delay)
                    continue
                self.restarts += 1
                failures += 1
                break


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
