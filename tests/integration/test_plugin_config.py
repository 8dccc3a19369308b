"""End to end: where plugins come from (services, plugin_configs, global_rules, consumers, consumer groups),
how they merge, `_meta`, the log phase of stopped requests, and the config errors of each, through the real
gateway process in front of the real HTTP upstream and a transcoded gRPC route."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from gateway_harness import Client, Gateway, gateway_with_http_upstream
from processes import BIN

TRANSCODE = {"grpc-transcode": {"proto_id": "bookstore", "service": "bookstore.v1.Bookstore"}}


def set_headers(**headers: str) -> dict[str, Any]:
    return {"proxy-rewrite": {"headers": {"set": {name.replace("_", "-"): v for name, v in headers.items()}}}}


def route(host: str, plugins: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """An HTTP route told apart by Host; upstream `echo` unless a service or `extra` says otherwise."""
    body: dict[str, Any] = {"id": host, "uri": "/*", "host": host, "plugins": plugins or {}, **extra}
    if "service_id" not in extra:
        body.setdefault("upstream_id", "echo")
    return body


def grpc_route(host: str, plugins: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": host, "uri": "/v1/*", "host": host, "plugins": plugins or {}, **extra}
    if "service_id" not in extra:
        body["upstream_id"] = "bookstore"
        body["plugins"] = {**TRANSCODE, **body["plugins"]}
    return body


def config(upstream_port: int, bookstore_port: int, descriptor_set: Path) -> dict[str, Any]:
    one_conn = {"conn": 1, "burst": 0, "default_conn_delay": 0.1, "only_use_default_delay": True}
    return {
        "protos": [{"id": "bookstore", "descriptor_set": str(descriptor_set)}],
        "upstreams": [
            {"id": "echo", "scheme": "http", "nodes": {f"127.0.0.1:{upstream_port}": 1}, "timeout": {"read": 5}},
            {"id": "bookstore", "scheme": "grpc", "nodes": {f"127.0.0.1:{bookstore_port}": 1}, "timeout": {"read": 5}},
        ],
        "services": [
            {
                "id": "svc",
                "upstream_id": "echo",
                "plugins": {
                    **set_headers(X_Layer="service", X_Service_Only="yes"),
                    "response-rewrite": {"headers": {"set": {"X-Service": "svc"}}},
                },
            },
            {"id": "svc-auth", "upstream_id": "echo", "plugins": {"key-auth": {}}},
            {"id": "svc-grpc", "upstream_id": "bookstore", "plugins": {**TRANSCODE, "key-auth": {}}},
        ],
        "plugin_configs": [
            {
                "id": "pc",
                "plugins": {
                    **set_headers(X_Layer="plugin_config", X_PC_Only="yes"),
                    "response-rewrite": {"headers": {"set": {"X-Plugin-Config": "pc"}}},
                },
            },
            {"id": "pc-grpc", "plugins": set_headers(X_Layer="plugin_config")},
        ],
        "global_rules": [
            {
                "id": "everywhere",
                "plugins": {
                    **set_headers(X_Global="on", X_Layer="global"),
                    "request-id": {"header_name": "X-Trace-Id"},
                },
            }
        ],
        "consumer_groups": [
            {
                "id": "gold",
                "plugins": {
                    "limit-count": {"count": 1, "time_window": 60, "key": "consumer_name", "rejected_code": 429},
                    **set_headers(X_Group="gold"),
                },
            }
        ],
        "consumers": [
            {
                "username": "jack",
                "plugins": {
                    "key-auth": {"key": "jack-key"},
                    "limit-count": {"count": 2, "time_window": 60, "rejected_code": 429},
                },
            },
            {"username": "rose", "plugins": {"key-auth": {"key": "rose-key"}}},
            {"username": "tom", "group_id": "gold", "plugins": {"key-auth": {"key": "tom-key"}}},
            {"username": "ann", "plugins": {"key-auth": {"key": "ann-key"}}},
        ],
        "routes": [
            route("open.test"),
            route("svc.test", service_id="svc"),
            route("svc-own.test", set_headers(X_Layer="route"), service_id="svc"),
            route("svc-upstream.test", service_id="svc-auth", upstream_id="echo"),
            route("pc.test", plugin_config_id="pc"),
            route("pc-own.test", set_headers(X_Layer="route"), plugin_config_id="pc"),
            route("pc-svc.test", service_id="svc", plugin_config_id="pc"),
            route("consumer.test", {"key-auth": {}}),
            route("group.test", {"key-auth": {}}),
            route("group-rewrite.test", {"key-auth": {}}),
            route("disabled.test", {"key-auth": {"_meta": {"disable": True}}}),
            route("disable-inherited.test", {"key-auth": {"_meta": {"disable": True}}}, service_id="svc-auth"),
            route("order.test", {"key-auth": {}, **set_headers(apikey="rose-key")}),
            route(
                "order-meta.test",
                {
                    "key-auth": {},
                    "proxy-rewrite": {"headers": {"set": {"apikey": "rose-key"}}, "_meta": {"priority": 3000}},
                },
            ),
            route("same-header.test", {"request-id": {}, **set_headers(X_Request_Id="from-proxy-rewrite")}),
            route(
                "same-header-meta.test",
                {"request-id": {"_meta": {"priority": 1}}, **set_headers(X_Request_Id="from-proxy-rewrite")},
            ),
            route("conn-auth.test", {"key-auth": {}, "limit-conn": one_conn}),
            route(
                "conn-stop.test",
                {
                    "key-auth": {},
                    "limit-conn": one_conn,
                    # After limit-conn (1003) in the access phase, so it refuses a request that holds a slot.
                    "consumer-restriction": {"whitelist": ["ann"], "rejected_code": 401, "_meta": {"priority": 1000}},
                },
            ),
            grpc_route("svc.grpc", service_id="svc-grpc"),
            grpc_route("pc.grpc", plugin_config_id="pc-grpc"),
            grpc_route("group.grpc", {"key-auth": {}}),
            grpc_route(
                "order-meta.grpc",
                {
                    "key-auth": {},
                    "proxy-rewrite": {"headers": {"set": {"apikey": "ann-key"}}, "_meta": {"priority": 3000}},
                },
            ),
        ],
    }


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, bookstore: int, bookstore_descriptor_set: Path
) -> Iterator[Gateway]:
    with gateway_with_http_upstream(
        tmp_path_factory.mktemp("plugin-config"),
        "plugin-config",
        lambda port: config(port, bookstore, bookstore_descriptor_set),
    ) as gw:
        yield gw


@pytest.fixture
def client(gateway: Gateway) -> Client:
    return Client(gateway)


def get(client: Client, host: str, path: str = "/echo", **headers: str) -> tuple[int, Any, Any]:
    return client.get(path, headers={"Host": host, **headers})


def seen(body: dict[str, Any], name: str) -> list[str]:
    """The values of one header as the HTTP upstream received it."""
    return [value for key, value in body["headers"] if key.lower() == name.lower()]


def metadata(client: Client, host: str, **headers: str) -> tuple[int, Any, dict[str, str]]:
    status, response_headers, body = get(client, host, "/v1/debug/metadata", **headers)
    assert status == 200, body
    return status, response_headers, body["metadata"]


# services


def test_route_inherits_the_services_upstream_and_plugins(client: Client) -> None:
    status, headers, body = get(client, "svc.test")
    assert status == 200, body
    assert seen(body, "X-Layer") == ["service"]
    assert seen(body, "X-Service-Only") == ["yes"]
    assert headers["X-Service"] == "svc"


def test_routes_own_config_replaces_the_services_for_that_plugin_only(client: Client) -> None:
    status, headers, body = get(client, "svc-own.test")
    assert status == 200, body
    assert seen(body, "X-Layer") == ["route"]
    # The route's proxy-rewrite replaced the service's whole (no deep merge, as in APISIX) ...
    assert seen(body, "X-Service-Only") == []
    # ... and the service's other plugins still run.
    assert headers["X-Service"] == "svc"


def test_routes_own_upstream_id_with_a_service_keeps_the_services_plugins(client: Client) -> None:
    assert get(client, "svc-upstream.test")[0] == 401
    status, _, body = get(client, "svc-upstream.test", apikey="rose-key")
    assert status == 200, body
    assert seen(body, "X-Consumer-Username") == ["rose"]


def test_transcoded_route_inherits_transcoding_and_key_auth_from_its_service(client: Client) -> None:
    status, _, body = get(client, "svc.grpc", "/v1/shelves/1")
    assert status == 401 and body["code"] == 16
    status, _, body = get(client, "svc.grpc", "/v1/shelves/1", apikey="rose-key")
    assert status == 200 and body["id"] == "1"
    _, _, received = metadata(client, "svc.grpc", apikey="rose-key")
    assert received["x-consumer-username"] == "rose"


# plugin_configs


def test_plugin_config_plugins_are_merged_into_the_route(client: Client) -> None:
    status, headers, body = get(client, "pc.test")
    assert status == 200, body
    assert seen(body, "X-Layer") == ["plugin_config"]
    assert seen(body, "X-PC-Only") == ["yes"]
    assert headers["X-Plugin-Config"] == "pc"


def test_routes_own_config_wins_over_the_plugin_config(client: Client) -> None:
    status, headers, body = get(client, "pc-own.test")
    assert status == 200, body
    assert seen(body, "X-Layer") == ["route"]
    assert seen(body, "X-PC-Only") == []
    assert headers["X-Plugin-Config"] == "pc"


def test_plugin_config_wins_over_the_service(client: Client) -> None:
    status, headers, body = get(client, "pc-svc.test")
    assert status == 200, body
    assert seen(body, "X-Layer") == ["plugin_config"]
    assert seen(body, "X-Service-Only") == []
    # Both set response-rewrite: the plugin_config's replaced the service's.
    assert headers["X-Plugin-Config"] == "pc" and "X-Service" not in headers


def test_plugin_config_on_a_transcoded_route_reaches_grpc_as_metadata(client: Client) -> None:
    _, _, received = metadata(client, "pc.grpc")
    assert received["x-layer"] == "plugin_config"
    assert received["x-global"] == "on"


# global_rules


def test_global_rules_run_on_every_route_before_the_routes_plugins(client: Client) -> None:
    status, headers, body = get(client, "open.test")
    assert status == 200, body
    assert seen(body, "X-Global") == ["on"] and seen(body, "X-Layer") == ["global"]
    trace_ids = seen(body, "X-Trace-Id")
    assert len(trace_ids) == 1 and headers["X-Trace-Id"] == trace_ids[0]
    # Another route: the global header is there too, and the route's own proxy-rewrite ran after it.
    status, headers, body = get(client, "svc.test")
    assert status == 200, body
    assert seen(body, "X-Global") == ["on"] and seen(body, "X-Layer") == ["service"]
    assert seen(body, "X-Trace-Id") == [headers["X-Trace-Id"]]
    assert seen(body, "X-Trace-Id") != trace_ids


def test_global_rules_reach_a_transcoded_route(client: Client) -> None:
    _, headers, received = metadata(client, "svc.grpc", apikey="rose-key")
    assert received["x-global"] == "on"
    assert received["x-trace-id"] == headers["X-Trace-Id"]


def test_global_rules_answer_headers_on_a_refused_request(client: Client) -> None:
    status, headers, _ = get(client, "consumer.test")
    assert status == 401
    assert headers["X-Trace-Id"]


# consumers and consumer groups


def test_consumers_own_limit_applies_after_key_auth_and_not_to_others(client: Client) -> None:
    jack = [get(client, "consumer.test", apikey="jack-key") for _ in range(3)]
    assert [status for status, _, _ in jack] == [200, 200, 429]
    assert jack[0][1]["X-RateLimit-Limit"] == "2"
    assert jack[2][2]["code"] == 8
    rose = [get(client, "consumer.test", apikey="rose-key") for _ in range(4)]
    assert [status for status, _, _ in rose] == [200] * 4
    assert "X-RateLimit-Limit" not in rose[0][1]
    assert seen(rose[0][2], "X-Consumer-Username") == ["rose"]


def test_consumer_group_plugins_apply_to_members_only(client: Client) -> None:
    assert [get(client, "group.test", apikey="tom-key")[0] for _ in range(2)] == [200, 429]
    assert [get(client, "group.test", apikey="rose-key")[0] for _ in range(3)] == [200] * 3


def test_consumer_group_limit_on_a_transcoded_route(client: Client) -> None:
    statuses = [get(client, "group.grpc", "/v1/shelves/1", apikey="tom-key")[0] for _ in range(2)]
    assert statuses == [200, 429]
    assert get(client, "group.grpc", "/v1/shelves/1", apikey="ann-key")[0] == 200


def test_consumer_group_proxy_rewrite_runs_for_members(client: Client) -> None:
    status, _, body = get(client, "group-rewrite.test", apikey="tom-key")
    assert status == 200, body
    assert seen(body, "X-Group") == ["gold"]


# _meta


def test_meta_disable_turns_a_plugin_off(client: Client) -> None:
    status, _, body = get(client, "disabled.test")
    assert status == 200, body
    assert seen(body, "X-Consumer-Username") == []


def test_meta_disable_on_the_route_turns_off_the_services_plugin(client: Client) -> None:
    status, _, body = get(client, "disable-inherited.test")
    assert status == 200, body


def test_meta_priority_changes_the_order_of_plugins(client: Client) -> None:
    # key-auth (2500) runs before proxy-rewrite (1008): the key proxy-rewrite adds comes too late.
    status, _, body = get(client, "order.test")
    assert status == 401 and body["message"] == "Missing API key in request"
    # proxy-rewrite moved to 3000 runs first, and key-auth finds the key it set.
    status, _, body = get(client, "order-meta.test")
    assert status == 200, body
    assert seen(body, "X-Consumer-Username") == ["rose"]


def test_meta_priority_decides_which_of_two_plugins_sets_a_header(client: Client) -> None:
    # request-id (12015) first: it makes an id, then proxy-rewrite overwrites what goes upstream.
    status, headers, body = get(client, "same-header.test")
    assert status == 200, body
    assert seen(body, "X-Request-Id") == ["from-proxy-rewrite"]
    assert headers["X-Request-Id"] != "from-proxy-rewrite"
    # request-id at priority 1 runs last: it takes the value proxy-rewrite set as the request's id.
    status, headers, body = get(client, "same-header-meta.test")
    assert status == 200, body
    assert seen(body, "X-Request-Id") == ["from-proxy-rewrite"]
    assert headers["X-Request-Id"] == "from-proxy-rewrite"


def test_a_global_request_id_and_a_routes_keep_their_own_ids(client: Client) -> None:
    status, headers, body = get(client, "same-header.test")
    assert status == 200, body
    assert headers["X-Trace-Id"] == seen(body, "X-Trace-Id")[0]


def test_meta_priority_on_a_transcoded_route(client: Client) -> None:
    assert get(client, "group.grpc", "/v1/debug/metadata")[0] == 401
    _, _, received = metadata(client, "order-meta.grpc")
    assert received["x-consumer-username"] == "ann"


# the log phase of stopped requests


async def fetch(session: aiohttp.ClientSession, gateway: Gateway, host: str, path: str, **headers: str) -> int:
    async with session.get(f"{gateway.url}{path}", headers={"Host": host, **headers}) as response:
        await response.read()
        return response.status


async def test_limit_conn_is_live_and_a_401_from_key_auth_leaks_no_slot(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as session:
        # One slot: a second request while the first is in flight is refused.
        slow = asyncio.create_task(fetch(session, gateway, "conn-auth.test", "/slow?ms=500", apikey="rose-key"))
        await asyncio.sleep(0.2)
        assert await fetch(session, gateway, "conn-auth.test", "/echo", apikey="rose-key") == 503
        assert await slow == 200
        # key-auth refuses in the rewrite phase, before limit-conn counts; the log phase still runs.
        for _ in range(3):
            assert await fetch(session, gateway, "conn-auth.test", "/echo") == 401
        assert await fetch(session, gateway, "conn-auth.test", "/echo", apikey="rose-key") == 200


async def test_a_request_refused_after_limit_conn_took_its_slot_gives_the_slot_back(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as session:
        # rose passes key-auth and limit-conn, then consumer-restriction refuses her with 401. Had her
        # slot leaked, the next request would be a 503 from limit-conn instead.
        for _ in range(3):
            assert await fetch(session, gateway, "conn-stop.test", "/echo", apikey="rose-key") == 401
        assert await fetch(session, gateway, "conn-stop.test", "/echo", apikey="ann-key") == 200


# config errors, through `protogate validate`


def validate(tmp_path: Path, document: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return subprocess.run(
        [str(BIN / "protogate"), "validate", "-c", str(path)], capture_output=True, text=True, timeout=30
    )


def test_validate_accepts_this_modules_config(tmp_path: Path, bookstore_descriptor_set: Path) -> None:
    result = validate(tmp_path, config(8080, 50051, bookstore_descriptor_set))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_validate_names_every_error_in_every_place_plugins_live(tmp_path: Path) -> None:
    echo = {"nodes": {"127.0.0.1:8080": 1}}
    document = {
        "upstreams": [{"id": "echo", **echo}],
        "services": [
            {"id": "svc", "upstream_id": "echo", "plugins": {"limit-count": {"count": 0, "time_window": 60}}},
            {"id": "svc2", "upstream_id": "echo", "plugins": {"no-such-plugin": {}}},
        ],
        "plugin_configs": [{"id": "pc", "plugins": {"proxy-rewrite": {"regex_uri": ["^/a", "/b", "^/c"]}}}],
        "global_rules": [{"id": "g", "plugins": {"limit-req": {"rate": -1, "burst": 0}}}],
        "consumer_groups": [{"id": "gold", "plugins": {"limit-count": {"count": 1, "time_window": "soon"}}}],
        "consumers": [
            {"username": "jack", "group_id": "silver", "plugins": {"key-auth": {}}},
            {
                "username": "rose",
                "plugins": {"key-auth": {"key": "k"}, "limit-count": {"count": 2, "time_window": 60, "bogus": 1}},
            },
        ],
        "routes": [
            {"id": "r0", "uri": "/a", "service_id": "missing-service"},
            {"id": "r1", "uri": "/b", "upstream_id": "echo", "plugin_config_id": "missing-pc"},
            {
                "id": "r2",
                "uri": "/c",
                "upstream_id": "echo",
                "plugins": {
                    "key-auth": {"_meta": {"disabled": True}},
                    "limit-count": {"count": 1, "time_window": 1, "_meta": {"priority": "high"}},
                },
            },
        ],
    }
    result = validate(tmp_path, document)
    assert result.returncode == 1, result.stdout
    expected = [
        "routes[0].service_id: no service has id 'missing-service'",
        "routes[1].plugin_config_id: no plugin_config has id 'missing-pc'",
        "consumers[0].group_id: no consumer_group has id 'silver'",
        "routes[2].plugins.key-auth._meta.disabled",
        "routes[2].plugins.limit-count._meta.priority",
        "services[0].plugins.limit-count.count",
        "services[1].plugins.no-such-plugin: unknown plugin",
        "plugin_configs[0].plugins.proxy-rewrite.regex_uri",
        "global_rules[0].plugins.limit-req.rate",
        "consumer_groups[0].plugins.limit-count.time_window",
        "consumers[0].plugins.key-auth.key",
        "consumers[1].plugins.limit-count.bogus",
    ]
    printed = [line.strip() for line in result.stderr.splitlines()[1:]]
    for path in expected:
        assert any(line.startswith(path) for line in printed), f"{path!r} not in:\n{result.stderr}"
    assert f"invalid config ({len(expected)} errors)" in result.stderr
    assert len(printed) == len(expected), result.stderr


def test_a_bad_plugin_in_a_service_refuses_the_gateway_start(tmp_path: Path) -> None:
    document = {
        "upstreams": [{"id": "echo", "nodes": {"127.0.0.1:8080": 1}}],
        "services": [{"id": "svc", "upstream_id": "echo", "plugins": {"key-auth": {"header": ""}}}],
        "routes": [{"id": "r", "uri": "/*", "service_id": "svc"}],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    result = subprocess.run(
        [str(BIN / "protogate"), "run", "-c", str(path), "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "services[0].plugins.key-auth.header" in result.stderr
