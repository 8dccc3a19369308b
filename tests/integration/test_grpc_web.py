"""gRPC-Web on the HTTP edge: raw HTTP/1.1 requests through the gateway to the real bookstore and a probe."""

from __future__ import annotations

import base64
import http.client
import json
import re
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
from servers.grpc_gateway import start_grpc_gateway
from test_grpc_proxy import PROBE, start_probe

WEB = "application/grpc-web+proto"
TEXT = "application/grpc-web-text"


@pytest.fixture(scope="module")
def pb(bookstore_descriptor_set: Path) -> Iterator[SimpleNamespace]:
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(QUICKSTART / "generated"))
        from bookstore.v1 import bookstore_pb2

        yield SimpleNamespace(m=bookstore_pb2)


@pytest.fixture(scope="module")
def probe() -> Iterator[int]:
    process, port = start_probe()
    yield port
    process.stop()


@pytest.fixture(scope="module")
def gateway(
    bookstore: int, probe: int, bookstore_descriptor_set: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SimpleNamespace]:
    upstream = {"scheme": "grpc", "timeout": {"connect": 1, "read": 3}}
    cors = {
        "allow_origins": "https://app.example.com",
        "allow_methods": "POST,OPTIONS",
        "allow_headers": "content-type,x-grpc-web,x-user-agent,grpc-timeout,apikey",
        "expose_headers": "grpc-status,grpc-message,grpc-status-details-bin",
    }
    config = {
        "protos": [{"id": "bookstore", "descriptor_set": str(bookstore_descriptor_set)}],
        "upstreams": [
            {"id": "bookstore", **upstream, "nodes": {f"127.0.0.1:{bookstore}": 1}},
            {"id": "probe", **upstream, "nodes": {f"127.0.0.1:{probe}": 1}},
        ],
        "consumers": [{"username": "alice", "plugins": {"key-auth": {"key": "alice-key"}}}],
        "routes": [
            {
                "id": "bookstore",
                "uri": "/bookstore.v1.Bookstore/*",
                "upstream_id": "bookstore",
                "plugins": {"cors": cors},
            },
            {"id": "probe", "uri": f"{PROBE}/*", "upstream_id": "probe"},
            {
                "id": "guarded",
                "uri": "/bookstore.v1.Bookstore/EchoHeaders",
                "upstream_id": "bookstore",
                "plugins": {"key-auth": {}, "cors": cors},
            },
            {
                # grpc-transcode takes JSON here, and gRPC-Web beside it
                "id": "transcoded",
                "uri": "/bookstore.v1.Bookstore/GetBook",
                "methods": ["POST"],
                "upstream_id": "bookstore",
                "plugins": {"grpc-transcode": {"proto_id": "bookstore", "auto_mapping": True}},
            },
        ],
    }
    path = tmp_path_factory.mktemp("grpc-web") / "gateway.yaml"
    process, http_address, grpc_address = start_grpc_gateway(config, path)
    host, port = http_address.rsplit(":", 1)
    yield SimpleNamespace(process=process, host=host, port=int(port), grpc=grpc_address)
    process.stop()


def frame(flag: int, payload: bytes) -> bytes:
    return bytes((flag,)) + len(payload).to_bytes(4, "big") + payload


def unframe(body: bytes) -> list[tuple[int, bytes]]:
    frames = []
    while body:
        length = int.from_bytes(body[1:5], "big")
        frames.append((body[0], body[5 : 5 + length]))
        body = body[5 + length :]
    return frames


def from_text(body: bytes) -> bytes:
    # Padded base64 chunks one after another: decode each on its own.
    return b"".join(base64.b64decode(chunk) for chunk in re.findall(rb"[A-Za-z0-9+/]+={0,2}", body))


def trailers(payload: bytes) -> dict[str, str]:
    lines = payload.decode("ascii").split("\r\n")
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}


