"""Test a plugin in plain pytest: no gateway, no sockets, the same config validation and conversions as the runner.

```python
from plugin_runner.testing import run_request

async def test_refuses_missing_header():
    result = await run_request(RequireTeam(), {"header": "x-team"}, method="GET", path="/x")
    assert result.stopped and result.status == 403
```
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from plugin_runner import convert
from plugin_runner.chain import Chain, ConfigError, validate_config
from plugin_runner.chain import run_request as run_request_chain
from plugin_runner.chain import run_response as run_response_chain
from plugin_runner.proto import runner_pb2 as pb
from plugin_runner.sdk import Plugin

__all__ = ["ConfigError", "RequestResult", "ResponseResult", "check_config", "run_request", "run_response"]

Pairs = Mapping[str, str] | Iterable[tuple[str, str]] | None


@dataclass(frozen=True)
class RequestResult:
    """What the chain asked the gateway to do with a request: `action` is "pass", "stop" or "rewrite"."""

    action: str
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    path: str | None = None
    set_headers: list[tuple[str, str]] = field(default_factory=list)
    add_headers: list[tuple[str, str]] = field(default_factory=list)
    removed_headers: list[str] = field(default_factory=list)
    set_args: list[tuple[str, str]] = field(default_factory=list)
    removed_args: list[str] = field(default_factory=list)
    new_body: bytes | None = None
    message: pb.HTTPReqCallResponse = field(default_factory=pb.HTTPReqCallResponse, repr=False)

    @property
    def passed(self) -> bool:
        return self.action == "pass"

    @property
    def stopped(self) -> bool:
        return self.action == "stop"

    @property
    def rewritten(self) -> bool:
        return self.action == "rewrite"

    def header(self, name: str) -> str | None:
        """First value of a header of the stop answer."""
        return next((value for key, value in self.headers if key == name.lower()), None)

    def json(self) -> Any:
        """The stop answer's body parsed as JSON."""
        return json.loads(self.body)


@dataclass(frozen=True)
class ResponseResult:
    """What the chain changed in a response; `status` is None when unchanged."""

    status: int | None = None
    set_headers: list[tuple[str, str]] = field(default_factory=list)
    add_headers: list[tuple[str, str]] = field(default_factory=list)
    removed_headers: list[str] = field(default_factory=list)
    body: bytes | None = None
    message: pb.HTTPRespCallResponse = field(default_factory=pb.HTTPRespCallResponse, repr=False)

    @property
    def changed(self) -> bool:
        return bool(self.status is not None or self.set_headers or self.add_headers or self.removed_headers) or (
            self.body is not None
        )


def check_config(plugin: Plugin, config: Mapping[str, Any] | None) -> Any:
    """The validated config object; raises ConfigError (with field paths) as PrepareConf would refuse it."""
    return validate_config(plugin, config)


def _pairs(pairs: Pairs) -> list[tuple[str, str]]:
    items = pairs.items() if isinstance(pairs, Mapping) else (pairs or ())
    return [(str(name), str(value)) for name, value in items]


def _chain(plugins: Plugin | list[tuple[Plugin, Mapping[str, Any] | None]], config: Mapping[str, Any] | None) -> Chain:
    if isinstance(plugins, Plugin):
        return Chain(((plugins, validate_config(plugins, config)),))
    return Chain(tuple((plugin, validate_config(plugin, raw)) for plugin, raw in plugins))


async def run_request(
    plugin: Plugin | list[tuple[Plugin, Mapping[str, Any] | None]],
    config: Mapping[str, Any] | None = None,
    *,
    method: str = "GET",
    path: str = "/",
    args: Pairs = None,
    headers: Pairs = None,
    body: bytes | str | None = None,
    vars: Mapping[str, str] | None = None,
    client_ip: str = "127.0.0.1",
    route_id: str = "test-route",
    consumer_name: str = "",
    request_id: str = "test-request",
) -> RequestResult:
    """Run `plugin` (or a list of (plugin, config) as a chain) over a fake request, as HTTPReqCall would.

    Unlike the gateway, the body is always sent when given, whether or not the plugin declared needs_body.
    """
    chain = _chain(plugin, config)
    message = pb.HTTPReqCallRequest(
        request_id=request_id,
        token="test",
        method=method,
        path=path,
        args=[pb.Arg(name=k, value=v) for k, v in _pairs(args)],
        headers=[pb.Header(name=k.lower(), value=v) for k, v in _pairs(headers)],
        client_ip=client_ip,
        route_id=route_id,
        consumer_name=consumer_name,
        vars=dict(vars or {}),
        scheme="http",
    )
    if body is not None:
        message.body = body.encode() if isinstance(body, str) else body
    outcome = await run_request_chain(chain, convert.request_from_proto(message))
    answer = convert.request_outcome_to_proto(outcome)
    which = answer.WhichOneof("action") or "pass"
    if which == "stop":
        stop = answer.stop
        return RequestResult("stop", stop.status, [(h.name, h.value) for h in stop.headers], stop.body, message=answer)
    if which == "pass":
        return RequestResult("pass", message=answer)
    rewrite = answer.rewrite
    return RequestResult(
        "rewrite",
        path=rewrite.path if rewrite.HasField("path") else None,
        set_headers=[(h.name, h.value) for h in rewrite.headers.set],
        add_headers=[(h.name, h.value) for h in rewrite.headers.add],
        removed_headers=list(rewrite.headers.remove),
        set_args=[(a.name, a.value) for a in rewrite.args.set],
        removed_args=list(rewrite.args.remove),
        new_body=rewrite.body if rewrite.HasField("body") else None,
        message=answer,
    )


async def run_response(
    plugin: Plugin | list[tuple[Plugin, Mapping[str, Any] | None]],
    config: Mapping[str, Any] | None = None,
    *,
    status: int = 200,
    headers: Pairs = None,
    body: bytes | str | None = None,
    vars: Mapping[str, str] | None = None,
    method: str = "GET",
    path: str = "/",
    route_id: str = "test-route",
    request_id: str = "test-request",
) -> ResponseResult:
    """Run the response hooks over a fake upstream response, as HTTPRespCall would."""
    chain = _chain(plugin, config)
    message = pb.HTTPRespCallRequest(
        request_id=request_id,
        token="test",
        status=status,
        headers=[pb.Header(name=k.lower(), value=v) for k, v in _pairs(headers)],
        vars=dict(vars or {}),
        method=method,
        path=path,
        route_id=route_id,
    )
    if body is not None:
        message.body = body.encode() if isinstance(body, str) else body
    outcome = await run_response_chain(chain, convert.response_from_proto(message))
    answer = convert.response_changes_to_proto(outcome)
    return ResponseResult(
        status=answer.status or None,
        set_headers=[(h.name, h.value) for h in answer.headers.set],
        add_headers=[(h.name, h.value) for h in answer.headers.add],
        removed_headers=list(answer.headers.remove),
        body=answer.body if answer.HasField("body") else None,
        message=answer,
    )
