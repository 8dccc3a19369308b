"""A real redis-server (Debian's package) on a free loopback port, in a temp dir; stoppable mid-test."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from processes import Process, start
from servers.local_servers import free_port, poll


def redis_command(port: int, *args: str, timeout: float = 1.0) -> bytes:
    """Send one command in RESP and return the raw first reply (enough for PING, CLUSTER, FLUSHALL)."""
    payload = f"*{len(args)}\r\n".encode() + b"".join(f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        reply = b""
        while not reply.endswith(b"\r\n") or (reply.startswith(b"$") and reply.count(b"\r\n") < 2):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        return reply


class RedisServer:
    """redis-server without persistence; `cluster=True` makes it a one-node cluster owning every slot."""

    def __init__(self, data_dir: Path, *, cluster: bool = False, password: str | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run `make services` (apt-get install redis-server)")
        self.binary = binary
        self.data_dir = data_dir
        self.cluster = cluster
        self.password = password
        self.port = free_port()
        self.bus_port = free_port()  # redis would take port + 10000, which may be out of range
        self.process: Process | None = None
        data_dir.mkdir(parents=True, exist_ok=True)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.popen.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir)]
        args += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"]
        if self.password is not None:
            args += ["--requirepass", self.password]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", str(self.data_dir / "nodes.conf")]
            args += ["--cluster-port", str(self.bus_port)]
        self.process = start(args)
        # Without the password PING is refused with NOAUTH: an answer all the same.
        answered = lambda: redis_command(self.port, "PING").startswith((b"+PONG", b"-NOAUTH"))  # noqa: E731
        poll(answered, timeout, "redis-server", self._output)
        if self.cluster:
            reply = redis_command(self.port, "CLUSTER", "ADDSLOTSRANGE", "0", "16383")
            # A restart reads nodes.conf back, slots included.
            if not reply.startswith(b"+OK") and b"already busy" not in reply:
                raise RuntimeError(f"CLUSTER ADDSLOTSRANGE: {reply!r}")
            # A master that just started refuses writes for about 2 s (redis's CLUSTER_WRITABLE_DELAY).
            cluster_ok = lambda: b"cluster_state:ok" in redis_command(self.port, "CLUSTER", "INFO")  # noqa: E731
            poll(cluster_ok, timeout, "redis cluster", self._output)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def _output(self) -> str:
        return "".join(self.process.output) if self.process is not None else ""
