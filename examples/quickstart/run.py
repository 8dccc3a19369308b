"""`make run`: start the bookstore backend and the gateway in the foreground, print curl commands."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GATEWAY = "http://127.0.0.1:9080"
GATEWAY_PORT = 9080
BACKEND_PORT = 50051
READY_WITHIN = 20.0

CURLS = (
    f"curl -s {GATEWAY}/v1/shelves",
    f"curl -s '{GATEWAY}/v1/shelves/1/books?page_size=2'",
    f"curl -s -X POST {GATEWAY}/v1/shelves -H 'Content-Type: application/json' -d '{{\"theme\": \"Travel\"}}'",
    f'curl -s -X POST {GATEWAY}/v1/shelves/1/books -d \'{{"title": "Dune", "author": "Frank Herbert"}}\'',
    f"curl -s -X PATCH '{GATEWAY}/v1/shelves/1/books/1?update_mask=title' -d '{{\"title\": \"Renamed\"}}'",
    f"curl -s -i {GATEWAY}/v1/shelves/999",
    f"curl -s -X POST {GATEWAY}/bookstore.v1.Bookstore/GetStats -d '{{}}'",
    f"curl -sN '{GATEWAY}/v1/shelves/1/books:stream?limit=3&interval_ms=500'",
    f'curl -sN -X POST {GATEWAY}/v1/chat -d \'{{"text": "hi"}}\'',
)


def busy_ports(ports: dict[int, str]) -> list[str]:
    """One line per port of 127.0.0.1 that something already listens on, naming who needed it.

    Checked first because grpc servers bind with SO_REUSEPORT: a second bookstore backend would start
    beside a forgotten one and share its connections, each with its own shelves.
    """
    busy = []
    for port, needed_by in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "in use"
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as exc:
                busy.append(f"127.0.0.1:{port} ({needed_by}): {os.strerror(exc.errno or 0).lower()}")
    return busy


def _wait_for_line(process: subprocess.Popen[str], marker: str, name: str) -> str:
    """Read the child's stdout until it says it is listening; it prints that line once ready."""
    deadline = time.monotonic() + READY_WITHIN
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            if process.poll() is not None:
                raise SystemExit(f"{name} exited with status {process.returncode} before it was ready")
            continue
        sys.stdout.write(line)
        if marker in line:
            return line
    raise SystemExit(f"{name} was not ready within {READY_WITHIN:.0f}s")


def main() -> int:
    # A SIGTERM (from a supervisor, or `kill`) stops the children too, as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    busy = busy_ports({BACKEND_PORT: "the bookstore backend", GATEWAY_PORT: "the gateway"})
    if busy:
        lines = "\n  ".join(busy)
        print(
            f"cannot start the quickstart:\n  {lines}\nIs `make run` running already? Stop it first.", file=sys.stderr
        )
        return 1
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    bin_dir = Path(sys.executable).parent
    backend = subprocess.Popen(
        [sys.executable, str(HERE / "server.py"), "--port", str(BACKEND_PORT)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    children = [backend]
    try:
        _wait_for_line(backend, "listening", "the bookstore backend")
        gateway = subprocess.Popen(
            [str(bin_dir / "protogate"), "run", "-c", str(HERE / "config.yaml")],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        children.append(gateway)
        _wait_for_line(gateway, "listening", "the gateway")
        print("\nprotogate is serving the bookstore. Try:\n")
        for command in CURLS:
            print(command)
        print("\nPress Ctrl-C to stop.", flush=True)
        # Serve until either child exits (or Ctrl-C); the gateway logs to our stderr meanwhile.
        pid, status = os.wait()
        name = "the gateway" if pid == gateway.pid else "the bookstore backend"
        print(f"{name} exited (status {os.waitstatus_to_exitcode(status)}); stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()


if __name__ == "__main__":
    sys.exit(main())
