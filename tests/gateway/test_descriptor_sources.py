"""Proto sources at config load: one source per proto, .proto files compiled with protoc, reflection errors."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config.loader import ConfigError, load_config, load_document
from gateway.descriptor_sources import ProtocError, compile_proto_files
from transcoder.descriptors import DescriptorIndex

TEST_PROTOS = Path(__file__).resolve().parents[1] / "protos"
KITCHEN = "protogate.test.v1.KitchenService"  # the service kitchen.proto declares
GRPC_UPSTREAM = {"id": "backend", "scheme": "grpc", "nodes": {"127.0.0.1:50051": 1}}


def issues(doc: Any, base_dir: Path = Path()) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_document(doc, base_dir=base_dir)
    return [str(issue) for issue in caught.value.issues]


def protos(*entries: dict[str, Any], upstreams: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"protos": list(entries), "upstreams": upstreams or [GRPC_UPSTREAM]}


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A config directory holding a copy of tests/protos under protos/."""
    shutil.copytree(TEST_PROTOS, tmp_path / "protos")
    return tmp_path


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- one source per proto -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "proto",
    [
        {"id": "p"},
        {"id": "p", "descriptor_set": "a.binpb", "proto_files": ["a.proto"]},
        {"id": "p", "descriptor_set": "a.binpb", "reflection": {"upstream_id": "backend"}},
    ],
)
def test_a_proto_needs_exactly_one_source(proto: dict[str, Any]) -> None:
    found = issues(protos(proto))
    assert len(found) == 1 and found[0].startswith("protos[0]:") and "exactly one of" in found[0]


def test_include_dirs_go_with_proto_files_only() -> None:
    found = issues(protos({"id": "p", "descriptor_set": "a.binpb", "include_dirs": ["x"]}))
    assert found == ["protos[0]: Value error, include_dirs only applies to proto_files"]


def test_reflection_settings_are_validated() -> None:
    bad = {"upstream_id": "backend", "refresh_interval": -1, "timeout": 0, "services": []}
    found = issues(protos({"id": "p", "reflection": bad}))
    assert {f.split(":")[0] for f in found} == {
        "protos[0].reflection.refresh_interval",
        "protos[0].reflection.timeout",
        "protos[0].reflection.services",
    }


# -- proto_files, compiled at load -----------------------------------------------------------------------------------


def test_proto_files_compile_relative_to_the_config_file(config_dir: Path) -> None:
    entry = {"id": "kitchen", "proto_files": ["protos/protogate/test/v1/kitchen.proto"], "include_dirs": ["protos"]}
    config = config_dir / "gateway.yaml"
    config.write_text(yaml.safe_dump(protos(entry)))
    index = load_config(config).protos["kitchen"]
    assert KITCHEN in index.services
    assert "google/api/http.proto" in index.file_names  # --include_imports
    assert index.bindings


def test_proto_files_default_to_the_config_directory_as_import_root(config_dir: Path) -> None:
    root = config_dir / "protos"
    loaded = load_document(protos({"id": "k", "proto_files": ["protogate/test/v1/kitchen.proto"]}), base_dir=root)
    assert "protogate/test/v1/kitchen.proto" in loaded.protos["k"].file_names


def test_a_missing_proto_file_is_named(config_dir: Path) -> None:
    entry = {"id": "k", "proto_files": ["protos/protogate/test/v1/kitchen.proto", "nope.proto"]}
    found = issues(protos(entry), config_dir)
    assert len(found) == 1 and found[0].startswith("protos[0].proto_files[1]: no such file:")
    assert "nope.proto" in found[0]


def test_a_missing_include_dir_is_named(config_dir: Path) -> None:
    entry = {"id": "k", "proto_files": ["protos/protogate/test/v1/kitchen.proto"], "include_dirs": ["protos", "gone"]}
    found = issues(protos(entry), config_dir)
    assert len(found) == 1 and found[0].startswith("protos[0].include_dirs[1]: not a directory:")


