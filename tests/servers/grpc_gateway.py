"""Start `protogate run` with the native gRPC listener beside the HTTP edge, both on OS-picked ports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway_harness import start_protogate
from processes import Process


def start_grpc_gateway(config: dict[str, Any], path: Path) -> tuple[Process, str, str]:
    """Write `config` (plus gateway.grpc_listen) to `path` and serve it: (process, http address, grpc address)."""
    document = {**config, "gateway": {**config.get("gateway", {}), "grpc_listen": "127.0.0.1:0"}}
    process, (grpc_line, http_line) = start_protogate(document, path, "grpc listening on ", "listening on http://")
    return process, http_line.rsplit("http://", 1)[1], grpc_line.rsplit("listening on ", 1)[1]
