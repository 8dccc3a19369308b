"""Access log: the entry's fields, and a writer that batches off the request path and drops when full."""

from __future__ import annotations

import json
from pathlib import Path

from telemetry_support import answer, make_ctx

from gateway.telemetry.access_log import AccessLogWriter, access_entry


def test_an_entry_without_telemetry_still_has_every_field() -> None:
    ctx = make_ctx("/v1/x?a=1", headers=[("User-Agent", "t/1"), ("X-Request-Id", "rid")])
    entry = access_entry(ctx.request, ctx, answer(201), None)
    assert (entry["route_id"], entry["method"], entry["path"], entry["status"]) == ("r", "GET", "/v1/x?a=1", 201)
    assert (entry["request_id"], entry["user_agent"], entry["trace_id"], entry["upstream_addr"]) == (
        "rid",
        "t/1",
        "",
        "",
    )
    assert entry["upstream_latency_ms"] is None and entry["latency_ms"] >= 0
    assert entry["time"].endswith("Z")
    json.dumps(entry)


async def test_the_writer_writes_json_lines_and_counts_what_it_drops(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    drops: list[int] = []
    writer = AccessLogWriter(str(path), max_pending=2, flush_interval=60, on_drop=drops.append)
    writer.start()
    for n in range(3):
        writer.write({"n": n})
    await writer.close()
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"n": 0}, {"n": 1}]
    assert writer.dropped == 1 and drops == [1]
