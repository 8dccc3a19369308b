"""prometheus: config refusals, then the log hook turning a finished request into metrics."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families
from transform_support import answer, issues, make_ctx

from gateway.config.loader import load_document
from gateway.pipeline import PluginChain
from gateway.plugins.prometheus import Prometheus
from gateway.telemetry import Telemetry, request_record

UPSTREAM = {"id": "u", "scheme": "http", "nodes": {"127.0.0.1:1": 1}}


def test_config_refuses_bad_input_with_paths() -> None:
    assert issues("prometheus", {"prefer_name": "maybe"})[0].startswith("routes[0].plugins.prometheus.prefer_name: ")
    assert issues("prometheus", {"unknown": 1})[0].startswith("routes[0].plugins.prometheus.unknown: ")


async def test_log_records_status_latency_and_rate_limit_refusals() -> None:
    route = {
        "id": "r",
        "name": "named",
        "uri": "/echo",
        "upstream_id": "u",
        "plugins": {"prometheus": {"prefer_name": True}},
    }
    loaded = load_document({"upstreams": [UPSTREAM], "routes": [route]})
    hub = Telemetry(loaded)
    chain = PluginChain.build(loaded.route_plugins["r"].values())
    plugin = chain.instances["prometheus"]
    assert isinstance(plugin, Prometheus) and hub.metrics is not None
    for status, headers in ((200, {}), (429, {"Retry_After": "1"})):
        ctx = make_ctx()
        hub.begin(ctx, (chain,))
        record = request_record(ctx)
        assert record is not None
        record.upstream_addr = "127.0.0.1:1"
        record.upstream_started = record.upstream_ended = time.monotonic()
        await plugin.log(ctx, answer(status, source="gateway" if status == 429 else "upstream", **headers))
    text = hub.metrics.exposition().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    statuses = [s for s in families["protogate_http_status"].samples if s.name.endswith("_total")]
    assert {(s.labels["code"], s.labels["route"], s.labels["node"]) for s in statuses} == {
        ("200", "named", "127.0.0.1:1"),
        ("429", "named", "127.0.0.1:1"),
    }
    assert families["protogate_rate_limit_refusals"].samples[0].value == 1.0
