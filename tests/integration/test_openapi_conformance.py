"""The OpenAPI document end to end: `protogate openapi` on the quickstart, and schemathesis through a real gateway."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from gateway_harness import QUICKSTART, Client, GatewayFactory, bookstore_config, start_backend
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate
from processes import BIN
from schemathesis.core.transport import Response

from gateway.config.loader import load_document
from gateway.openapi_endpoint import route_openapi

EXAMPLES_PER_OPERATION = 8
# What the document promises about the gateway. positive_data_acceptance is left out: the backend refuses
# schema-valid requests on business rules (a made-up page_token, a negative page_size) with 400, as it should.
CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.response_headers_conformance,
]


def test_cli_prints_a_valid_document_for_the_quickstart(bookstore_descriptor_set: Path) -> None:
    result = subprocess.run(
        [str(BIN / "protogate"), "openapi", "-c", str(QUICKSTART / "config.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    validate(document)
    assert document["servers"] == [{"url": "http://127.0.0.1:9080"}]
    assert "/v1/shelves/{shelf}/books/{book}:publish" in document["paths"]
    # The auto route documents only what its uri and methods reach: POST /bookstore.v1.Bookstore/<Method>.
    assert set(document["paths"]["/bookstore.v1.Bookstore/GetStats"]) == {"post"}
    assert "get" not in document["paths"].get("/bookstore.v1.Bookstore/GetShelf", {})


def test_cli_selects_one_route_and_writes_a_file(bookstore_descriptor_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "openapi.json"
    config = str(QUICKSTART / "config.yaml")
    result = subprocess.run(
        [str(BIN / "protogate"), "openapi", "-c", config, "--route", "bookstore-auto", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(out.read_text())
    validate(document)
    assert all(path.startswith("/bookstore.v1.Bookstore/") for path in document["paths"])
    unknown = subprocess.run(
        [str(BIN / "protogate"), "openapi", "-c", config, "--route", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert unknown.returncode == 1
    assert "'nope'" in unknown.stderr


@pytest.fixture
def fresh_backend() -> Iterator[int]:
    backend, port = start_backend("openapi-fuzz")
    yield port
    backend.stop()


def test_gateway_conforms_to_its_document(
    gateway_factory: GatewayFactory, bookstore_descriptor_set: Path, fresh_backend: int
) -> None:
    config = bookstore_config(bookstore_descriptor_set, fresh_backend)
    gateway = gateway_factory(config)
    document = route_openapi(load_document(config), server_url=gateway.url)
    validate(document)
    schema = schemathesis.openapi.from_dict(_without_dotted_path_names(document))
    failures: dict[str, str] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        label = operation.label
        if _is_streaming(operation):
            continue  # test_streaming_operations_conform
        # DEBUG methods: Sleep would spend the time budget sleeping; EchoHeaders answers whatever was sent.
        if label.startswith(("GET /v1/debug/", "POST /bookstore.v1.Bookstore/Sleep")):
            continue
        # A multi-segment variable ({name=shelves/*/books/*}) carries unescaped "/"s, which schemathesis never
        # generates in a path parameter (its pattern is then unsatisfiable): those are covered by test_transcoding.
        if any("x-protogate-path-pattern" in p for p in operation.definition.raw.get("parameters", [])):
            continue
        try:
            _fuzz(operation, gateway.url)
        except (Exception, BaseExceptionGroup) as exc:  # every operation's first failure, not only the first one's
            failures[label] = f"{type(exc).__name__}: {exc}"[:2000]
    assert not failures, json.dumps(failures, indent=2)


STREAM_FORMATS = ["ndjson", "sse", "array"]


@schemathesis.serializer("application/x-ndjson")
def _one_line(ctx: Any, value: Any) -> bytes:
    # A request stream of one message: what the document's schema for a line describes.
    return json.dumps(value).encode() + b"\n"


@schemathesis.deserializer("application/x-ndjson")
def _line(ctx: Any, response: Any) -> Any:
    return json.loads(response.content)  # stream_lines_conform hands over one line at a time


def stream_lines_conform(ctx: Any, response: Any, case: Any) -> bool | None:
    """response_schema_conformance, but a body the document marks `x-protogate-stream: ndjson` is checked per line."""
    media_type = (response.headers.get("content-type") or [""])[0].split(";", 1)[0].strip()
    documented = case.operation.definition.raw["responses"].get(str(response.status_code), {}).get("content", {})
    if documented.get(media_type, {}).get("x-protogate-stream") != "ndjson":
        return schemathesis.checks.response_schema_conformance(ctx, response, case)
    for line in response.content.splitlines():
        one = Response(response.status_code, response.headers, line, response.request, response.elapsed, True)
        case.operation.validate_response(one, case=case)
    return None


STREAM_CHECKS = [check for check in CHECKS if check is not schemathesis.checks.response_schema_conformance]
STREAM_CHECKS.append(stream_lines_conform)


@pytest.mark.parametrize("stream_format", STREAM_FORMATS)
def test_streaming_operations_conform(
    gateway_factory: GatewayFactory, bookstore_descriptor_set: Path, fresh_backend: int, stream_format: str
) -> None:
    config = bookstore_config(bookstore_descriptor_set, fresh_backend, stream_format=stream_format)
    gateway = gateway_factory(config)
    document = route_openapi(load_document(config), server_url=gateway.url)
    validate(document)
    schema = schemathesis.openapi.from_dict(_without_dotted_path_names(document))
    streaming = [r.ok() for r in schema.get_all_operations() if _is_streaming(r.ok())]
    assert streaming, "the bookstore has no streaming methods any more: drop this test"
    failures: dict[str, str] = {}
    for operation in streaming:
        # Each content type the document lists for the answer, asked for as the client would.
        for media_type in operation.definition.raw["responses"]["200"]["content"]:
            label = f"{operation.label} Accept: {media_type}"
            try:
                _fuzz(operation, gateway.url, checks=STREAM_CHECKS, headers={"Accept": media_type})
            except (Exception, BaseExceptionGroup) as exc:
                failures[label] = f"{type(exc).__name__}: {exc}"[:2000]
    assert not failures, json.dumps(failures, indent=2)


ACCEPTS = [None, "application/json", "application/x-ndjson", "text/event-stream", "application/x-ndjson, */*;q=0.1"]


@pytest.mark.parametrize("stream_format", STREAM_FORMATS)
def test_streamed_answers_are_exactly_what_the_document_lists(
    gateway_factory: GatewayFactory, bookstore_descriptor_set: Path, bookstore: int, stream_format: str
) -> None:
    """Every Accept the gateway tells apart, with whole streams and streams that fail midway: the content types
    seen are the documented ones (no more, no fewer), and each body matches its media type's schema."""
    config = bookstore_config(bookstore_descriptor_set, bookstore, stream_format=stream_format)
    gateway = gateway_factory(config)
    document = route_openapi(load_document(config), server_url=gateway.url)
    schema = schemathesis.openapi.from_dict(_without_dotted_path_names(document))
    operation = schema["/v1/shelves/{shelf}/books:stream"]["GET"]
    documented = operation.definition.raw["responses"]["200"]["content"]
    seen: set[str] = set()
    for accept in ACCEPTS:
        for query in ({"limit": 2}, {"limit": 3, "fail_after": 1}):
            case = operation.Case(path_parameters={"shelf": "1"}, query=query)
            response = case.call(base_url=gateway.url, headers={"Accept": accept} if accept else {}, timeout=10)
            assert response.status_code == 200, response.content
            media_type = response.headers["content-type"][0]
            seen.add(media_type)
            case.validate_response(response, checks=STREAM_CHECKS)
            body = response.content.decode()
            framing = documented[media_type]["x-protogate-stream"]
            failed = "fail_after" in query
            if framing == "ndjson":
                lines = [json.loads(line) for line in body.splitlines()]
                assert [next(iter(line)) for line in lines] == (["result", "error"] if failed else ["result"] * 2)
            elif framing == "sse":
                assert body.count("data: ") == 2 and ("event: error\n" in body) == failed
            else:
                items = json.loads(body)
                assert len(items) == 2 and ("error" in items[-1]) == failed
    assert seen == set(documented)


