"""ext-plugin-*: config refusals with their paths, then the hooks against a real runner process (dev mode)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict
from processes import REPO, Process, start
from transform_support import UPSTREAM, make_ctx

from gateway.config.loader import ConfigError, load_document
from gateway.config.models import PluginRunner
from gateway.errors import GatewayError
from gateway.plugins.ext_plugin import (
    DEGRADED_HEADER,
    ExtPluginConfig,
    ExtPluginPostReq,
    ExtPluginPostResp,
    ExtPluginPreReq,
)
from gateway.responses import ProxyResponse
from gateway.runner.pool import RUNNER_POOL, RunnerPool

AT = "routes[0].plugins.ext-plugin-pre-req"
PROBES = "tests/servers/ext_plugins/probes.py"
PY = {"name": "py", "cmd": ["python"]}


def issues(config: Any, runners: list[dict[str, Any]] | None = None, name: str = "ext-plugin-pre-req") -> list[str]:
    route = {"id": "r", "uri": "/*", "upstream_id": "u", "plugins": {name: config}}
    document = {"upstreams": [UPSTREAM], "routes": [route], "plugin_runners": [PY] if runners is None else runners}
    with pytest.raises(ConfigError) as caught:
        load_document(document)
    return [str(issue) for issue in caught.value.issues]


# 1. config


def test_config_refuses_bad_input_with_paths() -> None:
    assert issues({"conf": []})[0].startswith(f"{AT}.conf: ")
    assert issues({})[0].startswith(f"{AT}.conf: ")
    assert issues({"conf": [{"name": ""}]})[0].startswith(f"{AT}.conf[0].name: ")
    assert "not valid JSON" in issues({"conf": [{"name": "a", "value": "{nope"}]})[0]
    assert "JSON object" in issues({"conf": [{"name": "a", "value": "[1]"}]})[0]
    assert "appears twice" in issues({"conf": [{"name": "a"}, {"name": "a"}]})[0]
    assert issues({"conf": [{"name": "a"}], "timeout": 0})[0].startswith(f"{AT}.timeout: ")
    assert issues({"conf": [{"name": "a"}], "extra": 1})[0].startswith(f"{AT}.extra: ")


def test_runner_names_are_checked_with_paths() -> None:
    conf = {"conf": [{"name": "a"}]}
    assert issues({**conf, "runner": "nope"}) == [f"{AT}.runner: no plugin runner is named 'nope' (configured: py)"]
    assert issues(conf, runners=[]) == [f"{AT}.runner: no plugin_runners are configured"]
    two = [PY, {"name": "node", "cmd": ["node"]}]
    assert "name one" in issues(conf, runners=two)[0]
    assert issues({**conf, "runner": "py"}, runners=[PY, PY], name="ext-plugin-post-resp") == [
        "plugin_runners[1].name: duplicate name 'py'"
    ]


def test_plugin_runner_model() -> None:
    assert issues({"conf": [{"name": "a"}]}, runners=[{"name": "x"}])[0].startswith("plugin_runners[0]: ")
    assert "dev runner needs the address" in issues({"conf": [{"name": "a"}]}, runners=[{"name": "x", "dev": True}])[0]
    bad = issues({"conf": [{"name": "a"}]}, runners=[{"name": "x", "cmd": ["r"], "address": "localhost"}])
    assert bad[0].startswith("plugin_runners[0].address: ")
    assert PluginRunner(name="x", dev=True, address="unix:/tmp/x.sock").cmd is None
    assert PluginRunner(name="x", cmd=["r"], address="127.0.0.1:7000").address == "127.0.0.1:7000"


def test_json_text_values_and_defaults() -> None:
    config = ExtPluginConfig.model_validate({"conf": [{"name": "a", "value": '{"k": 1}'}]})
    assert config.conf[0].value == {"k": 1} and config.timeout == 0.3 and not config.allow_degradation
    assert config.version() == ExtPluginConfig.model_validate({"conf": [{"name": "a", "value": {"k": 1}}]}).version()
    assert config.version() != ExtPluginConfig.model_validate({"conf": [{"name": "a", "value": {"k": 2}}]}).version()


# 2. hooks against a real runner


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Process, Path]]:
    socket = tmp_path_factory.mktemp("ext") / "runner.sock"
    args = [sys.executable, "-m", "plugin_runner", "--log-level", "WARNING"]
    for spec in ("examples/plugins/python/rewrite.py", "examples/plugins/python/hmac_auth.py", PROBES):
        args += ["--plugins", str(REPO / spec)]
    process = start(args, cwd=REPO, env={"PROTOGATE_RUNNER_ADDRESS": f"unix:{socket}"})
    try:
        process.wait_for("plugin runner listening on")
        yield process, socket
    finally:
        process.stop()


@pytest.fixture
async def app(runner: tuple[Process, Path]) -> AsyncIterator[web.Application]:
    pool = RunnerPool([PluginRunner(name="py", dev=True, address=f"unix:{runner[1]}", start_timeout=10)])
    await pool.start()
    app = web.Application()
    app[RUNNER_POOL] = pool
    yield app
    await pool.release_all()
    await pool.close()


def with_app(ctx: Any, app: web.Application) -> Any:
    from aiohttp.test_utils import make_mocked_request

    ctx.request = make_mocked_request(ctx.method, ctx.request.raw_path, headers=ctx.request.headers, app=app)
    return ctx


def conf(*chain: tuple[str, dict[str, Any]], **options: Any) -> ExtPluginConfig:
    return ExtPluginConfig.model_validate({"conf": [{"name": n, "value": v} for n, v in chain], **options})


async def test_pre_req_rewrites_the_request(app: web.Application) -> None:
    plugin = ExtPluginPreReq(conf(("path-rewrite", {"strip_prefix": "/old", "request_headers": {"x-a": "1"}})))
    ctx = with_app(make_ctx("/old/x?a=1"), app)
    assert await plugin.rewrite(ctx) is None
    assert (ctx.path, ctx.query, ctx.headers["x-a"]) == ("/x", "a=1", "1")
    assert app[RUNNER_POOL].prepared_keys == {("py", ("r", "ext-plugin-pre-req", plugin.config.version()))}


async def test_concurrent_requests_share_batches_on_one_calls_stream(app: web.Application) -> None:
    plugin = ExtPluginPreReq(conf(("path-rewrite", {"strip_prefix": "/p"})))
    ctxs = [with_app(make_ctx(f"/p/{i}"), app) for i in range(20)]
    assert await asyncio.gather(*(plugin.rewrite(ctx) for ctx in ctxs)) == [None] * 20
    assert [ctx.path for ctx in ctxs] == [f"/{i}" for i in range(20)]  # each request got its own answer
    supervisor = app[RUNNER_POOL].get("py")
    assert supervisor is not None and supervisor.client is not None and supervisor.client.stream is not None
    stats = supervisor.client.stream.stats
    assert stats.opened == 1 and stats.calls == 20 and stats.batches < 20


async def test_post_req_stop_is_a_reply_and_pass_changes_nothing(app: web.Application) -> None:
    refusing = ExtPluginPostReq(conf(("hmac-auth", {"secret": "0123456789abcdef"})))
    reply = await refusing.access(with_app(make_ctx("/x"), app))
    assert reply is not None and reply.status == 401
    assert reply.to_response().body == b'{"message":"missing x-signature header"}'
    passing = ExtPluginPostReq(conf(("sleep", {"seconds": 0}), ("path-rewrite", {})))
    ctx = with_app(make_ctx("/x?b=2"), app)
    assert await passing.access(ctx) is None
    assert (ctx.path, ctx.query) == ("/x", "b=2")


async def test_post_resp_changes_the_upstream_answer_but_not_a_refusal(app: web.Application) -> None:
    plugin = ExtPluginPostResp(conf(("wrap-body", {}), ("path-rewrite", {"response_headers": {"x-r": "1"}})))
    ctx = with_app(make_ctx("/x"), app)
    response = ProxyResponse(200, CIMultiDict({"Content-Length": "2"}), b"ok")
    await plugin.body_filter(ctx, response)
    assert (response.status, response.body, response.headers["x-r"]) == (202, b"wrapped:ok", "1")
    refusal = ProxyResponse(401, CIMultiDict(), b"no", source="gateway")
    await plugin.body_filter(ctx, refusal)
    assert (refusal.status, refusal.body) == (401, b"no")


async def test_timeout_is_504_or_degraded(app: web.Application) -> None:
    slow = ("sleep", {"seconds": 1})
    ctx = with_app(make_ctx("/x"), app)
    with pytest.raises(GatewayError) as caught:
        await ExtPluginPreReq(conf(slow, timeout=0.1)).rewrite(ctx)
    assert caught.value.status == 504
    degrading = ExtPluginPreReq(conf(slow, timeout=0.1, allow_degradation=True))
    assert await degrading.rewrite(ctx) is None
    response = ProxyResponse(200, CIMultiDict(), b"")
    await degrading.header_filter(ctx, response)
    assert response.headers[DEGRADED_HEADER] == "degraded"


async def test_runner_down_is_503_at_once() -> None:
    app = web.Application()
    app[RUNNER_POOL] = RunnerPool(
        [PluginRunner(name="py", dev=True, address="unix:/nonexistent.sock")]
    )  # never started
    ctx = with_app(make_ctx("/x"), app)
    with pytest.raises(GatewayError) as caught:
        await ExtPluginPreReq(conf(("path-rewrite", {}))).rewrite(ctx)
    assert caught.value.status == 503 and caught.value.message.endswith("the plugin runner is not running")
