"""Runner proto messages <-> SDK objects. Pure functions: no I/O, no gRPC."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format

from plugin_runner.chain import Chain, ConfigError
from plugin_runner.proto import runner_pb2 as pb
from plugin_runner.sdk import HeaderChanges, Request, Response

__all__ = [
    "chain_to_prepared",
    "plugin_confs_from_proto",
    "plugin_confs_to_proto",
    "request_from_proto",
    "request_outcome_to_proto",
    "response_changes_to_proto",
    "response_from_proto",
]


def plugin_confs_from_proto(message: pb.PrepareConfRequest) -> list[tuple[str, dict[str, Any]]]:
    """(name, config dict) per plugin; a config that is not a JSON object raises ConfigError."""
    confs = []
    for index, conf in enumerate(message.plugins):
        which = conf.WhichOneof("config")
        if which == "config_struct":
            config = json_format.MessageToDict(conf.config_struct)
        elif which == "config_json":
            try:
                config = json.loads(conf.config_json) if conf.config_json.strip() else {}
            except json.JSONDecodeError as exc:
                raise ConfigError([(f"plugins[{index}]({conf.name}).config_json", f"invalid JSON: {exc}")]) from None
            if not isinstance(config, dict):
                raise ConfigError([(f"plugins[{index}]({conf.name}).config_json", "must be a JSON object")])
        else:
            config = {}
        confs.append((conf.name, config))
    return confs


def plugin_confs_to_proto(
    plugins: list[tuple[str, Mapping[str, Any] | str | None]], route_id: str = "", conf_version: str = ""
) -> pb.PrepareConfRequest:
    """The PrepareConf request for (name, config) pairs; a config given as a string is sent as JSON text."""
    message = pb.PrepareConfRequest(route_id=route_id, conf_version=conf_version)
    for name, config in plugins:
        conf = message.plugins.add(name=name)
        if isinstance(config, str):
            conf.config_json = config
        else:
            # JSON text keeps integers exact; Struct would turn them into doubles.
            conf.config_json = json.dumps(dict(config or {}), separators=(",", ":"))
    return message


def chain_to_prepared(chain: Chain, token: str, epoch: str) -> pb.PrepareConfResponse:
    return pb.PrepareConfResponse(
        token=token,
        epoch=epoch,
        request_phase=chain.request_phase,
        response_phase=chain.response_phase,
        needs_request_body=chain.needs_request_body,
        needs_response_body=chain.needs_response_body,
        vars=chain.vars,
    )


def request_from_proto(message: pb.HTTPReqCallRequest) -> Request:
    return Request(
        method=message.method,
        path=message.path,
        args=[(arg.name, arg.value) for arg in message.args],
        headers=[(header.name.lower(), header.value) for header in message.headers],
        body=message.body if message.HasField("body") else None,
        vars=dict(message.vars),
        request_id=message.request_id,
        client_ip=message.client_ip,
        client_port=message.client_port,
        route_id=message.route_id,
        consumer_name=message.consumer_name,
        scheme=message.scheme or "http",
        traceparent=message.trace.traceparent,
        tracestate=message.trace.tracestate,
    )


def _header_mutation(changes: HeaderChanges) -> pb.HeaderMutation:
    return pb.HeaderMutation(
        set=[pb.Header(name=name, value=value) for name, values in changes.set.items() for value in values],
        add=[pb.Header(name=name, value=value) for name, values in changes.add.items() for value in values],
        remove=list(changes.remove),
    )


def request_outcome_to_proto(request: Request) -> pb.HTTPReqCallResponse:
    """Stop if a plugin stopped, else Rewrite if anything changed, else Pass."""
    if request.stopped is not None:
        stop = request.stopped
        headers = [pb.Header(name=name, value=value) for name, value in stop.headers]
        return pb.HTTPReqCallResponse(stop=pb.Stop(status=stop.status, headers=headers, body=stop.body))
    if not request.rewritten:
        return pb.HTTPReqCallResponse(**{"pass": pb.Pass()})
    rewrite = pb.Rewrite()
    if request.new_path is not None:
        rewrite.path = request.new_path
    if request.header_changes:
        rewrite.headers.CopyFrom(_header_mutation(request.header_changes))
    if request.arg_sets or request.arg_removes:
        rewrite.args.CopyFrom(
            pb.ArgMutation(
                set=[pb.Arg(name=name, value=value) for name, values in request.arg_sets.items() for value in values],
                remove=list(request.arg_removes),
            )
        )
    if request.new_body is not None:
        rewrite.body = request.new_body
    return pb.HTTPReqCallResponse(rewrite=rewrite)


def response_from_proto(message: pb.HTTPRespCallRequest) -> Response:
    return Response(
        status=message.status,
        headers=[(header.name.lower(), header.value) for header in message.headers],
        body=message.body if message.HasField("body") else None,
        vars=dict(message.vars),
        request_id=message.request_id,
        method=message.method,
        path=message.path,
        route_id=message.route_id,
        consumer_name=message.consumer_name,
        traceparent=message.trace.traceparent,
        tracestate=message.trace.tracestate,
    )


def response_changes_to_proto(response: Response) -> pb.HTTPRespCallResponse:
    message = pb.HTTPRespCallResponse(status=response.new_status or 0)
    if response.header_changes:
        message.headers.CopyFrom(_header_mutation(response.header_changes))
    if response.new_body is not None:
        message.body = response.new_body
    return message
