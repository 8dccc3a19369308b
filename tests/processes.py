"""Start real processes for integration tests and wait, with a deadline, for their ready line."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@dataclass
class Process:
    """A child process whose stdout is drained by a thread, so it can never block on a full pipe."""

    popen: subprocess.Popen[str]
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    output: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None  # drains stdout, and closes it at EOF

    def wait_for(self, marker: str, timeout: float = 20.0) -> str:
        """The first stdout line containing `marker`; fails with everything printed so far."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {marker!r} within {timeout}s; output so far:\n{''.join(self.output)}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                code = self.popen.wait()
                raise RuntimeError(f"process exited ({code}) before {marker!r}; output:\n{''.join(self.output)}")
            if marker in line:
                return line

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        # The reader closes the pipe when it has read it to the end; closing it here, under the reader's feet,
        # would raise in that thread. A grandchild that still holds the pipe keeps the reader waiting for it.
        if self.reader is not None:
            self.reader.join(timeout=5)


def start(args: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> Process:
    popen = subprocess.Popen(
        list(args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    process = Process(popen)

    def drain() -> None:
        assert popen.stdout is not None
        with popen.stdout:
            for line in popen.stdout:
                process.output.append(line)
                process.lines.put(line)
        process.lines.put(None)

    process.reader = threading.Thread(target=drain, daemon=True)
    process.reader.start()
    return process
