"""The native gRPC listener: grpcio clients through the gateway to the real bookstore and a raw-bytes probe."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from gateway_harness import QUICKSTART
from google.protobuf import empty_pb2
from google.rpc import error_details_pb2, status_pb2
from processes import BIN, REPO, Process, start
from servers.grpc_gateway import start_grpc_gateway

PROBE = "/probe.v1.Probe"


@pytest.fixture(scope="module")
def pb(bookstore_descriptor_set: Path) -> Iterator[SimpleNamespace]:
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(QUICKSTART / "generated"))
        from bookstore.v1 import bookstore_pb2, bookstore_pb2_grpc

        yield SimpleNamespace(m=bookstore_pb2, grpc=bookstore_pb2_grpc)


def start_probe() -> tuple[Process, int]:
    probe = start([str(BIN / "python"), str(REPO / "tests" / "servers" / "grpc_probe.py"), "--port", "0"])
    try:
        line = probe.wait_for("grpc probe listening on")
    except BaseException:
        probe.stop()
        raise
    return probe, int(line.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def probe() -> Iterator[int]:
    process, port = start_probe()
    yield port
    process.stop()


def grpc_config(bookstore_port: int, probe_port: int) -> dict[str, Any]:
    """Bookstore and probe behind plain gRPC routes; a few exact routes carry plugins."""
    upstream = {"scheme": "grpc", "timeout": {"connect": 1, "read": 3}}
    return {
        "upstreams": [
            {"id": "bookstore", **upstream, "nodes": {f"127.0.0.1:{bookstore_port}": 1}},
            {"id": "probe", **upstream, "nodes": {f"127.0.0.1:{probe_port}": 1}},
            {"id": "nowhere", **upstream, "nodes": {"127.0.0.1:1": 1}},
        ],
        "consumers": [{"username": "alice", "plugins": {"key-auth": {"key": "alice-key"}}}],
        "routes": [
            {"id": "bookstore", "uri": "/bookstore.v1.Bookstore/*", "upstream_id": "bookstore"},
            {"id": "probe", "uri": f"{PROBE}/*", "upstream_id": "probe"},
            {"id": "down", "uri": "/down.v1.Down/*", "upstream_id": "nowhere"},
            {
                "id": "guarded",
                "uri": "/bookstore.v1.Bookstore/EchoHeaders",
                "upstream_id": "bookstore",
                "plugins": {"key-auth": {}},
            },
            {
                "id": "limited",
                "uri": "/bookstore.v1.Bookstore/GetStats",
                "upstream_id": "bookstore",
                "plugins": {"limit-count": {"count": 2, "time_window": 60, "rejected_code": 429}},
            },
            {
                "id": "restricted",
                "uri": "/bookstore.v1.Bookstore/ListShelves",
                "upstream_id": "bookstore",
                "plugins": {"ip-restriction": {"whitelist": ["10.9.8.7"]}},
            },
        ],
    }


@pytest.fixture(scope="module")
def gateway(bookstore: int, probe: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    path = tmp_path_factory.mktemp("grpc-proxy") / "gateway.yaml"
    process, http_address, grpc_address = start_grpc_gateway(grpc_config(bookstore, probe), path)
    yield SimpleNamespace(process=process, http=http_address, grpc=grpc_address)
    process.stop()


@pytest.fixture
def channel(gateway: SimpleNamespace) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gateway.grpc) as channel:
        yield channel


@pytest.fixture
def stub(pb: SimpleNamespace, channel: grpc.Channel) -> Any:
    return pb.grpc.BookstoreStub(channel)


def rich_status(err: grpc.RpcError) -> status_pb2.Status:
    for key, value in err.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    raise AssertionError("no grpc-status-details-bin in the trailing metadata")


def probe_stats(channel: grpc.Channel) -> dict[str, Any]:
    return json.loads(channel.unary_unary(f"{PROBE}/Stats")(b"", timeout=5))


def test_unary_call_with_its_metadata(pb: SimpleNamespace, stub: Any) -> None:
    shelf, call = stub.GetShelf.with_call(pb.m.GetShelfRequest(shelf=1), timeout=5)
    assert shelf.theme == "Fiction"
    assert call.code() == grpc.StatusCode.OK
    assert ("x-bookstore-served-by", "backend-1") in call.initial_metadata()


def test_error_keeps_code_message_and_details(pb: SimpleNamespace, stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetShelf(pb.m.GetShelfRequest(shelf=999), timeout=5)
    err = caught.value
    assert err.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    assert err.details() == "Shelf 'shelves/999' not found"  # type: ignore[attr-defined]
    status = rich_status(err)
    assert status.code == grpc.StatusCode.NOT_FOUND.value[0]
    info = error_details_pb2.ResourceInfo()
    assert status.details[0].Unpack(info)
    assert info.resource_name == "shelves/999"


def test_deadline_goes_upstream(pb: SimpleNamespace, stub: Any) -> None:
    echoed = stub.EchoHeaders(empty_pb2.Empty(), timeout=2, metadata=[("apikey", "alice-key")])
    assert 1.0 < echoed.time_remaining.ToNanoseconds() / 1e9 <= 2.1  # grpc rounds timeouts up a little
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        stub.Sleep(pb.m.SleepRequest(millis=2000), timeout=0.3)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    assert time.monotonic() - started < 1.5


def test_call_without_deadline_gets_the_read_timeout(pb: SimpleNamespace, stub: Any) -> None:
    echoed = stub.EchoHeaders(empty_pb2.Empty(), metadata=[("apikey", "alice-key")])
    assert 2.0 < echoed.time_remaining.ToNanoseconds() / 1e9 <= 3.1  # the upstream's read timeout: 3s


def test_metadata_goes_upstream_without_forged_identity(pb: SimpleNamespace, stub: Any) -> None:
    metadata = [
        ("apikey", "alice-key"),
        ("x-trace-me", "please"),
        ("x-blob-bin", b"\x00\xff"),
        ("x-consumer-username", "mallory"),
    ]
    echoed, call = stub.EchoHeaders.with_call(empty_pb2.Empty(), timeout=5, metadata=metadata)
    received = dict(echoed.metadata)
    assert received["x-trace-me"] == "please"
    assert received["x-blob-bin"] == "AP8="  # the backend shows binary values in base64
    assert received["x-consumer-username"] == "alice"
    assert received["x-forwarded-for"] == "127.0.0.1"
    assert ("x-bookstore-trailer", "done") in call.trailing_metadata()


def test_key_auth_refuses_a_missing_or_wrong_key(pb: SimpleNamespace, stub: Any) -> None:
    empty = empty_pb2.Empty()
    for metadata in ([], [("apikey", "wrong")]):
        with pytest.raises(grpc.RpcError) as caught:
            stub.EchoHeaders(empty, timeout=5, metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    assert "API key" in caught.value.details()  # type: ignore[attr-defined]


def test_limit_count_refuses_with_resource_exhausted(pb: SimpleNamespace, stub: Any) -> None:
    for _ in range(2):
        stub.GetStats(pb.m.GetStatsRequest(), timeout=5)
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetStats(pb.m.GetStatsRequest(), timeout=5)
    err = caught.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    trailing = dict(err.trailing_metadata())  # type: ignore[attr-defined]
    assert trailing["x-ratelimit-remaining"] == "0"
    assert int(trailing["retry-after"]) >= 1


def test_ip_restriction_reads_the_peer_not_forwarded_metadata(pb: SimpleNamespace, stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListShelves(pb.m.ListShelvesRequest(), timeout=5, metadata=[("x-forwarded-for", "10.9.8.7")])
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]


def test_unknown_method_is_unimplemented(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary("/other.v1.Nothing/Here")(b"", timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]


def test_upstream_down_is_unavailable_without_its_address(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary("/down.v1.Down/Call")(b"", timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert "127.0.0.1" not in caught.value.details()  # type: ignore[attr-defined]


def test_all_four_shapes(channel: grpc.Channel) -> None:
    echoed, call = channel.unary_unary(f"{PROBE}/Echo").with_call(b"ping", timeout=5)
    assert echoed == b"ping"
    assert ("x-probe-initial", "yes") in call.initial_metadata()
    assert ("x-probe-trailing", "done") in call.trailing_metadata()
    assert list(channel.unary_stream(f"{PROBE}/Count")(b"4", timeout=5)) == [b"0", b"1", b"2", b"3"]
    assert channel.stream_unary(f"{PROBE}/Join")(iter([b"a", b"b", b"c"]), timeout=5) == b"a|b|c"
    assert list(channel.stream_stream(f"{PROBE}/Chat")(iter([b"x", b"yz"]), timeout=5)) == [b"X", b"YZ"]


def test_upstream_status_and_trailers_pass_through(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(f"{PROBE}/Fail")(b"9:not now", timeout=5)
    err = caught.value
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert err.details() == "not now"  # type: ignore[attr-defined]
    assert ("x-probe-trailing", "failed") in err.trailing_metadata()  # type: ignore[attr-defined]


def test_client_cancel_reaches_the_backend(channel: grpc.Channel) -> None:
    before = probe_stats(channel)["cancelled"].get("Hang", 0)
    future = channel.unary_unary(f"{PROBE}/Hang").future(b"", timeout=10)
    time.sleep(0.3)
    future.cancel()
    deadline = time.monotonic() + 3
    while probe_stats(channel)["cancelled"].get("Hang", 0) == before:
        assert time.monotonic() < deadline, "the backend never saw the cancellation"
        time.sleep(0.05)


def test_bidi_stream_is_relayed_as_messages_arrive(channel: grpc.Channel) -> None:
    import queue

    outbox: queue.Queue[bytes | None] = queue.Queue()

    def requests() -> Iterator[bytes]:
        while (item := outbox.get()) is not None:
            yield item

    replies = channel.stream_stream(f"{PROBE}/Chat")(requests(), timeout=10)
    for word in (b"one", b"two", b"three"):
        outbox.put(word)
        assert next(replies) == word.upper()  # answered before the client sends the next one
    outbox.put(None)
    assert list(replies) == []


def test_server_stream_applies_back_pressure(channel: grpc.Channel) -> None:
    replies = channel.unary_stream(f"{PROBE}/Flood")(b"200", timeout=20)
    assert len(next(replies)) == 1024 * 1024
    time.sleep(1.0)  # the client reads nothing: the backend must stall, not fill the gateway's memory
    sent = probe_stats(channel)["sent"]
    assert sent < 100, f"the backend wrote {sent} MiB while the client read 1"
    assert sum(1 for _ in replies) == 199


def test_bookstore_streams_through_the_listener(pb: SimpleNamespace, stub: Any) -> None:
    books = list(stub.StreamBooks(pb.m.StreamBooksRequest(shelf=2), timeout=5))
    assert [book.title for book in books] == ["Leaves of Grass", "Ariel"]
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.StreamBooks(pb.m.StreamBooksRequest(shelf=1, fail_after=1), timeout=5))
    assert caught.value.code() == grpc.StatusCode.ABORTED  # type: ignore[attr-defined]
    assert rich_status(caught.value).details[0].Is(error_details_pb2.ErrorInfo.DESCRIPTOR)


def test_bookstore_chat_and_import_through_the_listener(pb: SimpleNamespace, stub: Any) -> None:
    messages = [pb.m.ChatMessage(user="ann", text="hello"), pb.m.ChatMessage(user="ann", text="/count")]
    answers = list(stub.Chat(iter(messages), timeout=5))
    assert [a.sequence for a in answers] == [1, 2]
    assert answers[0].text == "ann said: hello"
    with pytest.raises(grpc.RpcError) as caught:
        stub.ImportBooks(iter([pb.m.CreateBookRequest(shelf=1, book=pb.m.Book(title=" "))]), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert caught.value.details().startswith("book #1:")  # type: ignore[attr-defined]


def test_server_stream_cancel_reaches_the_backend(channel: grpc.Channel) -> None:
    before = probe_stats(channel)["cancelled"].get("Count", 0)
    replies = channel.unary_stream(f"{PROBE}/Count")(b"100,100", timeout=10)
    assert next(replies) == b"0"
    replies.cancel()  # type: ignore[attr-defined]
    deadline = time.monotonic() + 3
    while probe_stats(channel)["cancelled"].get("Count", 0) == before:
        assert time.monotonic() < deadline, "the backend never saw the cancellation"
        time.sleep(0.05)
