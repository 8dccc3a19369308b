"""The native gRPC listener is observed as the HTTP edge is: one trace client -> gateway -> backend, access log
lines and Prometheus metrics, with a real OTLP receiver and a real gateway process."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from gateway_harness import QUICKSTART
from google.protobuf import empty_pb2
from processes import Process
from prometheus_client.parser import text_string_to_metric_families
from servers.grpc_gateway import start_grpc_gateway
from servers.otlp_receiver import OtlpReceiver, ReceivedSpan

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
SERVER, CLIENT = 2, 3  # OTLP span kinds
ECHO = "bookstore.v1.Bookstore/EchoHeaders"


@dataclass
class Observed:
    process: Process
    grpc_address: str
    access_log: Path


@pytest.fixture(scope="module")
def pb(bookstore_descriptor_set: Path) -> Iterator[SimpleNamespace]:
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(QUICKSTART / "generated"))
        from bookstore.v1 import bookstore_pb2, bookstore_pb2_grpc

        yield SimpleNamespace(m=bookstore_pb2, grpc=bookstore_pb2_grpc)


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    otlp = OtlpReceiver().start()
    yield otlp
    otlp.stop()


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory, bookstore: int, receiver: OtlpReceiver) -> Iterator[Observed]:
    tmp = tmp_path_factory.mktemp("grpc-observed")
    access_log = tmp / "access.log"
    config: dict[str, Any] = {
        "upstreams": [{"id": "bookstore", "scheme": "grpc", "nodes": {f"127.0.0.1:{bookstore}": 1}}],
        "routes": [{"id": "bookstore", "uri": "/bookstore.v1.Bookstore/*", "upstream_id": "bookstore"}],
        "global_rules": [
            {"id": "observe", "plugins": {"opentelemetry": {"sampler": {"name": "always_on"}}, "prometheus": {}}}
        ],
        "telemetry": {
            "tracing": {"endpoint": receiver.endpoint, "batch": {"schedule_delay": 0.05}},
            "prometheus": {"export_addr": "127.0.0.1:0"},
            "access_log": {"enabled": True, "path": str(access_log), "flush_interval": 0.05},
        },
    }
    process, _, grpc_address = start_grpc_gateway(config, tmp / "gateway.yaml")
    yield Observed(process, grpc_address, access_log)
    process.stop()


def wait_until(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.05)
    return value


def log_entries(observed: Observed) -> list[dict[str, Any]]:
    lines = observed.access_log.read_text().splitlines() if observed.access_log.exists() else []
    return [json.loads(line) for line in lines]


def of_trace(spans: list[ReceivedSpan], trace_id: str) -> dict[tuple[str, int], ReceivedSpan]:
    return {(span.name, span.kind): span for span in spans if span.trace_id == trace_id}


def test_one_trace_from_a_grpc_client_through_the_listener_to_the_backend(
    pb: SimpleNamespace, observed: Observed, receiver: OtlpReceiver, bookstore: int
) -> None:
    metadata = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),)
    with grpc.insecure_channel(observed.grpc_address) as channel:
        reply = pb.grpc.BookstoreStub(channel).EchoHeaders(empty_pb2.Empty(), metadata=metadata, timeout=10)

    wanted = {(ECHO, SERVER), (ECHO, CLIENT)}
    spans = of_trace(receiver.wait_for(lambda got: wanted <= set(of_trace(got, TRACE_ID))), TRACE_ID)
    server, client = spans[(ECHO, SERVER)], spans[(ECHO, CLIENT)]
    assert (server.parent_span_id, server.service_name) == (PARENT_ID, "protogate")
    assert server.attributes["rpc.system"] == "grpc"
    assert (server.attributes["rpc.service"], server.attributes["rpc.method"]) == (
        "bookstore.v1.Bookstore",
        "EchoHeaders",
    )
    assert server.attributes["rpc.grpc.status_code"] == 0
    assert server.attributes["protogate.route_id"] == "bookstore"
    assert client.parent_span_id == server.span_id
    assert (client.attributes["server.address"], client.attributes["server.port"]) == ("127.0.0.1", bookstore)
    # The backend's parent is the gateway's client span, in the client's trace.
    assert reply.metadata["traceparent"] == f"00-{TRACE_ID}-{client.span_id}-01"

    (entry,) = wait_until(lambda: [e for e in log_entries(observed) if e["trace_id"] == TRACE_ID])
    assert (entry["method"], entry["path"], entry["status"], entry["protocol"]) == ("POST", f"/{ECHO}", 200, "HTTP/2.0")
    assert entry["route_id"] == "bookstore" and entry["upstream_status"] == "OK"
    assert entry["span_id"] == server.span_id


def test_failed_and_unrouted_calls_are_logged_and_counted(pb: SimpleNamespace, observed: Observed) -> None:
    with grpc.insecure_channel(observed.grpc_address) as channel:
        stub = pb.grpc.BookstoreStub(channel)
        with pytest.raises(grpc.RpcError) as missing:
            stub.GetShelf(pb.m.GetShelfRequest(shelf=999), timeout=10)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as unrouted:
            channel.unary_unary("/nowhere.v1.Nothing/Call")(b"", timeout=10)
        assert unrouted.value.code() == grpc.StatusCode.UNIMPLEMENTED

    def logged() -> dict[str, dict[str, Any]]:
        return {e["path"]: e for e in log_entries(observed) if e["path"] in wanted}

    wanted = {"/bookstore.v1.Bookstore/GetShelf", "/nowhere.v1.Nothing/Call"}
    entries = wait_until(lambda: len(logged()) == 2 and logged())
    assert entries["/bookstore.v1.Bookstore/GetShelf"]["status"] == 404
    assert entries["/bookstore.v1.Bookstore/GetShelf"]["upstream_status"] == "NOT_FOUND"
    assert (entries["/nowhere.v1.Nothing/Call"]["status"], entries["/nowhere.v1.Nothing/Call"]["route_id"]) == (501, "")

    line = next(line for line in observed.process.output if "metrics on http://" in line)
    text = urllib.request.urlopen(line.rsplit(" ", 1)[1].strip(), timeout=5).read().decode()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    statuses = {
        s.labels["code"]
        for s in families["protogate_http_status"].samples
        if s.labels["route"] == "bookstore" and s.name.endswith("_total")
    }
    assert "404" in statuses
