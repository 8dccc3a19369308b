"""http-logger: send the route's access log entries in batches to an HTTP endpoint, with retries.

APISIX's batch processor: a batch goes when it has `batch_max_size` entries, when no entry came for
`inactive_timeout` seconds, or when its oldest entry is `buffer_duration` seconds old. A failed batch is
retried `max_retry_count` times, `retry_delay` seconds apart, then dropped. Entries beyond
`max_pending_entries` are dropped too; both are counted (protogate_telemetry_dropped{sink="http-logger"}).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from typing import Any, ClassVar, Literal

import aiohttp
from pydantic import Field, HttpUrl, field_validator

from gateway.context import RequestContext
from gateway.plugins.base import Plugin, PluginConfig
from gateway.plugins.variables import resolve_var
from gateway.responses import ProxyResponse
from gateway.telemetry.access_log import access_entry
from gateway.telemetry.request import request_record

log = logging.getLogger("protogate.plugins.http_logger")
WARN_EVERY = 60.0
MAX_LOG_FORMAT_DEPTH = 5
# log_format variables nginx has and the access entry already measured: name -> (entry field, scale).
_ENTRY_VARS = {
    "time_iso8601": ("time", None),
    "request_time": ("latency_ms", 1000),
    "upstream_response_time": ("upstream_latency_ms", 1000),
    "upstream_addr": ("upstream_addr", None),
    "upstream_status": ("upstream_status", None),
    "request_length": ("request_size", None),
    "bytes_sent": ("response_size", None),
    "server_protocol": ("protocol", None),
}


def _check_log_format(value: dict[str, Any] | None, depth: int = 1) -> dict[str, Any] | None:
    for key, item in (value or {}).items():
        if isinstance(item, dict):
            if depth >= MAX_LOG_FORMAT_DEPTH:
                raise ValueError(f"log_format nests deeper than {MAX_LOG_FORMAT_DEPTH} levels at {key!r}")
            _check_log_format(item, depth + 1)
    return value


class HttpLoggerConfig(PluginConfig):
    uri: HttpUrl
    name: str = Field(default="http logger", min_length=1)  # APISIX's batch processor name; a label here
    auth_header: str | None = None  # sent as the Authorization header
    # {"field": "$var", "nested": {...}, "fixed": "text"}: the entry's shape instead of the default one.
    log_format: dict[str, Any] | None = None
    # Checked by default, where APISIX does not check: a log collector's certificate matters as much as any.
    ssl_verify: bool = True
    timeout: float = Field(default=3.0, gt=0)  # seconds per POST
    include_req_body: bool = False  # only a body the gateway read anyway (a transcoded request's)
    concat_method: Literal["json", "new_line"] = "json"
    batch_max_size: int = Field(default=1000, ge=1)
    inactive_timeout: float = Field(default=5.0, gt=0)
    buffer_duration: float = Field(default=60.0, gt=0)
    max_retry_count: int = Field(default=0, ge=0)
    retry_delay: float = Field(default=1.0, ge=0)
    max_pending_entries: int = Field(default=10_000, ge=1)

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return _check_log_format(value)


class BatchSender:
    """Queues entries and posts them in batches from its own task; never blocks whoever adds entries."""

    def __init__(self, config: HttpLoggerConfig, on_drop: Any = None) -> None:
        self.config = config
        self.on_drop = on_drop
        self.dropped = 0
        self.sent = 0
        self._pending: deque[dict[str, Any]] = deque()
        self._first_at = 0.0  # when the oldest pending entry came
        self._last_at = 0.0
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._task = asyncio.create_task(self._run(), name="protogate-http-logger")
        self._warned_at = -WARN_EVERY

    def add(self, entry: dict[str, Any]) -> None:
        if len(self._pending) >= self.config.max_pending_entries:
            self._drop(1, "queue full")
            return
        now = time.monotonic()
        if not self._pending:
            self._first_at = now
            self._wake.set()
        self._last_at = now
        self._pending.append(entry)
        if len(self._pending) >= self.config.batch_max_size:
            self._wake.set()

    def _due_in(self) -> float | None:
        """Seconds until the pending batch must go (<= 0: now); None when nothing is pending."""
        if not self._pending:
            return None
        if len(self._pending) >= self.config.batch_max_size:
            return 0.0
        now = time.monotonic()
        inactive = self._last_at + self.config.inactive_timeout - now
        oldest = self._first_at + self.config.buffer_duration - now
        return min(inactive, oldest)

    async def _run(self) -> None:
        while True:
            due = self._due_in()
            if due is None or due > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), due)
                continue
            await self._send(self._take())

    def _take(self) -> list[dict[str, Any]]:
        count = min(len(self._pending), self.config.batch_max_size)
        batch = [self._pending.popleft() for _ in range(count)]
        self._first_at = self._last_at = time.monotonic()
        return batch

    def _body(self, batch: list[dict[str, Any]]) -> bytes:
        if self.config.batch_max_size == 1:
            # APISIX: a processor of batches of one sends the entry itself, `{}`, not `[{}]`.
            return json.dumps(batch[0], ensure_ascii=False).encode()
        if self.config.concat_method == "new_line":
            return "\n".join(json.dumps(entry, ensure_ascii=False) for entry in batch).encode()
        return json.dumps(batch, ensure_ascii=False).encode()

    async def _send(self, batch: list[dict[str, Any]]) -> None:
        config = self.config
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=config.timeout),
                connector=aiohttp.TCPConnector(ssl=None if config.ssl_verify else False),
            )
        headers = {"Content-Type": "application/json" if config.concat_method == "json" else "text/plain"}
        if config.auth_header:
            headers["Authorization"] = config.auth_header
        body = self._body(batch)
        error = ""
        for attempt in range(config.max_retry_count + 1):
            if attempt:
                await asyncio.sleep(config.retry_delay)
            try:
                async with self._session.post(str(config.uri), data=body, headers=headers) as response:
                    await response.read()
                    if response.status < 400:  # APISIX: a 4xx or 5xx is a failed batch
                        self.sent += len(batch)
                        return
                    error = f"status {response.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = str(exc) or type(exc).__name__
        self._drop(len(batch), error)

    def _drop(self, count: int, reason: str) -> None:
        self.dropped += count
        if self.on_drop is not None:
            self.on_drop(count)
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log.warning("http-logger to %s dropped entries (%s); %d so far", self.config.uri, reason, self.dropped)

    async def close(self, timeout: float = 2.0) -> None:
        """Sends what is pending (one try each, within `timeout`), then stops."""
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        try:
            async with asyncio.timeout(timeout):
                while self._pending:
                    await self._send(self._take())
        except TimeoutError:
            self._drop(len(self._pending), "shutdown")
            self._pending.clear()
        if self._session is not None:
            await self._session.close()


class HttpLogger(Plugin[HttpLoggerConfig]):
    name: ClassVar[str] = "http-logger"
    priority: ClassVar[int] = 410
    Config = HttpLoggerConfig

    def __init__(self, config: HttpLoggerConfig) -> None:
        super().__init__(config)
        self.sender: BatchSender | None = None  # per route, started in the loop on first use

    async def log(self, ctx: RequestContext, response: ProxyResponse) -> None:
        record = request_record(ctx)
        if record is None:
            return
        if self.sender is None:
            telemetry = record.telemetry
            self.sender = BatchSender(self.config, telemetry._counter("http-logger"))
            telemetry.add_closer(self.sender.close)
        entry = access_entry(ctx.request, ctx, response, record)
        if self.config.log_format is not None:
            entry = {
                **custom_entry(self.config.log_format, ctx, response, entry),
                "route_id": ctx.route_id,
                "service_id": ctx.service_id or "",
            }
        if self.config.include_req_body and ctx.body_was_read:
            entry["request_body"] = (await ctx.read_body()).decode("utf-8", "replace")
        self.sender.add(entry)


def custom_entry(
    log_format: dict[str, Any], ctx: RequestContext, response: ProxyResponse, measured: dict[str, Any]
) -> dict[str, Any]:
    """APISIX's log_format: "$name" values are variables (null when they have none), dicts nest, the rest is kept."""
    out: dict[str, Any] = {}
    for key, item in log_format.items():
        if isinstance(item, dict):
            out[key] = custom_entry(item, ctx, response, measured)
        elif isinstance(item, str) and item.startswith("$"):
            out[key] = _log_var(item[1:], ctx, response, measured)
        else:
            out[key] = item
    return out


def _log_var(name: str, ctx: RequestContext, response: ProxyResponse, measured: dict[str, Any]) -> Any:
    if name in _ENTRY_VARS:
        field, scale = _ENTRY_VARS[name]
        value = measured.get(field)
        if scale is not None and isinstance(value, int | float):
            return round(value / scale, 3)
        return value if value != "" else None
    return resolve_var(name, ctx, response)
