"""opentelemetry: config refusals with their paths, samplers built from APISIX's fields, extra attributes."""

from __future__ import annotations

from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from transform_support import issues, loads, make_ctx

from gateway.plugins.opentelemetry import OpenTelemetry

AT = "routes[0].plugins.opentelemetry"


def test_config_refuses_bad_input_with_paths() -> None:
    assert issues("opentelemetry", {"sampler": {"name": "sometimes"}})[0].startswith(f"{AT}.sampler.name: ")
    fraction = {"sampler": {"name": "trace_id_ratio", "options": {"fraction": 2}}}
    assert issues("opentelemetry", fraction)[0].startswith(f"{AT}.sampler.options.fraction: ")
    assert issues("opentelemetry", {"additional_attributes": ["no_such_var"]})[0].startswith(
        f"{AT}.additional_attributes: "
    )
    root = {"sampler": {"name": "always_on", "options": {"root": {"name": "always_on"}}}}
    assert "root only applies to parent_base" in issues("opentelemetry", root)[0]


def test_defaults_are_apisix_s() -> None:
    config = loads("opentelemetry", {})
    assert config.sampler.name == "always_off"
    assert OpenTelemetry(config).sampler is ALWAYS_OFF


def test_samplers_from_config() -> None:
    ratio = OpenTelemetry(
        loads("opentelemetry", {"sampler": {"name": "trace_id_ratio", "options": {"fraction": 0.25}}})
    )
    assert isinstance(ratio.sampler, TraceIdRatioBased) and ratio.sampler.rate == 0.25
    parent = {"name": "parent_base", "options": {"root": {"name": "trace_id_ratio", "options": {"fraction": 0.5}}}}
    sampler = OpenTelemetry(loads("opentelemetry", {"sampler": parent})).sampler
    assert isinstance(sampler, ParentBased) and "TraceIdRatioBased{0.5}" in sampler.get_description()


def test_additional_attributes_from_variables_and_header_prefixes() -> None:
    plugin = OpenTelemetry(
        loads(
            "opentelemetry",
            {
                "additional_attributes": ["$route_id", "http_x_user"],
                "additional_header_prefix_attributes": ["X-Tenant"],
            },
        )
    )
    ctx = make_ctx(headers=[("X-User", "bob"), ("X-Tenant-Id", "acme"), ("X-Other", "no")])
    assert plugin.attributes(ctx) == {"route_id": "r", "http_x_user": "bob", "X-Tenant-Id": "acme"}
