"""The config loader: a bad document is refused whole, with the field path of every error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config.loader import ConfigError, load_config, load_document


@pytest.fixture
def proto_file(tmp_path: Path, kitchen_descriptor_set: bytes) -> Path:
    path = tmp_path / "kitchen.binpb"
    path.write_bytes(kitchen_descriptor_set)
    return path


def document(proto_file: Path, **route: Any) -> dict[str, Any]:
    return {
        "protos": [{"id": "kitchen", "descriptor_set": str(proto_file)}],
        "upstreams": [{"id": "backend", "scheme": "grpc", "nodes": {"127.0.0.1:50051": 1}}],
        "routes": [
            {
                "id": "r1",
                "uri": "/v1/*",
                "upstream_id": "backend",
                "plugins": {"grpc-transcode": {"proto_id": "kitchen"}},
                **route,
            }
        ],
    }


def issues(doc: Any, base_dir: Path = Path()) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_document(doc, base_dir=base_dir)
    return [str(issue) for issue in caught.value.issues]


def test_a_good_document_loads_with_its_protos(proto_file: Path) -> None:
    loaded = load_document(document(proto_file))
    assert loaded.config.routes[0].id == "r1"
    assert "kitchen" in loaded.protos
    assert loaded.route_plugins["r1"]["grpc-transcode"].config.proto_id == "kitchen"


def test_apisix_node_map_and_list_forms_are_equal(proto_file: Path) -> None:
    doc = document(proto_file)
    as_list = load_document(doc).config.upstreams[0].nodes
    doc["upstreams"][0]["nodes"] = [{"host": "127.0.0.1", "port": 50051, "weight": 1}]
    assert load_document(doc).config.upstreams[0].nodes == as_list


def test_every_error_is_reported_with_its_path(proto_file: Path) -> None:
    doc = document(proto_file)
    doc["routes"].append({"id": "r2", "uri": "no-slash", "methods": ["FETCH"], "upstream_id": "backend"})
    doc["upstreams"][0]["nodes"] = {"127.0.0.1:notaport": 1}
    found = issues(doc)
    assert any(line.startswith("routes[1].uri:") for line in found), found
    assert any(line.startswith("routes[1].methods[0]:") for line in found), found
    assert any(line.startswith("upstreams[0].nodes:") for line in found), found


def test_cross_references_are_checked(proto_file: Path) -> None:
    doc = document(proto_file, upstream_id="nope")
    doc["routes"][0]["plugins"]["grpc-transcode"] = {"proto_id": "missing"}
    found = issues(doc)
    assert "routes[0].upstream_id: no upstream has id 'nope'" in found
    assert "routes[0].plugins.grpc-transcode.proto_id: no proto has id 'missing'" in found


def test_unknown_service_and_method_name_the_field(proto_file: Path) -> None:
    doc = document(proto_file)
    doc["routes"][0]["plugins"]["grpc-transcode"] = {"proto_id": "kitchen", "service": "no.Such"}
    assert any(line.startswith("routes[0].plugins.grpc-transcode.service:") for line in issues(doc))
    service = next(iter(load_document(document(proto_file)).protos["kitchen"].services))
    doc["routes"][0]["plugins"]["grpc-transcode"] = {"proto_id": "kitchen", "service": service, "method": "Nope"}
    assert any(line.startswith("routes[0].plugins.grpc-transcode.method:") for line in issues(doc))


def test_unknown_plugin_and_bad_plugin_field(proto_file: Path) -> None:
    doc = document(proto_file)
    doc["routes"][0]["plugins"] = {"no-such-plugin": {}, "grpc-transcode": {"proto_id": "kitchen", "deadline": -1}}
    found = issues(doc)
    assert any(line.startswith("routes[0].plugins.no-such-plugin: unknown plugin") for line in found), found
    assert any(line.startswith("routes[0].plugins.grpc-transcode.deadline:") for line in found), found


def test_transcode_needs_a_grpc_upstream(proto_file: Path) -> None:
    doc = document(proto_file)
    doc["upstreams"][0]["scheme"] = "http"
    assert "routes[0].upstream: grpc-transcode needs an upstream with scheme grpc or grpcs" in issues(doc)


def test_duplicate_ids(proto_file: Path) -> None:
    doc = document(proto_file)
    doc["routes"].append(dict(doc["routes"][0]))
    assert "routes[1].id: duplicate id 'r1'" in issues(doc)


def test_missing_descriptor_file_names_the_file(tmp_path: Path, proto_file: Path) -> None:
    doc = document(proto_file)
    doc["protos"][0]["descriptor_set"] = "missing.binpb"
    found = issues(doc, base_dir=tmp_path)
    assert len(found) == 1 and found[0].startswith("protos[0].descriptor_set:") and "missing.binpb" in found[0]


def test_a_file_that_is_not_a_descriptor_set(tmp_path: Path, proto_file: Path) -> None:
    bogus = tmp_path / "bogus.binpb"
    bogus.write_text("routes: []\n")
    doc = document(proto_file)
    doc["protos"][0]["descriptor_set"] = str(bogus)
    found = issues(doc)
    assert found[0].startswith("protos[0].descriptor_set:") and "bogus.binpb" in found[0]


def test_unknown_top_level_and_route_fields_are_refused(proto_file: Path) -> None:
    doc = document(proto_file, colour="blue")
    doc["routez"] = []
    found = issues(doc)
    assert any(line.startswith("routez:") for line in found), found
    assert any(line.startswith("routes[0].colour:") for line in found), found


def test_uri_and_uris_are_exclusive(proto_file: Path) -> None:
    found = issues(document(proto_file, uris=["/a"]))
    assert any("exactly one of uri and uris" in line for line in found), found


def test_sizes_take_nginx_units(proto_file: Path) -> None:
    loaded = load_document({**document(proto_file), "gateway": {"client_max_body_size": "8k", "listen": 9999}})
    assert loaded.config.gateway.client_max_body_size == 8192
    assert loaded.config.gateway.listen[0].port == 9999
    assert issues({**document(proto_file), "gateway": {"client_max_body_size": "lots"}})[0].startswith(
        "gateway.client_max_body_size:"
    )


def test_relative_descriptor_path_is_relative_to_the_config_file(tmp_path: Path, proto_file: Path) -> None:
    doc = document(proto_file)
    doc["protos"][0]["descriptor_set"] = proto_file.name
    config_path = tmp_path / "gateway.yaml"
    import yaml

    config_path.write_text(yaml.safe_dump(doc))
    assert "kitchen" in load_config(config_path).protos


def test_yaml_syntax_error_is_one_clear_issue(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("routes: [\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "not valid YAML" in str(caught.value)


def test_a_document_that_is_not_a_mapping() -> None:
    assert issues(["routes"]) == ["the config document must be a mapping"]