class WebAnswer(SimpleNamespace):
    status: int
    headers: http.client.HTTPMessage
    messages: list[bytes]
    trailers: dict[str, str]


def call(
    gateway: SimpleNamespace,
    path: str,
    body: bytes,
    *,
    text: bool = False,
    headers: dict[str, str] | None = None,
    raw: bool = False,
) -> WebAnswer:
    data = body if raw else frame(0, body)
    if text and not raw:
        data = base64.b64encode(data)
    conn = http.client.HTTPConnection(gateway.host, gateway.port, timeout=10)
    try:
        sent = {"Content-Type": TEXT if text else WEB, "X-Grpc-Web": "1", **(headers or {})}
        conn.request("POST", path, body=data, headers=sent)
        response = conn.getresponse()
        payload = response.read()
    finally:
        conn.close()
    if text:
        payload = from_text(payload)
    frames = unframe(payload) if response.status == 200 else []
    assert all(flag == 0 for flag, _ in frames[:-1]), frames
    last = frames[-1] if frames else (0, b"")
    assert not frames or last[0] == 0x80, "the body must end with a trailer frame"
    return WebAnswer(
        status=response.status,
        headers=response.headers,
        messages=[p for f, p in frames if f == 0],
        trailers=trailers(last[1]) if last[0] == 0x80 else {},
    )


def test_unary_call(pb: SimpleNamespace, gateway: SimpleNamespace) -> None:
    answer = call(gateway, "/bookstore.v1.Bookstore/GetShelf", pb.m.GetShelfRequest(shelf=2).SerializeToString())
    assert answer.status == 200
    assert answer.headers["Content-Type"] == WEB
    assert answer.headers["x-bookstore-served-by"] == "backend-1"  # initial metadata as headers
    assert pb.m.Shelf.FromString(answer.messages[0]).theme == "Poetry"
    assert answer.trailers["grpc-status"] == "0"


def test_error_with_details_in_the_trailer_frame(pb: SimpleNamespace, gateway: SimpleNamespace) -> None:
    answer = call(gateway, "/bookstore.v1.Bookstore/GetShelf", pb.m.GetShelfRequest(shelf=999).SerializeToString())
    assert answer.status == 200
    assert answer.messages == []
    assert answer.trailers["grpc-status"] == "5"
    assert answer.trailers["grpc-message"] == "Shelf 'shelves/999' not found"
    status = status_pb2.Status.FromString(base64.b64decode(answer.trailers["grpc-status-details-bin"]))
    info = error_details_pb2.ResourceInfo()
    assert status.details[0].Unpack(info)
    assert info.resource_name == "shelves/999"
    # No message came: the status is in the headers as well (a trailers-only answer).
    assert answer.headers["grpc-status"] == "5"


def test_message_is_percent_encoded(gateway: SimpleNamespace) -> None:
    answer = call(gateway, f"{PROBE}/Fail", "9:100% sure: naïve\nline".encode())
    assert answer.trailers["grpc-status"] == "9"
    assert answer.trailers["grpc-message"] == "100%25 sure: na%C3%AFve%0Aline"
    assert answer.trailers["x-probe-trailing"] == "failed"


def test_text_mode_with_chunked_base64(pb: SimpleNamespace, gateway: SimpleNamespace) -> None:
    framed = frame(0, pb.m.GetShelfRequest(shelf=1).SerializeToString())
    # Two padded base64 chunks, as a client that flushes mid-frame sends them.
    body = base64.b64encode(framed[:4]) + base64.b64encode(framed[4:])
    answer = call(gateway, "/bookstore.v1.Bookstore/GetShelf", body, text=True, raw=True)
    assert answer.headers["Content-Type"].startswith(TEXT)
    assert pb.m.Shelf.FromString(answer.messages[0]).theme == "Fiction"
    assert answer.trailers["grpc-status"] == "0"


