"""plugin_runner.convert: proto messages <-> SDK objects, with order, presence and oneofs kept."""

from __future__ import annotations

import pytest

from plugin_runner import convert
from plugin_runner.chain import ConfigError
from plugin_runner.proto import runner_pb2 as pb
from plugin_runner.sdk import Request, Response


def test_request_from_proto_keeps_order_and_lowercases_header_names() -> None:
    message = pb.HTTPReqCallRequest(
        request_id="r1",
        method="POST",
        path="/a%2Fb",
        args=[pb.Arg(name="b", value="2"), pb.Arg(name="a", value="1"), pb.Arg(name="b", value="3")],
        headers=[pb.Header(name="X-B", value="1"), pb.Header(name="x-a", value="2"), pb.Header(name="x-b", value="3")],
        client_ip="10.1.2.3",
        client_port=5555,
        route_id="route",
        consumer_name="alice",
        trace=pb.TraceContext(traceparent="00-abc-def-01", tracestate="k=v"),
        vars={"remote_addr": "10.1.2.3"},
        scheme="https",
    )
    request = convert.request_from_proto(message)
    assert request.args == [("b", "2"), ("a", "1"), ("b", "3")]
    assert request.headers == [("x-b", "1"), ("x-a", "2"), ("x-b", "3")]
    assert (request.method, request.path, request.client_ip, request.client_port) == (
        "POST",
        "/a%2Fb",
        "10.1.2.3",
        5555,
    )
    assert (request.route_id, request.consumer_name, request.scheme) == ("route", "alice", "https")
    assert (request.traceparent, request.tracestate) == ("00-abc-def-01", "k=v")
    assert request.vars == {"remote_addr": "10.1.2.3"}


def test_body_presence_differs_from_empty() -> None:
    assert convert.request_from_proto(pb.HTTPReqCallRequest()).body is None
    assert convert.request_from_proto(pb.HTTPReqCallRequest(body=b"")).body == b""
    assert convert.response_from_proto(pb.HTTPRespCallRequest(status=200)).body is None
    assert convert.response_from_proto(pb.HTTPRespCallRequest(status=200, body=b"x")).body == b"x"


def test_untouched_request_is_pass() -> None:
    answer = convert.request_outcome_to_proto(Request(method="GET", path="/"))
    assert answer.WhichOneof("action") == "pass"


def test_stop_wins_over_rewrites() -> None:
    request = Request(method="GET", path="/")
    request.set_header("x", "1")
    request.stop(418, body="teapot", headers=[("X-Why", "tea")])
    answer = convert.request_outcome_to_proto(request)
    assert answer.WhichOneof("action") == "stop"
    assert (answer.stop.status, answer.stop.body) == (418, b"teapot")
    assert [(h.name, h.value) for h in answer.stop.headers] == [("x-why", "tea")]


def test_rewrite_carries_only_what_changed() -> None:
    request = Request(method="GET", path="/old", args=[("a", "1")], headers=[("h", "1")])
    request.rewrite_path("/new")
    request.set_header("h", "2")
    request.add_header("v", "1")
    request.remove_header("gone")
    request.set_arg("a", "2")
    request.remove_arg("z")
    rewrite = convert.request_outcome_to_proto(request).rewrite
    assert rewrite.path == "/new" and not rewrite.HasField("body")
    assert [(h.name, h.value) for h in rewrite.headers.set] == [("h", "2")]
    assert [(h.name, h.value) for h in rewrite.headers.add] == [("v", "1")]
    assert list(rewrite.headers.remove) == ["gone"]
    assert [(a.name, a.value) for a in rewrite.args.set] == [("a", "2")] and list(rewrite.args.remove) == ["z"]

    body_only = Request(method="POST", path="/")
    body_only.set_body("")
    rewrite = convert.request_outcome_to_proto(body_only).rewrite
    assert rewrite.HasField("body") and rewrite.body == b"" and not rewrite.HasField("path")
    assert not rewrite.HasField("headers") and not rewrite.HasField("args")


def test_response_changes() -> None:
    response = convert.response_from_proto(
        pb.HTTPRespCallRequest(status=200, headers=[pb.Header(name="Server", value="up")], method="GET", path="/p")
    )
    assert response.headers == [("server", "up")] and (response.method, response.path) == ("GET", "/p")
    assert convert.response_changes_to_proto(response) == pb.HTTPRespCallResponse()
    response.set_status(503)
    response.remove_header("server")
    response.set_body(b"down")
    answer = convert.response_changes_to_proto(response)
    assert (answer.status, answer.body, list(answer.headers.remove)) == (503, b"down", ["server"])
    assert convert.response_changes_to_proto(Response(status=200)).status == 0


def test_plugin_confs_from_struct_json_or_nothing() -> None:
    message = pb.PrepareConfRequest()
    message.plugins.add(name="a").config_struct.update({"n": 3, "s": "x", "l": [1, {"k": None}]})
    message.plugins.add(name="b", config_json='{"n": 12345678901234567}')
    message.plugins.add(name="c")
    message.plugins.add(name="d", config_json="  ")
    assert convert.plugin_confs_from_proto(message) == [
        ("a", {"n": 3.0, "s": "x", "l": [1.0, {"k": None}]}),
        ("b", {"n": 12345678901234567}),
        ("c", {}),
        ("d", {}),
    ]


@pytest.mark.parametrize(
    ("text", "problem"), [("{", "invalid JSON"), ("[1]", "must be a JSON object"), ("null", "must be a JSON object")]
)
def test_plugin_conf_json_must_be_an_object(text: str, problem: str) -> None:
    message = pb.PrepareConfRequest()
    message.plugins.add(name="x", config_json=text)
    with pytest.raises(ConfigError) as refused:
        convert.plugin_confs_from_proto(message)
    [(path, text_)] = refused.value.errors
    assert path == "plugins[0](x).config_json" and problem in text_


def test_plugin_confs_to_proto_sends_json_text() -> None:
    message = convert.plugin_confs_to_proto([("a", {"n": 1}), ("b", '{"raw": true}'), ("c", None)], route_id="r")
    assert [(p.name, p.config_json) for p in message.plugins] == [("a", '{"n":1}'), ("b", '{"raw": true}'), ("c", "{}")]
    assert message.route_id == "r"
