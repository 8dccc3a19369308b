"""protogate's transcoder: protobuf descriptors and google.api.http rules -> REST/JSON <-> gRPC codecs.

Pure library: bytes, dicts and descriptors in and out; no web framework, no gRPC runtime, no I/O
beyond reading a descriptor file on request.
"""

from __future__ import annotations

from transcoder.descriptors import DescriptorIndex, HttpBinding, MethodInfo
from transcoder.errors import TranscodeError
from transcoder.httprule import PathTemplate, Variable, parse_template
from transcoder.matcher import Match, RuleMatcher
from transcoder.metadata import (
    http_status_override,
    parse_grpc_timeout,
    request_metadata,
    response_header_metadata,
    response_trailer_metadata,
)
from transcoder.query import apply_query_params
from transcoder.query_string import parse_query_string
from transcoder.request import RequestOptions, build_request, encode_request
from transcoder.response import JsonOptions, render_message, render_response, render_status_details
from transcoder.status import Code, code_from_http_status, http_status_from_code, status_body

__all__ = [
    "Code",
    "DescriptorIndex",
    "HttpBinding",
    "JsonOptions",
    "Match",
    "MethodInfo",
    "PathTemplate",
    "RequestOptions",
    "RuleMatcher",
    "TranscodeError",
    "Variable",
    "apply_query_params",
    "build_request",
    "code_from_http_status",
    "encode_request",
    "http_status_from_code",
    "http_status_override",
    "parse_grpc_timeout",
    "parse_query_string",
    "parse_template",
    "render_message",
    "render_response",
    "render_status_details",
    "request_metadata",
    "response_header_metadata",
    "response_trailer_metadata",
    "status_body",
]
