"""Tracing: samplers from APISIX's names, the server span and its children, propagation, drops counted."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import grpc
import pytest
from multidict import CIMultiDict
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, TraceIdRatioBased
from telemetry_support import answer, make_ctx

from gateway.config.loader import load_document
from gateway.config.models import TracingSettings
from gateway.pipeline import PluginChain
from gateway.telemetry import (
    Telemetry,
    inject_context,
    request_record,
    start_upstream_call,
    trace_headers,
    trace_metadata,
)
from gateway.telemetry.tracing import Tracing, sampler_from_config, tracing_wanted

UPSTREAM = {"id": "u", "scheme": "grpc", "nodes": {"127.0.0.1:1": 1}}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def telemetry_with(plugins: dict[str, Any], **telemetry: Any) -> tuple[Telemetry, PluginChain, InMemorySpanExporter]:
    doc = {
        "upstreams": [UPSTREAM],
        "routes": [{"id": "r", "uri": "/v1/*", "upstream_id": "u"}],
        "global_rules": [{"id": "g", "plugins": plugins}] if plugins else [],
        "telemetry": telemetry,
    }
    loaded = load_document(doc)
    hub = Telemetry(loaded)
    memory = InMemorySpanExporter()
    if hub.tracing is not None:
        hub.tracing = Tracing(loaded.config.telemetry.tracing, exporter=memory)
    return hub, PluginChain.build(loaded.global_plugins.values()), memory


def finished(hub: Telemetry, memory: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    assert hub.tracing is not None
    hub.tracing.provider.force_flush()
    return {span.name: span for span in memory.get_finished_spans()}


def test_apisix_sampler_names_map_to_sdk_samplers() -> None:
    assert sampler_from_config("always_on") is ALWAYS_ON
    assert sampler_from_config("always_off") is ALWAYS_OFF
    assert isinstance(sampler_from_config("trace_id_ratio", 0.5), TraceIdRatioBased)
    assert isinstance(sampler_from_config("parent_base", root=ALWAYS_ON), ParentBased)


def test_tracing_is_off_unless_configured_or_an_otlp_endpoint_is_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    assert not tracing_wanted(TracingSettings())
    assert tracing_wanted(TracingSettings(enabled=True))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    assert tracing_wanted(TracingSettings())
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not tracing_wanted(TracingSettings(enabled=True))


async def test_nothing_configured_means_no_record_and_no_span(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    hub, chain, _ = telemetry_with({})
    assert (hub.tracing, hub.metrics, hub.per_request) == (None, None, False)
    ctx = make_ctx("/v1/x", headers=[("traceparent", TRACEPARENT)])
    hub.begin(ctx, (chain,))
    assert request_record(ctx) is None
    assert start_upstream_call(ctx, "grpc", "/s.S/M", "127.0.0.1:1").record is None
    assert trace_metadata(ctx, [("traceparent", TRACEPARENT)]) == [("traceparent", TRACEPARENT)]


async def test_server_span_continues_the_client_trace_and_parents_the_upstream_call() -> None:
    hub, chain, memory = telemetry_with({"opentelemetry": {"sampler": {"name": "always_on"}}})
    ctx = make_ctx("/v1/x?a=1", headers=[("traceparent", TRACEPARENT), ("User-Agent", "t/1")])
    hub.begin(ctx, (chain,))
    ctx.chains = (chain,)
    call = start_upstream_call(ctx, "grpc", "/pkg.Svc/Get", "127.0.0.1:50051")
    metadata = trace_metadata(ctx, [("traceparent", TRACEPARENT), ("x-other", "1")])
    call.grpc_status(grpc.StatusCode.OK)
    headers: CIMultiDict[str] = CIMultiDict(traceparent=TRACEPARENT)
    trace_headers(ctx, headers)
    carrier: dict[str, str] = {}
    inject_context(carrier, ctx)
    hub.finish(ctx.request, ctx, answer(200))

    spans = finished(hub, memory)
    server, client = spans["GET /v1/*"], spans["pkg.Svc/Get"]
    assert format(server.context.trace_id, "032x") == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert server.parent is not None and format(server.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert server.attributes["http.route"] == "/v1/*"
    assert server.attributes["url.query"] == "a=1"
    assert server.attributes["http.response.status_code"] == 200
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    assert client.attributes["rpc.service"] == "pkg.Svc" and client.attributes["rpc.grpc.status_code"] == 0
    # the client span went out with the upstream call, the client's own traceparent did not
    assert dict(metadata)["traceparent"].split("-")[2] == format(client.context.span_id, "016x")
    assert ("x-other", "1") in metadata
    assert [v for k, v in metadata if k == "traceparent"] == [dict(metadata)["traceparent"]]
    # after the call, the server span is what goes out (e.g. to a plugin runner)
    assert headers["traceparent"].split("-")[2] == format(server.context.span_id, "016x")
    assert carrier["traceparent"] == headers["traceparent"]


async def test_always_off_route_sends_an_unsampled_context_and_exports_nothing() -> None:
    hub, chain, memory = telemetry_with({"opentelemetry": {"sampler": {"name": "always_off"}}})
    ctx = make_ctx("/v1/x")
    hub.begin(ctx, (chain,))
    metadata = dict(trace_metadata(ctx, []))
    hub.finish(ctx.request, ctx, answer(200))
    assert metadata["traceparent"].endswith("-00") or metadata["traceparent"].endswith("-02")
    assert finished(hub, memory) == {}


async def test_a_5xx_answer_marks_the_server_span_as_an_error() -> None:
    hub, chain, memory = telemetry_with({"opentelemetry": {"sampler": {"name": "always_on"}}})
    ctx = make_ctx("/v1/x")
    hub.begin(ctx, (chain,))
    call = start_upstream_call(ctx, "grpc", "/pkg.Svc/Get", "127.0.0.1:50051")
    call.failed(ConnectionError("refused"))
    hub.finish(ctx.request, ctx, answer(503, source="gateway"))
    spans = finished(hub, memory)
    assert not spans["GET /v1/*"].status.is_ok and spans["GET /v1/*"].attributes["error.type"] == "503"
    assert spans["pkg.Svc/Get"].events[0].name == "exception"


class FailingExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        pass


def test_failed_exports_are_counted_and_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    drops: list[int] = []
    tracing = Tracing(TracingSettings(), on_drop=drops.append, exporter=FailingExporter())
    with caplog.at_level(logging.WARNING, logger="protogate.telemetry"):
        for _ in range(2):
            tracing.tracer.start_span("a").end()
            tracing.provider.force_flush()
    tracing.shutdown(timeout=1.0)
    assert sum(drops) == 2 and tracing.drops.dropped == 2
    assert len([r for r in caplog.records if "trace export failing" in r.getMessage()]) == 1
