"""What the real Redis and etcd test servers share: a free loopback port and polling until ready."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll(ready: Callable[[], bool], timeout: float, what: str, describe: Callable[[], str]) -> None:
    """Call `ready` every 10 ms until it returns True; TimeoutError with `describe()` past the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready within {timeout}s; output:\n{describe()}")
        time.sleep(0.01)
