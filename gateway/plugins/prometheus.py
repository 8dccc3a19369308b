"""prometheus: count the route's requests, latencies and bytes (APISIX's metrics, `protogate_` names)."""

from __future__ import annotations

import time
from typing import ClassVar

from gateway.context import RequestContext
from gateway.plugins.base import Plugin, PluginConfig
from gateway.responses import ProxyResponse
from gateway.telemetry.access_log import egress_bytes, ingress_bytes
from gateway.telemetry.metrics import Observation
from gateway.telemetry.request import request_record


class PrometheusConfig(PluginConfig):
    prefer_name: bool = False  # label routes and services by name instead of id


class Prometheus(Plugin[PrometheusConfig]):
    name: ClassVar[str] = "prometheus"
    priority: ClassVar[int] = 500
    Config = PrometheusConfig

    async def log(self, ctx: RequestContext, response: ProxyResponse) -> None:
        record = request_record(ctx)
        if record is None or record.telemetry.metrics is None:
            return
        telemetry = record.telemetry
        now = time.monotonic()
        route = telemetry.routes.get(ctx.route_id)
        route_label, service_label = ctx.route_id, ctx.service_id or ""
        if self.config.prefer_name:
            route_label = route.name if route is not None else route_label
            service_label = telemetry.service_names.get(service_label, service_label)
        upstream_ms = None
        if record.upstream_started is not None:
            upstream_ms = ((record.upstream_ended or now) - record.upstream_started) * 1000
        telemetry.metrics.observe(
            Observation(
                code=response.status,
                route=route_label,
                matched_uri=route.uri if route is not None else "",
                matched_host=route.host if route is not None else "",
                service=service_label,
                consumer=ctx.consumer.username if ctx.consumer is not None else "",
                node=record.upstream_addr,
                request_ms=(now - record.started) * 1000,
                upstream_ms=upstream_ms,
                ingress=ingress_bytes(ctx.request),
                egress=egress_bytes(ctx.request),
                # A limit plugin's refusal: the gateway's own answer with Retry-After (limit_keys.refusal).
                rate_limited=response.source == "gateway" and "Retry-After" in response.headers,
            )
        )
