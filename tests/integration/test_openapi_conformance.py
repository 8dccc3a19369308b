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


@pytest.mark.xfail(
    strict=True,
    reason="the document gives streamed answers as application/x-ndjson while the gateway sends grpc-gateway's "
    "application/json by default, and schemathesis cannot build application/x-ndjson request bodies",
)
def test_streaming_operations_conform(
    gateway_factory: GatewayFactory, bookstore_descriptor_set: Path, fresh_backend: int
) -> None:
    config = bookstore_config(bookstore_descriptor_set, fresh_backend)
    gateway = gateway_factory(config)
    document = route_openapi(load_document(config), server_url=gateway.url)
    schema = schemathesis.openapi.from_dict(_without_dotted_path_names(document))
    streaming = [r.ok() for r in schema.get_all_operations() if _is_streaming(r.ok())]
    assert streaming, "the bookstore has no streaming methods any more: drop this test"
    for operation in streaming:
        _fuzz(operation, gateway.url)


def _is_streaming(operation: Any) -> bool:
    raw = operation.definition.raw
    grpc_method = raw.get("x-protogate-grpc-method", "")
    described = json.dumps([raw.get("requestBody", {}), raw["responses"]["200"]])
    return "application/x-ndjson" in described or grpc_method.endswith("/ExportBooks")


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


def _fuzz(operation: Any, base_url: str) -> None:
    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=5)

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
