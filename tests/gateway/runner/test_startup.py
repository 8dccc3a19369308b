"""Load-time checks through the runner: runner field paths become config paths."""

from __future__ import annotations

import pytest

from gateway.config.loader import load_document
from gateway.runner.startup import config_path, ext_plugin_sites

AT = "routes[2].plugins.ext-plugin-pre-req"


@pytest.mark.parametrize(
    ("runner_path", "expected"),
    [
        ("plugins[0](hmac-auth).config.secret", f"{AT}.conf[0].value.secret"),
        ("plugins[1](x).config.items[3].name", f"{AT}.conf[1].value.items[3].name"),
        ("plugins[1].config.header", f"{AT}.conf[1].value.header"),  # the Node.js runner's form
        ("plugins[2].name", f"{AT}.conf[2].name"),
        ("plugins[0].config_json", f"{AT}.conf[0].value"),
        ("plugins[0](x).config", f"{AT}.conf[0].value"),
        ("somewhere else", f"{AT}.conf (somewhere else)"),
    ],
)
def test_runner_paths_map_to_config_paths(runner_path: str, expected: str) -> None:
    assert config_path(AT, runner_path) == expected


def test_every_definition_site_is_found_once() -> None:
    conf = {"conf": [{"name": "p", "value": '{"a": 1}'}]}
    loaded = load_document(
        {
            "plugin_runners": [{"name": "py", "cmd": ["true"]}],
            "upstreams": [{"id": "u", "nodes": {"127.0.0.1:1": 1}}],
            "services": [{"id": "s", "upstream_id": "u", "plugins": {"ext-plugin-post-resp": conf}}],
            "routes": [{"id": "r", "uri": "/x", "service_id": "s", "plugins": {"ext-plugin-pre-req": conf}}],
            "global_rules": [{"id": "g", "plugins": {"ext-plugin-post-req": conf}}],
        }
    )
    sites = [(at, route_id, name) for at, route_id, name, _ in ext_plugin_sites(loaded.config)]
    assert sites == [
        ("routes[0].plugins.ext-plugin-pre-req", "r", "ext-plugin-pre-req"),
        ("services[0].plugins.ext-plugin-post-resp", None, "ext-plugin-post-resp"),
        ("global_rules[0].plugins.ext-plugin-post-req", None, "ext-plugin-post-req"),
    ]
    assert next(ext_plugin_sites(loaded.config))[3].conf[0].value == {"a": 1}  # APISIX's JSON-text form
