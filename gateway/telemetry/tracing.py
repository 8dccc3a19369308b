"""Tracing: an OTLP-exporting TracerProvider that never blocks the request path, and per-route samplers."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, Tracer
from opentelemetry.util.types import Attributes

from gateway import __version__
from gateway.config.models import TracingSettings

log = logging.getLogger("protogate.telemetry")

WARN_EVERY = 60.0  # seconds between two warnings about a failing collector
_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_EXPORTER_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http",
    "opentelemetry.sdk._shared_internal",
)

# The sampler of the route whose server span is being started; unset for every other span.
_ROOT_SAMPLER: ContextVar[Sampler | None] = ContextVar("protogate_root_sampler", default=None)
_FOLLOW_PARENT = ParentBased(ALWAYS_ON)


def tracing_wanted(settings: TracingSettings) -> bool:
    """Whether every request is traced (not only routes with the opentelemetry plugin)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if settings.enabled is not None:
        return settings.enabled
    return any(os.environ.get(name) for name in _ENDPOINT_VARS)


class RouteSampler(Sampler):
    """A server span is sampled by its route's sampler (or the OTEL_TRACES_SAMPLER default); children follow it."""

    def __init__(self, default: Sampler) -> None:
        self.default = default

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        root = _ROOT_SAMPLER.get()
        sampler = root if root is not None else _FOLLOW_PARENT
        return sampler.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"RouteSampler{{{self.default.get_description()}}}"


def sampler_from_config(name: str, fraction: float = 0.0, root: Sampler | None = None) -> Sampler:
    """APISIX's sampler names as SDK samplers."""
    if name == "always_on":
        return ALWAYS_ON
    if name == "always_off":
        return ALWAYS_OFF
    if name == "trace_id_ratio":
        return TraceIdRatioBased(fraction)
    return ParentBased(root if root is not None else ALWAYS_OFF)


class DropCounter:
    """Spans that never reached the collector: counted, with one warning per WARN_EVERY seconds."""

    def __init__(self, on_drop: Callable[[int], None] | None = None) -> None:
        self.dropped = 0
        self.last_error = ""
        self._on_drop = on_drop
        self._lock = threading.Lock()
        self._warned_at = -WARN_EVERY

    def drop(self, count: int, reason: str) -> None:
        with self._lock:
            self.dropped += count
            total = self.dropped
            now = time.monotonic()
            warn = now - self._warned_at >= WARN_EVERY
            if warn:
                self._warned_at = now
        if self._on_drop is not None:
            self._on_drop(count)
        if warn:
            detail = f" ({self.last_error})" if self.last_error else ""
            log.warning("trace export failing: %s%s; %d spans dropped so far", reason, detail, total)


class _QuietExporterLogs(logging.Filter):
    """The SDK logs every failed export and retry; DropCounter says it once a minute instead."""

    def __init__(self, counter: DropCounter) -> None:
        super().__init__()
        self.counter = counter

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            self.counter.last_error = record.getMessage()[:300]
            return False
        return True


class CountingExporter(SpanExporter):
    """Wraps the OTLP exporter: a failed export counts its spans as dropped."""

    def __init__(self, exporter: SpanExporter, counter: DropCounter) -> None:
        self.exporter = exporter
        self.counter = counter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.exporter.export(spans)
        except Exception as exc:
            self.counter.last_error = repr(exc)[:300]
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self.counter.drop(len(spans), "the collector did not take a batch")
        return result

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


class BoundedBatchProcessor(BatchSpanProcessor):
    """BatchSpanProcessor whose queue overflows are counted (the SDK drops them with one log line)."""

    def __init__(self, exporter: SpanExporter, counter: DropCounter, max_queue_size: int | None, **kwargs: Any) -> None:
        super().__init__(exporter, max_queue_size=max_queue_size, **kwargs)
        self.counter = counter
        inner = getattr(self, "_batch_processor", None)
        self._queue = getattr(inner, "_queue", None)
        self._limit = getattr(inner, "_max_queue_size", 0)

    def on_end(self, span: ReadableSpan) -> None:
        if not span.context.trace_flags.sampled:
            return
        if self._queue is not None and len(self._queue) >= self._limit:
            self.counter.drop(1, "the export queue is full")
        super().on_end(span)


