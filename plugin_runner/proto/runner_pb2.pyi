from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Header(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class Arg(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class TraceContext(_message.Message):
    __slots__ = ("traceparent", "tracestate")
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    TRACESTATE_FIELD_NUMBER: _ClassVar[int]
    traceparent: str
    tracestate: str
    def __init__(self, traceparent: _Optional[str] = ..., tracestate: _Optional[str] = ...) -> None: ...

class HeaderMutation(_message.Message):
    __slots__ = ("set", "add", "remove")
    SET_FIELD_NUMBER: _ClassVar[int]
    ADD_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    set: _containers.RepeatedCompositeFieldContainer[Header]
    add: _containers.RepeatedCompositeFieldContainer[Header]
    remove: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, set: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., add: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., remove: _Optional[_Iterable[str]] = ...) -> None: ...

class ArgMutation(_message.Message):
    __slots__ = ("set", "remove")
    SET_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    set: _containers.RepeatedCompositeFieldContainer[Arg]
    remove: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, set: _Optional[_Iterable[_Union[Arg, _Mapping]]] = ..., remove: _Optional[_Iterable[str]] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("runner_name", "runner_version", "epoch", "plugins", "protocol_version")
    RUNNER_NAME_FIELD_NUMBER: _ClassVar[int]
    RUNNER_VERSION_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    PLUGINS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    runner_name: str
    runner_version: str
    epoch: str
    plugins: _containers.RepeatedCompositeFieldContainer[PluginInfo]
    protocol_version: int
    def __init__(self, runner_name: _Optional[str] = ..., runner_version: _Optional[str] = ..., epoch: _Optional[str] = ..., plugins: _Optional[_Iterable[_Union[PluginInfo, _Mapping]]] = ..., protocol_version: _Optional[int] = ...) -> None: ...

class PluginInfo(_message.Message):
    __slots__ = ("name", "config_schema", "description", "request_phase", "response_phase", "needs_request_body", "needs_response_body", "vars")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_PHASE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_PHASE_FIELD_NUMBER: _ClassVar[int]
    NEEDS_REQUEST_BODY_FIELD_NUMBER: _ClassVar[int]
    NEEDS_RESPONSE_BODY_FIELD_NUMBER: _ClassVar[int]
    VARS_FIELD_NUMBER: _ClassVar[int]
    name: str
    config_schema: str
    description: str
    request_phase: bool
    response_phase: bool
    needs_request_body: bool
    needs_response_body: bool
    vars: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., config_schema: _Optional[str] = ..., description: _Optional[str] = ..., request_phase: _Optional[bool] = ..., response_phase: _Optional[bool] = ..., needs_request_body: _Optional[bool] = ..., needs_response_body: _Optional[bool] = ..., vars: _Optional[_Iterable[str]] = ...) -> None: ...

class PrepareConfRequest(_message.Message):
    __slots__ = ("plugins", "route_id", "conf_version")
    PLUGINS_FIELD_NUMBER: _ClassVar[int]
    ROUTE_ID_FIELD_NUMBER: _ClassVar[int]
    CONF_VERSION_FIELD_NUMBER: _ClassVar[int]
    plugins: _containers.RepeatedCompositeFieldContainer[PluginConf]
    route_id: str
    conf_version: str
    def __init__(self, plugins: _Optional[_Iterable[_Union[PluginConf, _Mapping]]] = ..., route_id: _Optional[str] = ..., conf_version: _Optional[str] = ...) -> None: ...

class PluginConf(_message.Message):
    __slots__ = ("name", "config_struct", "config_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_STRUCT_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    config_struct: _struct_pb2.Struct
    config_json: str
    def __init__(self, name: _Optional[str] = ..., config_struct: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., config_json: _Optional[str] = ...) -> None: ...

class PrepareConfResponse(_message.Message):
    __slots__ = ("token", "epoch", "request_phase", "response_phase", "needs_request_body", "needs_response_body", "vars")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    REQUEST_PHASE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_PHASE_FIELD_NUMBER: _ClassVar[int]
    NEEDS_REQUEST_BODY_FIELD_NUMBER: _ClassVar[int]
    NEEDS_RESPONSE_BODY_FIELD_NUMBER: _ClassVar[int]
    VARS_FIELD_NUMBER: _ClassVar[int]
    token: str
    epoch: str
    request_phase: bool
    response_phase: bool
    needs_request_body: bool
    needs_response_body: bool
    vars: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, token: _Optional[str] = ..., epoch: _Optional[str] = ..., request_phase: _Optional[bool] = ..., response_phase: _Optional[bool] = ..., needs_request_body: _Optional[bool] = ..., needs_response_body: _Optional[bool] = ..., vars: _Optional[_Iterable[str]] = ...) -> None: ...

