"""Runner message glue: what a call carries from the context, and how answers change the request or response."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict
from runner_support import make_ctx

from gateway.responses import ProxyResponse
from gateway.runner.calls import (
    BadAnswer,
    apply_response_changes,
    apply_rewrite,
    build_request_call,
    build_response_call,
    stop_reply,
)
from plugin_runner.client import PreparedConf
from plugin_runner.proto import runner_pb2 as pb

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def prepared(**needs: object) -> PreparedConf:
    conf = PreparedConf(key="k", plugins=(), route_id="r", conf_version="v", token="t", epoch="e")
    for name, value in needs.items():
        setattr(conf, name, value)
    return conf


async def test_request_call_carries_the_request_in_order() -> None:
    ctx = make_ctx(
        "/a%2Fb?x=1&x=2&flag&sp=a+b",
        method="POST",
        headers=[("X-One", "1"), ("X-One", "2"), ("traceparent", TRACEPARENT), ("X-Request-Id", "rid-1")],
    )
    ctx.path = "/a%2Fb"
    message = await build_request_call(ctx, prepared(vars=("remote_addr", "route_id", "consumer_name")))
    assert message.method == "POST" and message.path == "/a%2Fb" and message.route_id == "r"
    assert [(a.name, a.value) for a in message.args] == [("x", "1"), ("x", "2"), ("flag", ""), ("sp", "a b")]
    assert [(h.name, h.value) for h in message.headers if h.name == "x-one"] == [("x-one", "1"), ("x-one", "2")]
    assert message.client_ip == "192.0.2.7" and message.client_port == 50000
    assert message.trace.traceparent == TRACEPARENT and message.request_id == "rid-1"
    assert dict(message.vars) == {"remote_addr": "192.0.2.7", "route_id": "r"}  # no consumer: absent
    assert not message.HasField("body")  # not declared needed: not sent


async def test_request_call_sends_the_body_only_when_needed() -> None:
    ctx = make_ctx("/p", method="POST")
    ctx.set_body(b"payload")
    message = await build_request_call(ctx, prepared(needs_request_body=True))
    assert message.HasField("body") and message.body == b"payload"


async def test_rewrite_applies_path_headers_args_and_body() -> None:
    ctx = make_ctx("/old?keep=1&drop=x&page=1", headers=[("X-Gone", "1"), ("X-Many", "a"), ("Content-Length", "3")])
    rewrite = pb.Rewrite(
        path="/new/./a%2fb/../c%41",
        headers=pb.HeaderMutation(
            remove=["x-gone", "connection"],
            set=[pb.Header(name="x-many", value="b"), pb.Header(name="x-many", value="c")],
            add=[pb.Header(name="x-added", value="1"), pb.Header(name="transfer-encoding", value="chunked")],
        ),
        args=pb.ArgMutation(remove=["drop"], set=[pb.Arg(name="page", value="2"), pb.Arg(name="new", value="a b&c")]),
        body=b"new body",
    )
    apply_rewrite(ctx, rewrite)
    assert ctx.path == "/new/cA"  # normalised, escapes of unreserved characters decoded
    assert ctx.query == "keep=1&page=2&new=a%20b%26c"
    assert ctx.headers.getall("X-Many") == ["b", "c"] and ctx.headers["X-Added"] == "1"
    assert "X-Gone" not in ctx.headers and "Transfer-Encoding" not in ctx.headers  # framing stays ours
    assert await ctx.read_body() == b"new body" and ctx.headers["Content-Length"] == "8"


@pytest.mark.parametrize("path", ["relative", "/a?b=1", "/a b", "/%zz"])
def test_rewrite_refuses_what_is_not_a_path(path: str) -> None:
    with pytest.raises(BadAnswer):
        apply_rewrite(make_ctx("/x"), pb.Rewrite(path=path))


def test_stop_reply_keeps_repeated_headers_and_defaults_to_503() -> None:
    stop = pb.Stop(
        status=0,
        headers=[
            pb.Header(name="set-cookie", value="a=1"),
            pb.Header(name="set-cookie", value="b=2"),
            pb.Header(name="content-length", value="99"),
        ],
        body=b"no",
    )
    response = stop_reply(stop).to_response()
    assert response.status == 503 and response.body == b"no"
    assert response.headers.getall("Set-Cookie") == ["a=1", "b=2"] and "Content-Length" not in response.headers
    with pytest.raises(BadAnswer):
        stop_reply(pb.Stop(status=700))


async def test_response_changes_replace_a_streamed_body() -> None:
    closed: list[bool] = []

    async def stream():  # type: ignore[no-untyped-def]
        yield b"upstream"

    async def close() -> None:
        closed.append(True)

    response = ProxyResponse(
        200, CIMultiDict({"Content-Length": "8", "ETag": '"v1"', "X-Old": "1"}), stream=stream(), close=close
    )
    changes = pb.HTTPRespCallResponse(status=201, headers=pb.HeaderMutation(remove=["x-old"]), body=b"mine")
    await apply_response_changes(response, changes)
    assert (response.status, response.body, response.stream) == (201, b"mine", None)
    assert closed == [True] and "Content-Length" not in response.headers and "ETag" not in response.headers
    assert "X-Old" not in response.headers


async def test_response_call_carries_status_headers_and_context() -> None:
    ctx = make_ctx("/p", headers=[("tracestate", "k=v")])
    response = ProxyResponse(404, CIMultiDict([("X-A", "1"), ("X-A", "2")]))
    message = build_response_call(ctx, response, prepared(vars=("status",)))
    assert message.status == 404 and [h.value for h in message.headers] == ["1", "2"]
    assert dict(message.vars) == {"status": "404"} and message.trace.tracestate == "k=v"
    assert message.request_id  # one id per request, shared by its calls
    assert build_response_call(ctx, response, prepared()).request_id == message.request_id
