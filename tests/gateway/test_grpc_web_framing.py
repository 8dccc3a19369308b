"""gRPC-Web framing and answers, gRPC metadata mapping and render_grpc: pure functions, no server."""

from __future__ import annotations

import base64
import json

import grpc
import pytest
from multidict import CIMultiDict

from gateway.consumers import EMPTY_CONSUMERS
from gateway.errors import GatewayError
from gateway.grpc_context import call_context, metadata_headers, peer_ip, upstream_metadata
from gateway.grpc_proxy import render_grpc, reply_error
from gateway.grpc_web import (
    as_grpc_web,
    decode_text,
    is_grpc_web,
    pack_frame,
    percent_encode,
    status_answer,
    trailer_block,
    unpack_frames,
)
from gateway.responses import ProxyResponse, Reply
from gateway.upstream.http import HOP_BY_HOP
from transcoder.status import Code


def test_frames_round_trip_and_truncation_is_refused() -> None:
    body = pack_frame(0, b"abc") + pack_frame(0x80, b"") + pack_frame(0, b"")
    assert unpack_frames(body) == [(0, b"abc"), (0x80, b""), (0, b"")]
    for cut in (body[:3], body[:7]):
        with pytest.raises(GatewayError) as caught:
            unpack_frames(cut)
        assert caught.value.code == Code.INVALID_ARGUMENT


def test_text_bodies_in_padded_chunks() -> None:
    data = pack_frame(0, b"hello world")
    chunked = base64.b64encode(data[:1]) + b"\r\n" + base64.b64encode(data[1:7]) + base64.b64encode(data[7:])
    assert decode_text(chunked) == data
    assert decode_text(base64.b64encode(data)) == data
    with pytest.raises(GatewayError):
        decode_text(b"abc")  # not a whole base64 quantum
    with pytest.raises(GatewayError):
        decode_text(b"ab!d")


def test_content_types() -> None:
    for value in ("application/grpc-web", "application/grpc-web+proto", "application/grpc-web-text; charset=x"):
        assert is_grpc_web(value)
    for value in (None, "", "application/grpc", "application/json"):
        assert not is_grpc_web(value)


def test_grpc_message_is_percent_encoded() -> None:
    assert percent_encode("plain text: ok") == "plain text: ok"
    assert percent_encode("50% é\r\n") == "50%25 %C3%A9%0D%0A"


def test_trailer_block() -> None:
    block = trailer_block(5, "not found", [("x-a", "1")])
    assert block == b"grpc-status: 5\r\ngrpc-message: not found\r\nx-a: 1\r\n"
    assert trailer_block(0, "", []) == b"grpc-status: 0\r\n"


def test_status_answer_has_the_status_in_headers_and_body() -> None:
    answer = status_answer(16, "no key", text=False, trailing=[("x-b-bin", b"\x01"), ("x-bad", "a\r\nb")])
    assert answer.status == 200
    assert answer.headers["grpc-status"] == "16"
    assert answer.headers["grpc-message"] == "no key"
    assert answer.headers["x-b-bin"] == "AQ=="
    assert "x-bad" not in answer.headers  # CR/LF would split the header
    assert "grpc-status" in answer.headers["Access-Control-Expose-Headers"]
    ((flag, block),) = unpack_frames(answer.body)
    assert flag == 0x80
    assert b"grpc-status: 16\r\n" in block
    text = status_answer(3, "bad", text=True)
    assert text.headers["Content-Type"] == "application/grpc-web-text+proto"
    assert unpack_frames(base64.b64decode(text.body))[0][0] == 0x80


def test_refusals_of_grpc_web_requests_become_grpc_web_statuses() -> None:
    err = GatewayError(429, Code.RESOURCE_EXHAUSTED, "slow down", headers={"Retry-After": "3"})
    refusal = ProxyResponse.from_error(err)
    refusal.headers["Access-Control-Allow-Origin"] = "*"
    answer = as_grpc_web("application/grpc-web+proto", refusal)
    assert answer.status == 200
    assert answer.headers["grpc-status"] == str(int(Code.RESOURCE_EXHAUSTED))
    assert answer.headers["grpc-message"] == "slow down"
    assert answer.headers["Retry-After"] == "3"
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    assert answer.source == "gateway"
    # A plugin's plain-text refusal: the code from the HTTP status.
    plugin = Reply(403, "go away").to_response()
    plugin.source = "plugin"
    assert as_grpc_web("application/grpc-web", plugin).headers["grpc-status"] == str(int(Code.PERMISSION_DENIED))
    # Not a gRPC-Web request, not a refusal, or an upstream's answer: unchanged.
    assert as_grpc_web("application/json", refusal) is refusal
    ok = Reply(200, "fine").to_response()
    assert as_grpc_web("application/grpc-web", ok) is ok
    upstream = ProxyResponse(404, CIMultiDict(), b"nope")
    assert as_grpc_web("application/grpc-web", upstream) is upstream


