"""Observability end to end: the real gateway and bookstore backend, a real OTLP receiver, the metrics
endpoint scraped and parsed, access log lines, and http-logger batches to a real HTTP receiver."""

from __future__ import annotations

import http.server
import json
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from gateway_harness import Client, Gateway, bookstore_config, start_gateway
from processes import BIN, start
from prometheus_client.parser import text_string_to_metric_families
from servers.otlp_receiver import OtlpReceiver, ReceivedSpan

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
SERVER, CLIENT = 2, 3  # OTLP span kinds
ERROR = 2  # OTLP status code


class LogReceiver:
    """An HTTP endpoint for http-logger: records each POST body; answers 500 to the first `fail_first` posts."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[bytes] = []
        self.fail_first = fail_first
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                failing = receiver.fail_first > 0
                receiver.fail_first -= 1
                if not failing:
                    receiver.bodies.append(body)
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/logs"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def entries(self) -> list[dict[str, Any]]:
        return [entry for body in list(self.bodies) for entry in json.loads(body)]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_until(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.05)


def metrics_url(gateway: Gateway) -> str:
    line = next(line for line in gateway.process.output if "metrics on http://" in line)
    return line.rsplit(" ", 1)[1].strip()


def scrape(gateway: Gateway) -> dict[str, Any]:
    text = urllib.request.urlopen(metrics_url(gateway), timeout=5).read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    otlp = OtlpReceiver().start()
    yield otlp
    otlp.stop()


@pytest.fixture(scope="module")
def log_receiver() -> Iterator[LogReceiver]:
    logs = LogReceiver(fail_first=1)  # the first batch is retried once
    yield logs
    logs.stop()


@pytest.fixture(scope="module")
def observed(
    tmp_path_factory: pytest.TempPathFactory,
    bookstore_descriptor_set: Path,
    bookstore: int,
    receiver: OtlpReceiver,
    log_receiver: LogReceiver,
) -> Iterator[tuple[Gateway, Path]]:
    """A gateway with everything on: traces to the receiver, metrics, access log, http-logger."""
    tmp = tmp_path_factory.mktemp("observed")
    config = bookstore_config(bookstore_descriptor_set, bookstore)
    otel = {
        "sampler": {"name": "always_on"},
        "additional_attributes": ["route_id"],
        "additional_header_prefix_attributes": ["X-Tenant"],
    }
    http_logger = {"uri": log_receiver.url, "batch_max_size": 5, "inactive_timeout": 0.1, "max_retry_count": 1}
    http_logger["retry_delay"] = 0.05
    config["global_rules"] = [
        {"id": "observe", "plugins": {"opentelemetry": otel, "prometheus": {}, "http-logger": http_logger}}
    ]
    access_log = tmp / "access.log"
    config["telemetry"] = {
        "tracing": {"endpoint": receiver.endpoint, "batch": {"schedule_delay": 0.05}},
        "prometheus": {"export_addr": "127.0.0.1:0"},
        "access_log": {"enabled": True, "path": str(access_log), "flush_interval": 0.05},
    }
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    gateway = start_gateway(path)
    yield gateway, access_log
    gateway.process.stop()


def spans_of(spans: list[ReceivedSpan], trace_id: str) -> dict[str, ReceivedSpan]:
    return {span.name: span for span in spans if span.trace_id == trace_id}


def test_one_trace_from_the_client_through_the_gateway_to_the_backend(
    observed: tuple[Gateway, Path], receiver: OtlpReceiver, bookstore: int
) -> None:
    gateway, _ = observed
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "X-Tenant-Id": "acme"}
    status, _, body = Client(gateway).get("/v1/debug/metadata", headers=headers)
    assert status == 200

    names = {"GET /v1/*", "bookstore.v1.Bookstore/EchoHeaders", "transcode request", "transcode response"}
    spans = spans_of(receiver.wait_for(lambda got: names <= set(spans_of(got, TRACE_ID))), TRACE_ID)
    server, client = spans["GET /v1/*"], spans["bookstore.v1.Bookstore/EchoHeaders"]
    # the client's trace is continued: same trace id, the client's span is the server span's parent
    assert (server.parent_span_id, server.kind, server.service_name) == (PARENT_ID, SERVER, "protogate")
    assert server.attributes["http.route"] == "/v1/*"
    assert server.attributes["http.request.method"] == "GET"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["route_id"] == "rest"
    assert server.attributes["X-Tenant-Id"] == "acme"
    assert server.status_code != ERROR
    assert (client.parent_span_id, client.kind) == (server.span_id, CLIENT)
    assert client.attributes["rpc.system"] == "grpc"
    assert client.attributes["rpc.service"] == "bookstore.v1.Bookstore"
    assert client.attributes["rpc.method"] == "EchoHeaders"
    assert client.attributes["rpc.grpc.status_code"] == 0
    assert (client.attributes["server.address"], client.attributes["server.port"]) == ("127.0.0.1", bookstore)
    for name in ("transcode request", "transcode response"):
        assert spans[name].parent_span_id == server.span_id
    # the backend saw the gateway's client span as its parent, in the same trace
    assert body["metadata"]["traceparent"] == f"00-{TRACE_ID}-{client.span_id}-01"


def test_a_new_trace_starts_without_traceparent_and_reaches_the_backend(
    observed: tuple[Gateway, Path], receiver: OtlpReceiver
) -> None:
    gateway, _ = observed
    status, _, body = Client(gateway).get("/v1/debug/metadata")
    assert status == 200
    _, trace_id, span_id, flags = body["metadata"]["traceparent"].split("-")
    assert int(flags, 16) & 1  # sampled
    spans = spans_of(receiver.wait_for(lambda got: len(spans_of(got, trace_id)) >= 2), trace_id)
    assert spans["bookstore.v1.Bookstore/EchoHeaders"].span_id == span_id
    assert spans["GET /v1/*"].parent_span_id == ""


def test_an_upstream_error_sets_the_client_span_status_and_records_it(
    observed: tuple[Gateway, Path], receiver: OtlpReceiver
) -> None:
    gateway, _ = observed
    trace_id = "11112222333344445555666677778888"
    status, _, _ = Client(gateway).get("/v1/shelves/999", headers={"traceparent": f"00-{trace_id}-{PARENT_ID}-01"})
    assert status == 404
    spans = spans_of(receiver.wait_for(lambda got: len(spans_of(got, trace_id)) >= 2), trace_id)
    client, server = spans["bookstore.v1.Bookstore/GetShelf"], spans["GET /v1/*"]
    assert (client.status_code, client.attributes["rpc.grpc.status_code"]) == (ERROR, 5)
    assert "exception" in client.events
    # a 4xx is the client's mistake: not an error of the server span (HTTP semantic conventions)
    assert server.status_code != ERROR
    assert server.attributes["http.response.status_code"] == 404


def test_metrics_endpoint_counts_traffic_by_route_status_and_node(
    observed: tuple[Gateway, Path], bookstore: int
) -> None:
    gateway, _ = observed
    client = Client(gateway)
    for _ in range(3):
        assert client.get("/v1/shelves")[0] == 200
    assert client.get("/nowhere")[0] == 404

    families = scrape(gateway)
    node = f"127.0.0.1:{bookstore}"
    ok = [
        s
        for s in families["protogate_http_status"].samples
        if s.labels["code"] == "200" and s.labels["route"] == "rest" and s.name.endswith("_total")
    ]
    assert ok and ok[0].value >= 3
    assert ok[0].labels["matched_uri"] == "/v1/*"
    assert ok[0].labels["node"] == node
    latency = {
        s.labels["type"]: s.value
        for s in families["protogate_http_latency"].samples
        if s.name.endswith("_count") and s.labels["route"] == "rest"
    }
    assert latency["request"] >= 3 and latency["upstream"] >= 3 and latency["gateway"] >= 3
    bandwidth = {
        s.labels["type"]: s.value for s in families["protogate_bandwidth"].samples if s.labels["route"] == "rest"
    }
    assert bandwidth["ingress"] > 0 and bandwidth["egress"] > 0
    assert families["protogate_http_requests"].samples[0].value >= 4  # the unmatched one too
    assert families["protogate_node_info"].samples[0].value == 1
    assert families["protogate_config_version"].samples[0].value == 1


def test_access_log_has_one_json_line_per_request(observed: tuple[Gateway, Path], receiver: OtlpReceiver) -> None:
    gateway, access_log = observed
    trace_id = "aaaabbbbccccddddeeeeffff00001111"
    status, _, _ = Client(gateway).get("/v1/shelves/1", headers={"traceparent": f"00-{trace_id}-{PARENT_ID}-01"})
    assert status == 200

    def mine() -> list[dict[str, Any]]:
        lines = access_log.read_text().splitlines() if access_log.exists() else []
        return [entry for entry in map(json.loads, lines) if entry["trace_id"] == trace_id]

    (entry,) = wait_until(mine)
    assert entry["route_id"] == "rest"
    assert (entry["method"], entry["path"], entry["status"]) == ("GET", "/v1/shelves/1", 200)
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", entry["time"])
    assert entry["upstream_addr"].startswith("127.0.0.1:") and entry["upstream_status"] == "OK"
    assert entry["request_size"] > 0 and entry["response_size"] > 0
    assert entry["latency_ms"] >= entry["upstream_latency_ms"] >= 0
    server = spans_of(receiver.wait_for(lambda got: bool(spans_of(got, trace_id))), trace_id)["GET /v1/*"]
    assert entry["span_id"] == server.span_id


def test_http_logger_batches_entries_and_retries_a_failed_batch(
    observed: tuple[Gateway, Path], log_receiver: LogReceiver
) -> None:
    gateway, _ = observed
    client = Client(gateway)
    for _ in range(2):
        assert client.get("/v1/shelves", headers={"X-Request-Id": "logged-1"})[0] == 200
    entries = wait_until(lambda: [e for e in log_receiver.entries() if e["request_id"] == "logged-1"])
    assert len(entries) == 2
    assert entries[0]["route_id"] == "rest" and entries[0]["status"] == 200


def test_a_dead_collector_changes_no_answer_and_costs_no_time(
    tmp_path: Path, bookstore_descriptor_set: Path, bookstore: int
) -> None:
    config = bookstore_config(bookstore_descriptor_set, bookstore)
    config["global_rules"] = [{"id": "o", "plugins": {"opentelemetry": {"sampler": {"name": "always_on"}}}}]
    config["telemetry"] = {
        "tracing": {
            "endpoint": f"http://127.0.0.1:{closed_port()}",
            "batch": {"schedule_delay": 0.05, "export_timeout": 0.3, "max_queue_size": 64},
        },
        "prometheus": {"enabled": True, "export_addr": "127.0.0.1:0"},
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    gateway = start_gateway(path)
    try:
        client = Client(gateway)
        started = time.monotonic()
        for _ in range(40):
            status, _, body = client.get("/v1/shelves/1")
            assert (status, body["id"]) == (200, "1")
        assert time.monotonic() - started < 5.0

        def dropped() -> float:
            samples = scrape(gateway).get("protogate_telemetry_dropped")
            return sum(s.value for s in samples.samples if s.labels.get("sink") == "otlp") if samples else 0

        assert wait_until(dropped) > 0
    finally:
        stopping = time.monotonic()
        gateway.process.stop()
        assert time.monotonic() - stopping < 8.0
    warnings = [line for line in gateway.process.output if "trace export failing" in line]
    assert len(warnings) == 1  # rate-limited


def test_without_tracing_the_clients_traceparent_passes_as_before(
    tmp_path: Path, bookstore_descriptor_set: Path, bookstore: int
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(bookstore_config(bookstore_descriptor_set, bookstore)))
    gateway = start_gateway(path)
    try:
        traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
        status, _, body = Client(gateway).get("/v1/debug/metadata", headers={"traceparent": traceparent})
        assert (status, body["metadata"]["traceparent"]) == (200, traceparent)
        assert not any("metrics on" in line for line in gateway.process.output)
    finally:
        gateway.process.stop()


def test_otel_environment_variables_alone_turn_tracing_on(
    tmp_path: Path, bookstore_descriptor_set: Path, bookstore: int, receiver: OtlpReceiver
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(bookstore_config(bookstore_descriptor_set, bookstore)))
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": "edge-gw",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    process = start([str(BIN / "protogate"), "run", "-c", str(path), "--listen", "127.0.0.1:0"], env=env)
    try:
        gateway = Gateway(process, process.wait_for("listening on http://").rsplit("http://", 1)[1].strip())
        trace_id = "99998888777766665555444433332222"
        headers = {"traceparent": f"00-{trace_id}-{PARENT_ID}-01"}
        assert Client(gateway).get("/v1/shelves", headers=headers)[0] == 200
        spans = spans_of(receiver.wait_for(lambda got: len(spans_of(got, trace_id)) >= 2), trace_id)
        assert spans["GET /v1/*"].service_name == "edge-gw"
    finally:
        process.stop()
