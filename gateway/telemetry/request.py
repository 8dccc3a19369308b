"""Per-request telemetry (timings, spans) and the hooks the request path calls; each is a no-op when off."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

if TYPE_CHECKING:
    import grpc
    from multidict import CIMultiDict

    from gateway.context import RequestContext
    from gateway.telemetry.hub import Telemetry

VAR = "_telemetry"  # the ctx.vars key of a request's RequestRecord
_TRACE_KEYS = ("traceparent", "tracestate", "baggage")


@dataclass(slots=True, eq=False)
class RequestRecord:
    """What telemetry keeps about one request. `span` is None when the request is not traced."""

    telemetry: Telemetry
    started: float  # time.monotonic(), as ctx.started
    start_ns: int  # wall clock, for spans and the log's time
    span: Span | None = None
    context: Context | None = None  # the server span's context: parent of every child span
    token: object | None = None  # the otel context attach token, detached when the request ends
    upstream_addr: str = ""
    upstream_started: float | None = None
    upstream_ended: float | None = None
    upstream_status: str = ""
    open_spans: list[Span] = field(default_factory=list)
    outgoing: Span | None = None  # the client span whose context goes out with the next upstream or runner call
    request_phases_done: bool = False

    @property
    def recording(self) -> bool:
        return self.span is not None and self.span.is_recording()

    def trace_ids(self) -> tuple[str, str]:
        if self.span is None:
            return "", ""
        span_context = self.span.get_span_context()
        if not span_context.is_valid:
            return "", ""
        return format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")

    def child(self, name: str, kind: SpanKind = SpanKind.INTERNAL, **kwargs: Any) -> Span:
        tracing = self.telemetry.tracing
        assert tracing is not None
        span = tracing.tracer.start_span(name, context=self.context, kind=kind, **kwargs)
        self.open_spans.append(span)
        return span

    def end_request_phases(self, chains_have_hooks: bool) -> None:
        """The request phases span, drawn after the fact: from the start to now (the upstream call or the answer)."""
        if self.request_phases_done:
            return
        self.request_phases_done = True
        if chains_have_hooks and self.recording:
            span = self.child("request plugins", start_time=self.start_ns)
            self.open_spans.remove(span)
            span.end()

    def close(self) -> None:
        """Ends spans the request path left open (a streaming call, an exception): they still show."""
        for span in self.open_spans:
            if span.is_recording():
                span.set_attribute("protogate.ended_with_request", True)
            span.end()
        self.open_spans.clear()
        if self.token is not None:
            otel_context.detach(self.token)
            self.token = None


def request_record(ctx: RequestContext) -> RequestRecord | None:
    return ctx.vars.get(VAR)


def _request_hooks(ctx: RequestContext) -> bool:
    return any(any(chain.request_hooks.values()) or chain.late_rewrite_hooks for chain in ctx.chains)


def _response_hooks(ctx: RequestContext) -> bool:
    return any(chain.header_filters or chain.body_filters for chain in ctx.chains)


# -- the upstream call ---------------------------------------------------------------------------------------------


class UpstreamCall:
    """One call to an upstream node: its timing for metrics and logs, and its client span when traced."""

    __slots__ = ("record", "span")

    def __init__(self, record: RequestRecord | None, span: Span | None) -> None:
        self.record = record
        self.span = span

    def grpc_status(self, code: grpc.StatusCode, error: BaseException | None = None) -> None:
        record = self.record
        if record is None:
            return
        record.upstream_ended = time.monotonic()
        record.upstream_status = code.name
        span = self.span
        if span is not None:
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code.value[0] != 0:
                span.set_status(Status(StatusCode.ERROR, code.name))
                if error is not None:
                    span.record_exception(error)
            self._end()

    def http_status(self, status: int) -> None:
        record = self.record
        if record is None:
            return
        record.upstream_ended = time.monotonic()
        record.upstream_status = str(status)
        span = self.span
        if span is not None:
            span.set_attribute("http.response.status_code", status)
            if status >= 400:
                span.set_status(Status(StatusCode.ERROR))
                span.set_attribute("error.type", str(status))
            self._end()

    def failed(self, error: BaseException) -> None:
        record = self.record
        if record is None:
            return
        record.upstream_ended = time.monotonic()
        record.upstream_status = type(error).__name__
        span = self.span
        if span is not None:
            span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
            span.set_attribute("error.type", type(error).__qualname__)
            span.record_exception(error)
            self._end()

    def _end(self) -> None:
        assert self.span is not None and self.record is not None
        with contextlib.suppress(ValueError):
            self.record.open_spans.remove(self.span)
        if self.record.outgoing is self.span:
            self.record.outgoing = None
        self.span.end()
        self.span = None


_NO_CALL = UpstreamCall(None, None)


def start_upstream_call(ctx: RequestContext, system: str, target: str, address: str) -> UpstreamCall:
    """Marks the upstream call's start. `system` is "grpc" (target: the method path) or "http" (the URL)."""
    record = ctx.vars.get(VAR)
    if record is None:
        return _NO_CALL
    record.upstream_addr = address
    record.upstream_started = time.monotonic()
    if record.span is None:
        return UpstreamCall(record, None)
    record.end_request_phases(_request_hooks(ctx))
    if not record.recording:
        return UpstreamCall(record, None)
    host, _, port = address.rpartition(":")
    attributes: dict[str, Any] = {"server.address": host.strip("[]"), "server.port": int(port) if port.isdigit() else 0}
    if system == "grpc":
        service, _, method = target.lstrip("/").partition("/")
        attributes.update({"rpc.system": "grpc", "rpc.service": service, "rpc.method": method})
        name = target.lstrip("/")
    else:
        attributes.update({"http.request.method": ctx.method, "url.full": target})
        name = ctx.method
    span = record.outgoing = record.child(name, SpanKind.CLIENT, attributes=attributes)
    return UpstreamCall(record, span)


