"""OpenAPI documents for grpc-transcode routes: what `protogate openapi` prints and `<prefix>/openapi.json` serves."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.message import DecodeError

from gateway import __version__
from gateway.config.loader import LoadedConfig
from gateway.config.models import Route
from gateway.plugins.grpc_transcode import GrpcTranscodeConfig
from transcoder.descriptors import DescriptorIndex, HttpBinding, MethodInfo
from transcoder.errors import TranscodeError
from transcoder.httprule import PathTemplate, parse_template
from transcoder.openapi import build_openapi
from transcoder.response import JsonOptions
from transcoder.streaming import StreamFormat

OPENAPI_FILE = "openapi.json"


def openapi_json(loaded: LoadedConfig, route: Route) -> bytes:
    """The route's document as JSON bytes: built once at config load, then served as they are."""
    document = route_openapi(loaded, [route.id], title=route.name or route.id)
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def openapi_location(route: Route) -> str | None:
    """Where a route serves its document: `/v1/*` -> `/v1/openapi.json`; None for a route with exact uris only."""
    for uri in route.all_uris:
        if uri.endswith("*"):
            prefix = uri[:-1]
            return (prefix if prefix.endswith("/") else prefix + "/") + OPENAPI_FILE
    return None


def transcoded_routes(loaded: LoadedConfig) -> list[Route]:
    return [r for r in loaded.config.routes if r.enable and _transcode_config(loaded, r) is not None]


def route_openapi(
    loaded: LoadedConfig,
    route_ids: Sequence[str] | None = None,
    *,
    title: str = "protogate",
    version: str = __version__,
    server_url: str | None = None,
) -> dict[str, Any]:
    """One document for the given grpc-transcode routes (default: all of them).

    Routes on the same proto with the same JSON options and stream format share one build; others are merged
    into it (a path that two of them document keeps the first one's operation).
    Raises ValueError for an unknown or non-transcoding route id, or for two protos that define the same
    message differently.
    """
    routes = {r.id: r for r in transcoded_routes(loaded)}
    if route_ids is None:
        route_ids = list(routes)
    groups: dict[tuple[str, JsonOptions, StreamFormat], list[HttpBinding]] = {}
    for route_id in route_ids:
        route = routes.get(route_id)
        if route is None:
            raise ValueError(f"no enabled grpc-transcode route has id {route_id!r}")
        config = _transcode_config(loaded, route)
        assert config is not None
        index = loaded.protos[config.proto_id]
        key = (config.proto_id, _json_options(config), StreamFormat(config.stream_format))
        group = groups.setdefault(key, [])
        known = {_binding_key(b) for b in group}
        for binding in _route_bindings(route, config, index):
            if _binding_key(binding) not in known:
                known.add(_binding_key(binding))
                group.append(binding)
    documents = [
        build_openapi(
            loaded.protos[proto_id],
            title=title,
            version=version,
            json_options=options,
            server_url=server_url,
            bindings=bindings,
            file_set=_source_file_set(loaded, proto_id),
            stream_format=stream_format,
        )
        for (proto_id, options, stream_format), bindings in groups.items()
    ]
    if not documents:
        return build_openapi(DescriptorIndex(descriptor_pb2.FileDescriptorSet()), [], title=title, version=version)
    return _merge(documents)


def _transcode_config(loaded: LoadedConfig, route: Route) -> GrpcTranscodeConfig | None:
    config = loaded.plugin_config(route.id, "grpc-transcode")
    return config if isinstance(config, GrpcTranscodeConfig) else None


def _json_options(config: GrpcTranscodeConfig) -> JsonOptions:
    opts = config.json_options
    return JsonOptions(
        use_proto_names=opts.use_proto_names, emit_unpopulated=opts.emit_unpopulated, enums_as_ints=opts.enums_as_ints
    )


def _binding_key(binding: HttpBinding) -> tuple[str, str, str, str, str]:
    return (binding.http_method, binding.template.text, binding.method.full_name, binding.body, binding.response_body)