def test_a_syntax_error_reports_protocs_message_with_file_and_line(config_dir: Path) -> None:
    (config_dir / "protos" / "broken.proto").write_text('syntax = "proto3";\npackage b;\nmessage M { int32 x = ; }\n')
    entry = {"id": "b", "proto_files": ["protos/broken.proto"], "include_dirs": ["protos"]}
    found = issues(protos(entry), config_dir)
    assert len(found) == 1
    assert found[0].startswith("protos[0].proto_files: protoc cannot compile")
    assert "broken.proto:3:" in found[0] and "Expected field number" in found[0]


def test_an_unresolvable_import_reports_protocs_message(config_dir: Path) -> None:
    text = 'syntax = "proto3";\npackage b;\nimport "missing/dep.proto";\n'
    (config_dir / "protos" / "importer.proto").write_text(text)
    entry = {"id": "b", "proto_files": ["protos/importer.proto"], "include_dirs": ["protos"]}
    (found,) = issues(protos(entry), config_dir)
    assert found.startswith("protos[0].proto_files:") and "missing/dep.proto" in found and "not found" in found


def test_a_bad_http_rule_is_refused_after_compiling(config_dir: Path) -> None:
    text = (
        'syntax = "proto3";\npackage b;\nimport "google/api/annotations.proto";\nmessage M { string a = 1; }\n'
        'service S { rpc Get(M) returns (M) { option (google.api.http) = {get: "/v1/{nope}"}; } }\n'
    )
    (config_dir / "protos" / "rule.proto").write_text(text)
    (found,) = issues(protos({"id": "b", "proto_files": ["protos/rule.proto"], "include_dirs": ["protos"]}), config_dir)
    assert found.startswith("protos[0].proto_files:") and "nope" in found


def test_compile_proto_files_returns_a_descriptor_set() -> None:
    data = compile_proto_files([TEST_PROTOS / "protogate/test/v1/kitchen.proto"], [TEST_PROTOS])
    assert KITCHEN in DescriptorIndex.from_bytes(data).services
    with pytest.raises(ProtocError, match=r"File not found|No such file"):
        compile_proto_files([TEST_PROTOS / "absent.proto"], [TEST_PROTOS])


# -- reflection at load (a reachable backend is covered in tests/integration/test_reflection.py) ---------------------


def test_reflection_needs_a_known_grpc_upstream() -> None:
    http = {"id": "web", "nodes": {"127.0.0.1:8080": 1}}
    doc = protos(
        {"id": "a", "reflection": {"upstream_id": "nope"}},
        {"id": "b", "reflection": {"upstream_id": "web"}},
        upstreams=[GRPC_UPSTREAM, http],
    )
    assert issues(doc) == [
        "protos[0].reflection.upstream_id: no upstream has id 'nope'",
        "protos[1].reflection.upstream_id: upstream 'web' has scheme http, not grpc or grpcs",
    ]


def test_an_unreachable_reflection_backend_is_a_config_error_at_once() -> None:
    address = f"127.0.0.1:{closed_port()}"
    upstream = {"id": "backend", "scheme": "grpc", "nodes": {address: 1}}
    started = time.monotonic()
    (found,) = issues(protos({"id": "p", "reflection": {"upstream_id": "backend"}}, upstreams=[upstream]))
    assert time.monotonic() - started < 3
    assert found.startswith("protos[0].reflection: cannot read descriptors from upstream 'backend':")
    assert address in found and "unreachable" in found


def test_an_optional_reflection_source_that_is_down_lets_the_config_load(caplog: pytest.LogCaptureFixture) -> None:
    upstream = {"id": "backend", "scheme": "grpc", "nodes": {f"127.0.0.1:{closed_port()}": 1}}
    doc = protos({"id": "p", "reflection": {"upstream_id": "backend", "required": False}}, upstreams=[upstream])
    doc["routes"] = [
        {"id": "r", "uri": "/v1/*", "upstream_id": "backend", "plugins": {"grpc-transcode": {"proto_id": "p"}}}
    ]
    loaded = load_document(doc)
    assert "p" not in loaded.protos
    assert any("its routes wait for the first fetch" in r.getMessage() for r in caplog.records)