def _propagation_context(record: RequestRecord) -> Context | None:
    if record.outgoing is not None:
        return trace.set_span_in_context(record.outgoing)
    return record.context


def trace_metadata(ctx: RequestContext, metadata: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """gRPC metadata with the gateway's trace context in place of the client's (when the request is traced)."""
    record = ctx.vars.get(VAR)
    if record is None or record.span is None:
        return metadata
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=_propagation_context(record))
    kept = [(key, value) for key, value in metadata if key not in _TRACE_KEYS]
    return kept + list(carrier.items())


def trace_headers(ctx: RequestContext, headers: CIMultiDict[str]) -> None:
    """HTTP upstream headers with the gateway's trace context in place of the client's, in place."""
    record = ctx.vars.get(VAR)
    if record is None or record.span is None:
        return
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=_propagation_context(record))
    for key in _TRACE_KEYS:
        headers.popall(key, None)
    headers.update(carrier)


def inject_context(carrier: MutableMapping[str, str], ctx: RequestContext | None = None) -> None:
    """Writes the current trace context (traceparent, tracestate) into `carrier`, e.g. a plugin-runner call's
    metadata. Without `ctx`, the request being handled in this task is used; nothing is written when untraced."""
    if ctx is not None:
        record = ctx.vars.get(VAR)
        if record is None or record.span is None:
            return
        propagate.inject(carrier, context=_propagation_context(record))
        return
    propagate.inject(carrier)


# -- spans around work on the request path --------------------------------------------------------------------------

_NOOP = contextlib.nullcontext()


def transcode_span(ctx: RequestContext, name: str, method: str = "") -> contextlib.AbstractContextManager[Any]:
    """A span around encoding the request or decoding the answer; nothing when the request is not traced."""
    record = ctx.vars.get(VAR)
    if record is None or not record.recording:
        return _NOOP
    return _span(record, name, {"rpc.method": method} if method else {})


def phase_span(ctx: RequestContext, name: str) -> contextlib.AbstractContextManager[Any]:
    """A span around the response phases (when traced and some plugin has a response hook)."""
    record = ctx.vars.get(VAR)
    if record is None or not record.recording:
        return _NOOP
    record.end_request_phases(_request_hooks(ctx))
    if not _response_hooks(ctx):
        return _NOOP
    return _span(record, name, {})


def plugin_runner_span(ctx: RequestContext, phase: str) -> contextlib.AbstractContextManager[Any]:
    """A client span around one ext-plugin runner call; inject_context(metadata, ctx) inside it continues it."""
    record = ctx.vars.get(VAR)
    if record is None or not record.recording:
        return _NOOP
    return _runner_span(record, phase)


@contextlib.contextmanager
def _span(
    record: RequestRecord, name: str, attributes: dict[str, Any], kind: SpanKind = SpanKind.INTERNAL
) -> Iterator[Span]:
    span = record.child(name, kind, attributes=attributes)
    try:
        yield span
    except BaseException as exc:
        span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))
        span.record_exception(exc)
        raise
    finally:
        record.open_spans.remove(span)
        span.end()


@contextlib.contextmanager
def _runner_span(record: RequestRecord, phase: str) -> Iterator[Span]:
    attributes = {"rpc.system": "grpc", "rpc.service": "protogate.plugin.v1.PluginRunner", "protogate.phase": phase}
    previous = record.outgoing
    with _span(record, f"ext-plugin {phase}", attributes, SpanKind.CLIENT) as span:
        record.outgoing = span
        try:
            yield span
        finally:
            record.outgoing = previous
