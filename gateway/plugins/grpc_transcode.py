"""grpc-transcode: serve a route by transcoding REST/JSON into gRPC calls of a loaded proto."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from gateway.plugins.base import Plugin, PluginConfig


class JsonPrintOptions(PluginConfig):
    """How answers are printed; the defaults are grpc-gateway v2's default marshaler."""

    use_proto_names: bool = False
    emit_unpopulated: bool = True
    enums_as_ints: bool = False


class GrpcTranscodeConfig(PluginConfig):
    proto_id: str = Field(min_length=1)
    # With `service` alone, that service's HttpRules decide; with `method` too, every request on
    # the route calls that one method (APISIX style). With neither, every rule in the proto counts.
    service: str | None = None
    method: str | None = None
    auto_mapping: bool = False  # POST /pkg.Service/Method with the JSON body as the whole request (Envoy)
    strict_query: bool = False  # unknown query parameters -> 400 instead of ignored
    strict_body: bool = False  # unknown JSON fields in the body -> 400 instead of ignored
    deadline: float | None = Field(default=None, gt=0)  # seconds; default: the upstream's read timeout
    json_options: JsonPrintOptions = Field(default_factory=JsonPrintOptions, alias="json")
    # How a server-streamed answer is framed: grpc-gateway's newline-delimited {"result": ...} lines,
    # server-sent events, or one JSON array (Envoy). `Accept: text/event-stream` asks for SSE on any route.
    stream_format: Literal["ndjson", "sse", "array"] = "ndjson"
    openapi: bool = False  # serve GET <uri prefix>/openapi.json, built once at load

    @model_validator(mode="after")
    def _method_needs_service(self) -> GrpcTranscodeConfig:
        if self.method is not None and self.service is None:
            raise ValueError("method needs service")
        return self


class GrpcTranscode(Plugin[GrpcTranscodeConfig]):
    name: ClassVar[str] = "grpc-transcode"
    priority: ClassVar[int] = 506  # APISIX's number
    Config = GrpcTranscodeConfig