def test_server_stream_frames_arrive_as_they_are_sent(gateway: SimpleNamespace) -> None:
    conn = http.client.HTTPConnection(gateway.host, gateway.port, timeout=10)
    try:
        started = time.monotonic()
        conn.request("POST", f"{PROBE}/Count", body=frame(0, b"3,500"), headers={"Content-Type": WEB})
        response = conn.getresponse()
        first = response.read1()
        first_at = time.monotonic() - started
        rest = response.read()
        total = time.monotonic() - started
    finally:
        conn.close()
    assert unframe(first)[0] == (0, b"0")
    assert first_at < 0.4 < 0.9 < total  # the first message did not wait for the last
    frames = unframe(first + rest)
    assert [p for f, p in frames if f == 0] == [b"0", b"1", b"2"]
    assert trailers(frames[-1][1])["grpc-status"] == "0"


def test_client_gone_mid_stream_cancels_the_upstream(gateway: SimpleNamespace) -> None:
    with grpc.insecure_channel(gateway.grpc) as channel:
        stats = channel.unary_unary(f"{PROBE}/Stats")
        before = json.loads(stats(b"", timeout=5))["cancelled"].get("Count", 0)
        conn = http.client.HTTPConnection(gateway.host, gateway.port, timeout=10)
        conn.request("POST", f"{PROBE}/Count", body=frame(0, b"100,100"), headers={"Content-Type": WEB})
        conn.getresponse().read1()
        conn.close()
        deadline = time.monotonic() + 5
        while json.loads(stats(b"", timeout=5))["cancelled"].get("Count", 0) == before:
            assert time.monotonic() < deadline, "the backend never saw the cancellation"
            time.sleep(0.1)


def test_client_streaming_is_refused(gateway: SimpleNamespace) -> None:
    answer = call(gateway, f"{PROBE}/Join", frame(0, b"a") + frame(0, b"b"), raw=True)
    assert answer.status == 200
    assert answer.trailers["grpc-status"] == str(grpc.StatusCode.UNIMPLEMENTED.value[0])
    assert "client streaming" in answer.headers["grpc-message"]


def test_grpc_timeout_is_honoured(pb: SimpleNamespace, gateway: SimpleNamespace) -> None:
    started = time.monotonic()
    request = pb.m.SleepRequest(millis=2000).SerializeToString()
    answer = call(gateway, "/bookstore.v1.Bookstore/Sleep", request, headers={"Grpc-Timeout": "300m"})
    assert answer.trailers["grpc-status"] == "4"
    assert time.monotonic() - started < 1.5


def test_key_auth_and_metadata_from_headers(pb: SimpleNamespace, gateway: SimpleNamespace) -> None:
    empty = empty_pb2.Empty().SerializeToString()
    refused = call(gateway, "/bookstore.v1.Bookstore/EchoHeaders", empty)
    assert refused.status == 200
    assert refused.headers["grpc-status"] == "16"
    assert refused.trailers["grpc-status"] == "16"
    headers = {"apikey": "alice-key", "x-blob-bin": "AP8=", "x-note": "hi", "X-Consumer-Username": "mallory"}
    answer = call(gateway, "/bookstore.v1.Bookstore/EchoHeaders", empty, headers=headers)
    echoed = pb.m.EchoHeadersResponse.FromString(answer.messages[0])
    assert echoed.metadata["x-consumer-username"] == "alice"
    assert echoed.metadata["x-blob-bin"] == "AP8="
    assert echoed.metadata["x-note"] == "hi"
    assert answer.trailers["x-bookstore-trailer"] == "done"


