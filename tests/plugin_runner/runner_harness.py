"""Start real plugin runners (Python and Node.js) on Unix sockets for tests; fixtures live in conftest.py."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from processes import REPO, Process, start

PLUGINS_DIR = REPO / "examples" / "plugins"
HMAC_AUTH = PLUGINS_DIR / "python" / "hmac_auth.py"
REWRITE = PLUGINS_DIR / "python" / "rewrite.py"
SAMPLES = Path(__file__).parent / "sample_plugins.py"
NODE_RUNNER_DIR = PLUGINS_DIR / "node"
STARTUP_TIMEOUT = 20.0


@dataclass
class Runner:
    process: Process
    socket: Path

    @property
    def target(self) -> str:
        return f"unix:{self.socket}"


RunnerFactory = Callable[..., Runner]


def python_runner_args(*specs: Path | str) -> list[str]:
    args = [sys.executable, "-m", "plugin_runner", "--log-level", "WARNING"]
    for spec in specs or (HMAC_AUTH, REWRITE, SAMPLES):
        args += ["--plugins", str(spec)]
    return args


def start_runner(args: list[str], socket: Path, env: dict[str, str] | None = None) -> Runner:
    # The address comes from the environment, as when the gateway starts a runner.
    process = start(args, cwd=REPO, env={"PROTOGATE_RUNNER_ADDRESS": f"unix:{socket}", **(env or {})})
    try:
        process.wait_for("plugin runner listening on", timeout=STARTUP_TIMEOUT)
    except BaseException:
        process.stop()
        raise
    return Runner(process, socket)


def assert_exits_with_parent(args: list[str], socket: Path) -> None:
    """Start the runner from an intermediate process, kill that process, and expect the runner to stop.

    The runner inherits the intermediate's stdout pipe, so its lines still reach us. If it does not stop, it is
    killed by the pid the intermediate printed (an orphan would otherwise hold the pipe open forever).
    """
    spawn = (
        "import subprocess, sys, time; print('child', subprocess.Popen(sys.argv[1:]).pid, flush=True); time.sleep(60)"
    )
    parent = start([sys.executable, "-c", spawn, *args], cwd=REPO, env={"PROTOGATE_RUNNER_ADDRESS": f"unix:{socket}"})
    child_pid = int(parent.wait_for("child ").split()[1])
    try:
        parent.wait_for("plugin runner listening on", timeout=STARTUP_TIMEOUT)
        parent.popen.kill()
        parent.popen.wait()
        assert "parent process" in parent.wait_for("plugin runner stopping", timeout=10)
        parent.wait_for("plugin runner stopped", timeout=10)
        assert not socket.exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child_pid, signal.SIGKILL)
        parent.stop()
