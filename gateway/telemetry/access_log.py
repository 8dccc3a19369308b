"""Access log: one JSON object per request, written in batches by a background task (stdout or a file)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from gateway.context import RequestContext
    from gateway.responses import ProxyResponse
    from gateway.telemetry.request import RequestRecord

log = logging.getLogger("protogate.telemetry")


def ingress_bytes(request: web.Request) -> int:
    """Bytes the client sent: request line, header block and body (as nginx's $request_length)."""
    head = len(request.method) + len(request.raw_path) + 12
    head += sum(len(name) + len(value) + 4 for name, value in request.raw_headers)
    return head + 2 + (request.content_length or 0)


def egress_bytes(request: web.Request) -> int:
    """Bytes written to the client for this request, head included (as nginx's $bytes_sent)."""
    size = getattr(request.writer, "output_size", 0)  # aiohttp makes one writer per request
    return size if isinstance(size, int) else 0


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def access_entry(
    request: web.Request,
    ctx: RequestContext | None,
    response: ProxyResponse,
    record: RequestRecord | None,
    now: float | None = None,
) -> dict[str, Any]:
    """The log entry of one answered request (ctx is None when no route matched)."""
    now = time.monotonic() if now is None else now
    started = record.started if record is not None else (ctx.started if ctx is not None else now)
    start_ns = record.start_ns if record is not None else time.time_ns()
    upstream_s = None
    if record is not None and record.upstream_started is not None:
        upstream_s = (record.upstream_ended or now) - record.upstream_started
    total_s = now - started
    trace_id, span_id = record.trace_ids() if record is not None else ("", "")
    consumer = ctx.consumer.username if ctx is not None and ctx.consumer is not None else ""
    request_id = (ctx.vars.get("request_id") if ctx is not None else None) or request.headers.get("X-Request-Id", "")
    return {
        "time": datetime.fromtimestamp(start_ns / 1e9, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "route_id": ctx.route_id if ctx is not None else "",
        "service_id": (ctx.service_id or "") if ctx is not None else "",
        "consumer": consumer,
        "client_ip": ctx.client_ip if ctx is not None else (request.remote or ""),
        "method": request.method,
        "host": request.host,
        "path": request.raw_path,
        "protocol": f"HTTP/{request.version.major}.{request.version.minor}",
        "status": response.status,
        "source": response.source,
        "request_size": ingress_bytes(request),
        "response_size": egress_bytes(request),
        "upstream_addr": record.upstream_addr if record is not None else "",
        "upstream_status": record.upstream_status if record is not None else "",
        "latency_ms": _ms(total_s),
        "upstream_latency_ms": _ms(upstream_s),
        "gateway_latency_ms": _ms(total_s - upstream_s if upstream_s is not None else total_s),
        "trace_id": trace_id,
        "span_id": span_id,
        "request_id": request_id,
        "user_agent": request.headers.get("User-Agent", ""),
    }


class AccessLogWriter:
    """Queues entries (bounded: the overflow is dropped and counted) and writes them every `flush_interval`."""

    def __init__(
        self,
        path: str | None,
        max_pending: int = 10_000,
        flush_interval: float = 0.5,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self.path = None if path in (None, "", "-") else path
        self.max_pending = max_pending
        self.flush_interval = flush_interval
        self.on_drop = on_drop
        self.dropped = 0
        self._pending: deque[dict[str, Any]] = deque()
        self._file: IO[str] | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def start(self) -> None:
        if self.path is not None:
            self._file = open(self.path, "a", encoding="utf-8", buffering=1024 * 1024)  # noqa: SIM115
        self._task = asyncio.create_task(self._run(), name="protogate-access-log")

    def write(self, entry: dict[str, Any]) -> None:
        if len(self._pending) >= self.max_pending:
            self.dropped += 1
            if self.on_drop is not None:
                self.on_drop(1)
            return
        self._pending.append(entry)
        if len(self._pending) >= 1000:
            self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        if not self._pending:
            return
        entries = list(self._pending)
        self._pending.clear()
        text = "".join(json.dumps(entry, separators=(",", ":"), ensure_ascii=False) + "\n" for entry in entries)
        try:
            if self._file is None:
                sys.stdout.write(text)
                sys.stdout.flush()
            else:
                # A slow disk stalls a worker thread, not the event loop.
                await asyncio.to_thread(self._write_file, text)
        except (OSError, ValueError) as exc:
            self.dropped += len(entries)
            if self.on_drop is not None:
                self.on_drop(len(entries))
            log.warning("access log write failed: %s", exc)

    def _write_file(self, text: str) -> None:
        assert self._file is not None
        self._file.write(text)
        self._file.flush()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