def test_render_grpc_maps_code_message_and_headers() -> None:
    err = GatewayError(
        503, Code.RESOURCE_EXHAUSTED, "rate limit exceeded", headers={"Retry-After": "2", "X-RateLimit-Remaining": "0"}
    )
    code, message, trailing = render_grpc(err)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert message == "rate limit exceeded"
    assert trailing == (("retry-after", "2"), ("x-ratelimit-remaining", "0"))
    assert render_grpc(GatewayError(401, Code.UNAUTHENTICATED, "no"))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert render_grpc(GatewayError(400, Code.OK, "odd", headers={"Bad Name": "x", "x-ok": "a\nb"}))[2] == ()


def test_plugin_replies_on_grpc_calls() -> None:
    refused = reply_error(Reply(403, {"message": "not you"}))
    assert (refused.code, refused.message) == (Code.PERMISSION_DENIED, "not you")
    assert reply_error(Reply(429, b'{"error_msg": "x"}')).message == "x"
    assert reply_error(Reply(200, "cached")).code == Code.UNKNOWN


def test_peer_addresses() -> None:
    assert peer_ip("ipv4:127.0.0.1:5000") == "127.0.0.1"
    assert peer_ip("ipv6:[::1]:5000") == "::1"
    assert peer_ip("ipv6:%5B::1%5D:5000") == "::1"
    assert peer_ip("unix:/tmp/socket") == ""


def test_metadata_in_drops_identity_bad_keys_and_encodes_binary() -> None:
    metadata = [
        ("apikey", "k"),
        ("x-consumer-username", "mallory"),
        ("x_alias", "1"),
        ("x-blob-bin", b"\x00\xff"),
        ("x-ctl", "a\nb"),
    ]
    headers = metadata_headers(metadata, drop=["X-Consumer-Username"])
    assert list(headers.items()) == [("apikey", "k"), ("x-blob-bin", "AP8=")]


def test_metadata_out_strips_hop_by_hop_and_asserts_identity() -> None:
    headers = CIMultiDict(
        [
            ("Content-Type", "application/grpc-web"),
            ("Connection", "close, X-Consumer-Username, X-Secret"),
            ("X-Secret", "s"),
            ("Grpc-Timeout", "1S"),
            ("X-Consumer-Username", "alice"),
            ("X-Blob-Bin", "AP8"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("Authorization", "Bearer t"),
            *((name, "x") for name in HOP_BY_HOP),
        ]
    )
    pairs = upstream_metadata(headers, [("x-consumer-username", "alice")], "127.0.0.1")
    assert pairs == [
        ("x-blob-bin", b"\x00\xff"),
        ("authorization", "Bearer t"),
        ("x-forwarded-for", "10.0.0.1, 127.0.0.1"),
        ("x-consumer-username", "alice"),
    ]
    with pytest.raises(GatewayError) as caught:
        upstream_metadata(CIMultiDict({"x-b-bin": "!!"}), [], "")
    assert caught.value.code == Code.INVALID_ARGUMENT


def test_call_context_gives_plugins_what_they_read() -> None:
    ctx = call_context(
        route_id="r",
        service_id=None,
        grpc_method="/a.v1.S/M",
        metadata=[("cookie", "session=abc; theme=dark"), ("apikey", "k")],
        peer="ipv4:10.1.2.3:4444",
        authority="api.example.com",
        consumers=EMPTY_CONSUMERS,
    )
    assert (ctx.method, ctx.path, ctx.query, ctx.client_ip) == ("POST", "/a.v1.S/M", "", "10.1.2.3")
    assert ctx.request.remote == "10.1.2.3"
    assert ctx.request.headers["apikey"] == "k"
    assert ctx.request.cookies["theme"] == "dark"
    assert ctx.request.raw_path == "/a.v1.S/M"
    assert ctx.headers["Host"] == "api.example.com"
    assert json.dumps(dict(ctx.request.cookies))  # a plain mapping