def _methods_in_scope(index: DescriptorIndex, config: GrpcTranscodeConfig) -> list[MethodInfo]:
    # The same scope as gateway/transcode.py's TranscodeTarget.
    if config.service is not None:
        return index.methods_of(config.service)
    return [m for key, m in index.methods.items() if key.startswith("/")]


def _route_bindings(route: Route, config: GrpcTranscodeConfig, index: DescriptorIndex) -> list[HttpBinding]:
    """The bindings a request can reach through this route: its uris and methods filter the proto's rules."""
    if config.method is not None:
        # APISIX style: the route's own uri calls the one method; a body (if any) is the whole request.
        method = index.method(f"{config.service}.{config.method}")
        fixed = []
        for uri in route.all_uris:
            if uri.endswith("*"):
                continue  # a prefix has no single path to document
            try:
                template = parse_template(uri)
            except TranscodeError:
                continue
            for kind in route.methods or ["POST"]:
                fixed.append(HttpBinding(kind, template, "" if kind in ("GET", "HEAD", "DELETE") else "*", "", method))
        return fixed
    methods = _methods_in_scope(index, config)
    bindings = [b for m in methods for b in m.bindings]
    if config.auto_mapping:
        bindings.extend(HttpBinding("POST", parse_template(m.grpc_path), "*", "", m) for m in methods)
    allowed = set(route.methods) if route.methods else None
    return [
        b
        for b in bindings
        if (allowed is None or b.http_method in allowed) and any(_reachable(b.template, uri) for uri in route.all_uris)
    ]


def _reachable(template: PathTemplate, uri: str) -> bool:
    """Whether some path the template matches can also match the route uri (exact, or a `/prefix*`)."""
    if not uri.endswith("*"):
        try:
            return template.match(uri) is not None
        except TranscodeError:
            return False
    prefix = uri[:-1]
    head = []
    for index in range(len(template.segments)):
        literal = template.literal_at(index)
        if literal is None:
            break
        head.append(literal)
    text = "/" + "/".join(head)
    if len(head) == len(template.segments):
        full = text + (f":{template.verb}" if template.verb else "")
        return full.startswith(prefix)
    text += "/"
    return text.startswith(prefix) or prefix.startswith(text)


def _source_file_set(loaded: LoadedConfig, proto_id: str) -> descriptor_pb2.FileDescriptorSet | None:
    # The index's pool drops source_code_info, so comments are read from the descriptor set file again.
    proto = next((p for p in loaded.config.protos if p.id == proto_id), None)
    if proto is None:
        return None
    path = Path(proto.descriptor_set)
    if not path.is_absolute():
        path = loaded.base_dir / path
    try:
        return descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    except (OSError, DecodeError, RuntimeWarning):
        return None


def _merge(documents: Iterable[dict[str, Any]]) -> dict[str, Any]:
    first, *rest = documents
    merged = first
    schemas = merged["components"]["schemas"]
    tags = {tag["name"] for tag in merged["tags"]}
    ids = {op["operationId"] for item in merged["paths"].values() for op in item.values() if "operationId" in op}
    for doc in rest:
        for name, schema in doc["components"]["schemas"].items():
            if schemas.setdefault(name, schema) != schema:
                raise ValueError(f"two routes describe {name} differently (other protos or JSON options): use --route")
        merged["tags"].extend(tag for tag in doc["tags"] if tag["name"] not in tags)
        tags.update(tag["name"] for tag in doc["tags"])
        for path, item in doc["paths"].items():
            target = merged["paths"].setdefault(path, {})
            for kind, op in item.items():
                if kind in target:
                    merged.setdefault("x-protogate-unlisted", []).append(
                        {"method": kind.upper(), "path": path, "rpc": op["x-protogate-grpc-method"], "why": "taken"}
                    )
                    continue
                base, n = op["operationId"], 1
                while op["operationId"] in ids:
                    op["operationId"], n = f"{base}_r{n}", n + 1
                ids.add(op["operationId"])
                target[kind] = op
        merged.setdefault("x-protogate-unlisted", []).extend(doc.get("x-protogate-unlisted", []))
        if not merged["x-protogate-unlisted"]:
            del merged["x-protogate-unlisted"]
    merged["components"]["schemas"] = dict(sorted(schemas.items()))
    return merged
