"""A real etcd (Debian's etcd-server, 3.4) on free loopback ports, in a temp data dir; stoppable mid-test."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

from processes import Process, start
from servers.local_servers import free_port, poll


class EtcdServer:
    """A one-member etcd cluster; stop() and start() again keep the port and the data (and so the revisions)."""

    def __init__(self, data_dir: Path) -> None:
        binary = shutil.which("etcd")
        if binary is None:
            raise RuntimeError("etcd is not installed: run `make services` (apt-get install etcd-server)")
        self.binary = binary
        self.data_dir = data_dir
        self.port = free_port()
        self.peer_port = free_port()
        self.process: Process | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.popen.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        client, peer = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{self.peer_port}"
        self.process = start(
            [
                self.binary,
                "--name=test",
                f"--data-dir={self.data_dir}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=test={peer}",
                # A lone member elects itself after one election timeout: keep it short so start-up is quick.
                "--heartbeat-interval=10",
                "--election-timeout=100",
                "--log-level=warn",
                "--logger=zap",
            ],
        )
        poll(self._healthy, timeout, "etcd", self._output)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def _healthy(self) -> bool:
        if not self.running:
            raise RuntimeError(f"etcd exited; output:\n{self._output()}")
        with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=1) as response:
            return json.loads(response.read()).get("health") == "true"

    def _output(self) -> str:
        return "".join(self.process.output) if self.process is not None else ""