def _is_streaming(operation: Any) -> bool:
    raw = operation.definition.raw
    grpc_method = raw.get("x-protogate-grpc-method", "")
    described = json.dumps([raw.get("requestBody", {}), raw["responses"]["200"]])
    return "x-protogate-stream" in described or grpc_method.endswith("/ExportBooks")


def _without_dotted_path_names(document: dict[str, Any]) -> dict[str, Any]:
    """`{book.id}` is what grpc-gateway writes, but schemathesis fills paths with str.format, where "." means an
    attribute: rename such parameters (`book__id`) in a copy; the URLs sent are the same.
    """
    document = json.loads(json.dumps(document))
    paths = {}
    for path, item in document["paths"].items():
        for operation in item.values():
            for param in operation.get("parameters", []):
                if param["in"] == "path" and "." in param["name"]:
                    dotted = param["name"]
                    param["name"] = dotted.replace(".", "__")
                    path = path.replace("{" + dotted + "}", "{" + param["name"] + "}")
        paths[path] = item
    document["paths"] = paths
    return document


def _fuzz(operation: Any, base_url: str, checks: list[Any] = CHECKS, headers: dict[str, str] | None = None) -> None:
    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        case.call_and_validate(base_url=base_url, checks=checks, headers=headers, timeout=5)

    run()


def test_a_route_serves_its_document_when_asked(
    gateway_factory: GatewayFactory, bookstore_descriptor_set: Path, bookstore: int
) -> None:
    client = Client(gateway_factory(bookstore_config(bookstore_descriptor_set, bookstore, openapi=True)))
    status, headers, document = client.get("/v1/openapi.json")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert document["openapi"].startswith("3.1")
    assert "/v1/shelves/{shelf}" in document["paths"]
    closed = Client(gateway_factory(bookstore_config(bookstore_descriptor_set, bookstore)))
    assert closed.get("/v1/openapi.json")[0] == 404