class ReleaseConfRequest(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class ReleaseConfResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HTTPReqCallRequest(_message.Message):
    __slots__ = ("request_id", "token", "method", "path", "args", "headers", "client_ip", "client_port", "route_id", "consumer_name", "trace", "body", "vars", "scheme")
    class VarsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_IP_FIELD_NUMBER: _ClassVar[int]
    CLIENT_PORT_FIELD_NUMBER: _ClassVar[int]
    ROUTE_ID_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_NAME_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    VARS_FIELD_NUMBER: _ClassVar[int]
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    token: str
    method: str
    path: str
    args: _containers.RepeatedCompositeFieldContainer[Arg]
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    client_ip: str
    client_port: int
    route_id: str
    consumer_name: str
    trace: TraceContext
    body: bytes
    vars: _containers.ScalarMap[str, str]
    scheme: str
    def __init__(self, request_id: _Optional[str] = ..., token: _Optional[str] = ..., method: _Optional[str] = ..., path: _Optional[str] = ..., args: _Optional[_Iterable[_Union[Arg, _Mapping]]] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., client_ip: _Optional[str] = ..., client_port: _Optional[int] = ..., route_id: _Optional[str] = ..., consumer_name: _Optional[str] = ..., trace: _Optional[_Union[TraceContext, _Mapping]] = ..., body: _Optional[bytes] = ..., vars: _Optional[_Mapping[str, str]] = ..., scheme: _Optional[str] = ...) -> None: ...

class HTTPReqCallResponse(_message.Message):
    __slots__ = ("stop", "rewrite")
    PASS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    REWRITE_FIELD_NUMBER: _ClassVar[int]
    stop: Stop
    rewrite: Rewrite
    def __init__(self, stop: _Optional[_Union[Stop, _Mapping]] = ..., rewrite: _Optional[_Union[Rewrite, _Mapping]] = ..., **kwargs) -> None: ...

class Pass(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Stop(_message.Message):
    __slots__ = ("status", "headers", "body")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    status: int
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    body: bytes
    def __init__(self, status: _Optional[int] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., body: _Optional[bytes] = ...) -> None: ...

class Rewrite(_message.Message):
    __slots__ = ("path", "headers", "args", "body")
    PATH_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    path: str
    headers: HeaderMutation
    args: ArgMutation
    body: bytes
    def __init__(self, path: _Optional[str] = ..., headers: _Optional[_Union[HeaderMutation, _Mapping]] = ..., args: _Optional[_Union[ArgMutation, _Mapping]] = ..., body: _Optional[bytes] = ...) -> None: ...

class HTTPRespCallRequest(_message.Message):
    __slots__ = ("request_id", "token", "status", "headers", "body", "vars", "method", "path", "route_id", "consumer_name", "trace")
    class VarsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    VARS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    ROUTE_ID_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_NAME_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    token: str
    status: int
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    body: bytes
    vars: _containers.ScalarMap[str, str]
    method: str
    path: str
    route_id: str
    consumer_name: str
    trace: TraceContext
    def __init__(self, request_id: _Optional[str] = ..., token: _Optional[str] = ..., status: _Optional[int] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., body: _Optional[bytes] = ..., vars: _Optional[_Mapping[str, str]] = ..., method: _Optional[str] = ..., path: _Optional[str] = ..., route_id: _Optional[str] = ..., consumer_name: _Optional[str] = ..., trace: _Optional[_Union[TraceContext, _Mapping]] = ...) -> None: ...

class HTTPRespCallResponse(_message.Message):
    __slots__ = ("status", "headers", "body")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    status: int
    headers: HeaderMutation
    body: bytes
    def __init__(self, status: _Optional[int] = ..., headers: _Optional[_Union[HeaderMutation, _Mapping]] = ..., body: _Optional[bytes] = ...) -> None: ...

class CallBatch(_message.Message):
    __slots__ = ("calls",)
    CALLS_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[Call]
    def __init__(self, calls: _Optional[_Iterable[_Union[Call, _Mapping]]] = ...) -> None: ...

class Call(_message.Message):
    __slots__ = ("id", "timeout_ms", "http_req", "http_resp")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    HTTP_REQ_FIELD_NUMBER: _ClassVar[int]
    HTTP_RESP_FIELD_NUMBER: _ClassVar[int]
    id: int
    timeout_ms: int
    http_req: HTTPReqCallRequest
    http_resp: HTTPRespCallRequest
    def __init__(self, id: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., http_req: _Optional[_Union[HTTPReqCallRequest, _Mapping]] = ..., http_resp: _Optional[_Union[HTTPRespCallRequest, _Mapping]] = ...) -> None: ...

class ResultBatch(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[Result]
    def __init__(self, results: _Optional[_Iterable[_Union[Result, _Mapping]]] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("id", "http_req", "http_resp", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    HTTP_REQ_FIELD_NUMBER: _ClassVar[int]
    HTTP_RESP_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: int
    http_req: HTTPReqCallResponse
    http_resp: HTTPRespCallResponse
    error: CallError
    def __init__(self, id: _Optional[int] = ..., http_req: _Optional[_Union[HTTPReqCallResponse, _Mapping]] = ..., http_resp: _Optional[_Union[HTTPRespCallResponse, _Mapping]] = ..., error: _Optional[_Union[CallError, _Mapping]] = ...) -> None: ...

class CallError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...