def test_cors_preflight_and_exposed_status(pb: SimpleNamespace, gateway: SimpleNamespace) -> None:
    conn = http.client.HTTPConnection(gateway.host, gateway.port, timeout=10)
    try:
        preflight = {
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-grpc-web",
        }
        conn.request("OPTIONS", "/bookstore.v1.Bookstore/GetShelf", headers=preflight)
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    assert response.status == 200
    assert "x-grpc-web" in response.headers["Access-Control-Allow-Headers"]
    answer = call(
        gateway,
        "/bookstore.v1.Bookstore/GetShelf",
        pb.m.GetShelfRequest(shelf=999).SerializeToString(),
        headers={"Origin": "https://app.example.com"},
    )
    assert answer.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "grpc-status" in answer.headers["Access-Control-Expose-Headers"]


def test_transcoded_route_takes_json_and_grpc_web(pb: SimpleNamespace, gateway: SimpleNamespace) -> None:
    conn = http.client.HTTPConnection(gateway.host, gateway.port, timeout=10)
    try:
        body = json.dumps({"shelf": 1, "book": 1})
        conn.request("POST", "/bookstore.v1.Bookstore/GetBook", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        as_json = json.loads(response.read())
    finally:
        conn.close()
    assert as_json["title"] == "The Left Hand of Darkness"
    answer = call(gateway, "/bookstore.v1.Bookstore/GetBook", pb.m.GetBookRequest(shelf=1, book=1).SerializeToString())
    assert pb.m.Book.FromString(answer.messages[0]).title == "The Left Hand of Darkness"


def test_bad_framing_is_a_clean_status(gateway: SimpleNamespace) -> None:
    answer = call(gateway, f"{PROBE}/Echo", b"\x00\x00\x00\x00\x09abc", raw=True)
    assert answer.headers["grpc-status"] == str(grpc.StatusCode.INVALID_ARGUMENT.value[0])
    answer = call(gateway, f"{PROBE}/Echo", b"not base64!", text=True, raw=True)
    assert answer.headers["grpc-status"] == str(grpc.StatusCode.INVALID_ARGUMENT.value[0])


def test_json_on_a_grpc_only_route_is_refused(gateway: SimpleNamespace) -> None:
    conn = http.client.HTTPConnection(gateway.host, gateway.port, timeout=10)
    try:
        conn.request("POST", f"{PROBE}/Echo", body=b"{}", headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        body: Any = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 415
    assert body["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def test_bookstore_server_stream_arrives_book_by_book(pb: SimpleNamespace, gateway: SimpleNamespace) -> None:
    request = pb.m.StreamBooksRequest(shelf=1, limit=3, interval_ms=400).SerializeToString()
    conn = http.client.HTTPConnection(gateway.host, gateway.port, timeout=10)
    try:
        started = time.monotonic()
        conn.request(
            "POST", "/bookstore.v1.Bookstore/StreamBooks", body=frame(0, request), headers={"Content-Type": WEB}
        )
        response = conn.getresponse()
        first = response.read1()
        first_at = time.monotonic() - started
        rest = response.read()
        total = time.monotonic() - started
    finally:
        conn.close()
    assert first_at < 0.35 < 0.7 < total
    frames = unframe(first + rest)
    titles = [pb.m.Book.FromString(p).title for f, p in frames if f == 0]
    assert titles == ["The Left Hand of Darkness", "A Wizard of Earthsea", "Middlemarch"]
    assert trailers(frames[-1][1])["grpc-status"] == "0"


def test_bookstore_stream_that_fails_midway(pb: SimpleNamespace, gateway: SimpleNamespace) -> None:
    request = pb.m.StreamBooksRequest(shelf=1, fail_after=2).SerializeToString()
    answer = call(gateway, "/bookstore.v1.Bookstore/StreamBooks", request)
    assert len(answer.messages) == 2
    assert "grpc-status" not in answer.headers  # messages came first: the status is in the trailer frame only
    assert answer.trailers["grpc-status"] == str(grpc.StatusCode.ABORTED.value[0])
    status = status_pb2.Status.FromString(base64.b64decode(answer.trailers["grpc-status-details-bin"]))
    assert status.details[0].Is(error_details_pb2.ErrorInfo.DESCRIPTOR)