def _resource(settings: TracingSettings) -> Resource:
    attributes: dict[str, str] = {"service.version": __version__, **settings.resource_attributes}
    if settings.service_name:
        attributes["service.name"] = settings.service_name
    resource = Resource.create(attributes)  # merges OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "protogate"}))
    return resource


def _protocol(settings: TracingSettings) -> str:
    if settings.protocol is not None:
        return settings.protocol
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return "grpc"


def build_exporter(settings: TracingSettings) -> SpanExporter | None:
    """The OTLP exporter the settings and OTEL_* variables ask for; None for OTEL_TRACES_EXPORTER=none."""
    kind = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if kind == "none":
        return None
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    timeout = settings.batch.export_timeout
    headers = dict(settings.headers) or None
    if _protocol(settings) == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        endpoint = settings.endpoint
        if endpoint is not None and endpoint.rstrip("/").count("/") <= 2:  # a base URL: add the traces path
            endpoint = endpoint.rstrip("/") + "/v1/traces"
        return HttpExporter(endpoint=endpoint, headers=headers, timeout=timeout)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

    return GrpcExporter(endpoint=settings.endpoint, headers=headers, timeout=timeout)


class Tracing:
    """One TracerProvider for the process's gateway app, exporting in a background thread."""

    def __init__(
        self,
        settings: TracingSettings,
        on_drop: Callable[[int], None] | None = None,
        exporter: SpanExporter | None = None,
    ) -> None:
        self.settings = settings
        self.drops = DropCounter(on_drop)
        provider = TracerProvider(resource=_resource(settings), shutdown_on_exit=False)
        # The provider's own sampler comes from OTEL_TRACES_SAMPLER: it is the default for traced routes.
        self.default_sampler: Sampler = provider.sampler
        provider.sampler = RouteSampler(self.default_sampler)
        self.provider = provider
        self.exporter = exporter if exporter is not None else build_exporter(settings)
        self.processor: BatchSpanProcessor | None = None
        if self.exporter is not None:
            quiet = _QuietExporterLogs(self.drops)
            for name in _EXPORTER_LOGGERS:
                logging.getLogger(name).addFilter(quiet)
            batch = settings.batch
            self.processor = BoundedBatchProcessor(
                CountingExporter(self.exporter, self.drops),
                self.drops,
                max_queue_size=batch.max_queue_size,
                # a small queue with no batch size: batches no bigger than the queue (the SDK insists)
                max_export_batch_size=batch.max_export_batch_size
                or (min(512, batch.max_queue_size) if batch.max_queue_size else None),
                schedule_delay_millis=batch.schedule_delay * 1000 if batch.schedule_delay else None,
                export_timeout_millis=batch.export_timeout * 1000 if batch.export_timeout else None,
            )
            provider.add_span_processor(self.processor)
        self.tracer: Tracer = provider.get_tracer("protogate", __version__)

    def start_server_span(
        self, name: str, sampler: Sampler | None, parent: Context, attributes: dict[str, Any], start_time: int
    ) -> Any:
        token = _ROOT_SAMPLER.set(sampler if sampler is not None else self.default_sampler)
        try:
            return self.tracer.start_span(
                name, context=parent, kind=SpanKind.SERVER, attributes=attributes, start_time=start_time
            )
        finally:
            _ROOT_SAMPLER.reset(token)

    def shutdown(self, timeout: float = 3.0) -> None:
        """Flush what is queued, within `timeout` seconds; a dead collector only loses the rest."""
        if self.processor is None:
            return
        done = threading.Event()

        def flush_and_stop() -> None:
            try:
                self.provider.shutdown()
            finally:
                done.set()

        # A daemon thread: a collector that never answers cannot hold the process at exit.
        threading.Thread(target=flush_and_stop, name="protogate-otlp-shutdown", daemon=True).start()
        if not done.wait(timeout):
            assert self.exporter is not None
            self.exporter.shutdown()  # aborts the exporter's retries
            done.wait(1.0)
