"""Metrics: observations land in APISIX-named families; hooks; the endpoint serves both paths."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gateway.telemetry.metrics import Metrics, Observation, metrics_app


def families(metrics: Metrics) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}


def seen(**changes: Any) -> Observation:
    values: dict[str, Any] = {
        "code": 200,
        "route": "r",
        "matched_uri": "/v1/*",
        "matched_host": "",
        "service": "",
        "consumer": "alice",
        "node": "127.0.0.1:50051",
        "request_ms": 12.0,
        "upstream_ms": 10.0,
        "ingress": 100,
        "egress": 300,
        "rate_limited": False,
    }
    return Observation(**{**values, **changes})


def test_an_observation_counts_status_latency_and_bandwidth() -> None:
    metrics = Metrics()
    metrics.observe(seen())
    metrics.observe(seen(code=429, upstream_ms=None, rate_limited=True))
    got = families(metrics)
    codes = {s.labels["code"]: s.value for s in got["protogate_http_status"].samples if s.name.endswith("_total")}
    assert codes == {"200": 1.0, "429": 1.0}
    counts = {s.labels["type"]: s.value for s in got["protogate_http_latency"].samples if s.name.endswith("_count")}
    assert counts == {"request": 2.0, "upstream": 1.0, "gateway": 2.0}
    gateway_sum = [
        s.value
        for s in got["protogate_http_latency"].samples
        if s.name.endswith("_sum") and s.labels["type"] == "gateway"
    ]
    assert gateway_sum == [14.0]  # 12 - 10, plus 12 for the refusal that never went upstream
    bandwidth = {s.labels["type"]: s.value for s in got["protogate_bandwidth"].samples if s.name.endswith("_total")}
    assert bandwidth == {"ingress": 200.0, "egress": 600.0}
    assert got["protogate_rate_limit_refusals"].samples[0].value == 1.0


def test_hooks_for_health_runner_calls_config_and_drops() -> None:
    dropped = {"otlp": 3}
    metrics = Metrics(dropped=lambda: dropped)
    metrics.set_upstream_health("u", "10.0.0.1", 80, healthy=False)
    metrics.count_plugin_runner_call("access")
    metrics.count_plugin_runner_call("access", failure="timeout")
    metrics.set_config_version(1, "aaa")
    metrics.set_config_version(2, "bbb")
    got = families(metrics)
    assert got["protogate_upstream_status"].samples[0].value == 0.0
    calls = [s for s in got["protogate_plugin_runner_calls"].samples if s.name.endswith("_total")]
    failures = [s for s in got["protogate_plugin_runner_failures"].samples if s.name.endswith("_total")]
    assert calls[0].value == 2.0
    assert failures[0].labels == {"phase": "access", "reason": "timeout"}
    assert [(s.labels["digest"], s.value) for s in got["protogate_config_version"].samples] == [("bbb", 2.0)]
    assert got["protogate_telemetry_dropped"].samples[0].value == 3.0


async def test_the_endpoint_answers_on_the_export_uri_and_on_metrics(aiohttp_client: Any) -> None:
    metrics = Metrics()
    client = await aiohttp_client(metrics_app(metrics, "/protogate/prometheus/metrics"))
    for path in ("/protogate/prometheus/metrics", "/metrics"):
        response = await client.get(path)
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        assert "protogate_node_info" in await response.text()
