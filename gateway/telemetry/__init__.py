"""Telemetry: OTLP tracing, Prometheus metrics and access logs; the request path calls the hooks re-exported here."""

from __future__ import annotations

from gateway.telemetry.hub import Telemetry, start_metrics_endpoint, telemetry_ctx
from gateway.telemetry.request import (
    RequestRecord,
    UpstreamCall,
    inject_context,
    phase_span,
    plugin_runner_span,
    request_record,
    start_upstream_call,
    trace_headers,
    trace_metadata,
    transcode_span,
)

__all__ = [
    "RequestRecord",
    "Telemetry",
    "UpstreamCall",
    "inject_context",
    "phase_span",
    "plugin_runner_span",
    "request_record",
    "start_metrics_endpoint",
    "start_upstream_call",
    "telemetry_ctx",
    "trace_headers",
    "trace_metadata",
    "transcode_span",
]
