"""Start `protogate run` with the native gRPC listener beside the HTTP edge, both on OS-picked ports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from processes import BIN, Process, start


def start_grpc_gateway(config: dict[str, Any], path: Path) -> tuple[Process, str, str]:
    """Write `config` (plus gateway.grpc_listen) to `path` and serve it: (process, http address, grpc address)."""
    document = {**config, "gateway": {**config.get("gateway", {}), "grpc_listen": "127.0.0.1:0"}}
    path.write_text(yaml.safe_dump(document))
    process = start([str(BIN / "protogate"), "run", "-c", str(path), "--listen", "127.0.0.1:0"])
    try:
        found: dict[str, str] = {}
        while len(found) < 2:  # either order
            line = process.wait_for("listening on ")
            if "grpc listening on " in line:
                found["grpc"] = line.rsplit("listening on ", 1)[1].strip()
            elif "listening on http://" in line:
                found["http"] = line.rsplit("http://", 1)[1].strip()
    except BaseException:
        process.stop()
        raise
    return process, found["http"], found["grpc"]
