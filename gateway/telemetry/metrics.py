"""Prometheus metrics with APISIX's names (`apisix_` -> `protogate_`) and the endpoint that serves them."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from gateway import __version__

# APISIX's default buckets, in milliseconds.
LATENCY_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000)
_ROUTE_LABELS = ("route", "service", "consumer", "node")


@dataclass(frozen=True)
class Observation:
    """One finished request, as the prometheus plugin saw it."""

    code: int
    route: str
    matched_uri: str
    matched_host: str
    service: str
    consumer: str
    node: str
    request_ms: float
    upstream_ms: float | None
    ingress: int
    egress: int
    rate_limited: bool


class _DroppedCollector(Collector):
    def __init__(self, dropped: Callable[[], Mapping[str, int]]) -> None:
        self.dropped = dropped

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "protogate_telemetry_dropped", "Telemetry items dropped because a sink was down or full", labels=["sink"]
        )
        for sink, count in sorted(self.dropped().items()):
            family.add_metric([sink], count)
        yield family


class Metrics:
    """The gateway's metric families in a registry of their own (never prometheus_client's global one)."""

    def __init__(self, dropped: Callable[[], Mapping[str, int]] | None = None) -> None:
        registry = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("protogate_http_requests", "Requests the gateway received", registry=registry)
        self.status = Counter(
            "protogate_http_status",
            "Answers by HTTP status",
            ["code", "route", "matched_uri", "matched_host", "service", "consumer", "node"],
            registry=registry,
        )
        self.latency = Histogram(
            "protogate_http_latency",
            "Latency in milliseconds: request (all of it), upstream, gateway (request minus upstream)",
            ["type", *_ROUTE_LABELS],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.bandwidth = Counter(
            "protogate_bandwidth", "Bytes in (ingress) and out (egress)", ["type", *_ROUTE_LABELS], registry=registry
        )
        self.rate_limited = Counter(
            "protogate_rate_limit_refusals",
            "Requests refused by a limit plugin",
            ["route", "consumer"],
            registry=registry,
        )
        self.upstream_status = Gauge(
            "protogate_upstream_status",
            "Health of upstream nodes: 1 healthy, 0 not",
            ["name", "ip", "port"],
            registry=registry,
        )
        self.runner_calls = Counter(
            "protogate_plugin_runner_calls", "Calls to external plugin runners", ["phase"], registry=registry
        )
        self.runner_failures = Counter(
            "protogate_plugin_runner_failures",
            "Failed calls to external plugin runners",
            ["phase", "reason"],
            registry=registry,
        )
        self.config_version = Gauge(
            "protogate_config_version",
            "Configs loaded since start; the label is the config's digest",
            ["digest"],
            registry=registry,
        )
        self.node_info = Gauge("protogate_node_info", "This gateway node", ["hostname", "version"], registry=registry)
        self.node_info.labels(socket.gethostname(), __version__).set(1)
        if dropped is not None:
            registry.register(_DroppedCollector(dropped))

    def observe(self, seen: Observation) -> None:
        labels = (seen.route, seen.service, seen.consumer, seen.node)
        self.status.labels(
            str(seen.code), seen.route, seen.matched_uri, seen.matched_host, seen.service, seen.consumer, seen.node
        ).inc()
        self.latency.labels("request", *labels).observe(seen.request_ms)
        if seen.upstream_ms is not None:
            self.latency.labels("upstream", *labels).observe(seen.upstream_ms)
            self.latency.labels("gateway", *labels).observe(max(0.0, seen.request_ms - seen.upstream_ms))
        else:
            self.latency.labels("gateway", *labels).observe(seen.request_ms)
        self.bandwidth.labels("ingress", *labels).inc(seen.ingress)
        self.bandwidth.labels("egress", *labels).inc(seen.egress)
        if seen.rate_limited:
            self.rate_limited.labels(seen.route, seen.consumer).inc()

    # -- hooks for the parts that report on their own -------------------------------------------------------------

    def set_upstream_health(self, upstream: str, host: str, port: int, healthy: bool) -> None:
        """For health checks: a node's current state."""
        self.upstream_status.labels(upstream, host, str(port)).set(1 if healthy else 0)

    def count_plugin_runner_call(self, phase: str, failure: str | None = None) -> None:
        """For the ext-plugin client: one runner call, and why it failed (timeout, unavailable, ...) if it did."""
        self.runner_calls.labels(phase).inc()
        if failure is not None:
            self.runner_failures.labels(phase, failure).inc()

    def set_config_version(self, version: int, digest: str) -> None:
        self.config_version.clear()
        self.config_version.labels(digest).set(version)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def metrics_app(metrics: Metrics, export_uri: str) -> web.Application:
    """The metrics listener's app: `export_uri` (APISIX's path, renamed) and `/metrics`."""

    async def scrape(request: web.Request) -> web.Response:
        response = web.Response(body=metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    for path in dict.fromkeys((export_uri, "/metrics")):
        app.router.add_get(path, scrape)
    return app
