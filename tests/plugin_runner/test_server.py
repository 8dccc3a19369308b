"""The Python runner as a real process (`python -m plugin_runner`), driven through plugin_runner.client."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from email.utils import formatdate
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from processes import REPO
from runner_harness import HMAC_AUTH, SAMPLES, Runner, RunnerFactory, assert_exits_with_parent, python_runner_args

from plugin_runner import rpc_status
from plugin_runner.client import RunnerClient, RunnerConfigError
from plugin_runner.proto import runner_pb2 as pb
from plugin_runner.proto import runner_pb2_grpc as pb_grpc

SECRET = "0123456789abcdef-secret"


@pytest.fixture
async def client(python_runner: Runner) -> AsyncIterator[RunnerClient]:
    async with RunnerClient(python_runner.target, timeout=5.0) as client:
        await client.wait_ready(10)
        yield client


def signed_headers(method: str, path: str) -> list[pb.Header]:
    date = formatdate(usegmt=True)
    digest = hmac.new(SECRET.encode(), f"{method}\n{path}\n{date}".encode(), hashlib.sha256).digest()
    return [pb.Header(name="date", value=date), pb.Header(name="x-signature", value=base64.b64encode(digest).decode())]


async def test_describe_lists_plugins_with_schemas_and_phases(client: RunnerClient) -> None:
    described = await client.describe()
    plugins = {plugin.name: plugin for plugin in described.plugins}
    assert set(plugins) == {"hmac-auth", "path-rewrite", "boom", "slow", "echo-body"}
    assert len(described.epoch) == 16 and described.protocol_version == 1
    hmac_auth = plugins["hmac-auth"]
    assert json.loads(hmac_auth.config_schema)["required"] == ["secret"]
    assert (hmac_auth.request_phase, hmac_auth.response_phase) == (True, False)
    assert plugins["path-rewrite"].response_phase
    echo = plugins["echo-body"]
    assert echo.needs_request_body and echo.needs_response_body and list(echo.vars) == ["remote_addr", "route_id"]


async def test_health_is_serving(python_runner: Runner) -> None:
    async with grpc.aio.insecure_channel(python_runner.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "protogate.plugin.v1.PluginRunner"):
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_socket_is_private(python_runner: Runner) -> None:
    mode = python_runner.socket.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


async def test_prepare_reports_what_the_chain_needs(client: RunnerClient) -> None:
    conf = await client.prepare("needs", [("hmac-auth", {"secret": SECRET}), ("echo-body", None)], route_id="r1")
    assert conf.token.startswith(conf.epoch + ".") and conf.epoch == client.epoch
    assert conf.request_phase and conf.response_phase
    assert conf.needs_request_body and conf.needs_response_body
    assert conf.vars == ("remote_addr", "route_id")
    assert await client.prepare("needs", [("hmac-auth", {"secret": SECRET}), ("echo-body", None)]) is conf


async def test_prepare_refuses_bad_config_with_field_paths(client: RunnerClient) -> None:
    with pytest.raises(RunnerConfigError) as refused:
        await client.prepare("bad", [("hmac-auth", {"secret": "short", "clock_skew": -1}), ("nope", {})])
    fields = [field for field, _ in refused.value.violations]
    assert fields == [
        "plugins[0](hmac-auth).config.secret",
        "plugins[0](hmac-auth).config.clock_skew",
        "plugins[1].name",
    ]
    assert "at least 16 characters" in str(refused.value)


async def test_prepare_accepts_struct_config(python_runner: Runner) -> None:
    request = pb.PrepareConfRequest()
    request.plugins.add(name="slow").config_struct.update({"seconds": 1})
    async with grpc.aio.insecure_channel(python_runner.target) as channel:
        answer = await pb_grpc.PluginRunnerStub(channel).PrepareConf(request, timeout=5)
    assert answer.request_phase and not answer.response_phase


async def test_request_stop_pass_and_rewrite(client: RunnerClient) -> None:
    auth = await client.prepare("auth", [("hmac-auth", {"secret": SECRET}), ("path-rewrite", {"strip_prefix": "/api"})])

    refused = await client.call_request(auth, pb.HTTPReqCallRequest(method="GET", path="/api/books"))
    assert refused.WhichOneof("action") == "stop"
    assert refused.stop.status == 401 and json.loads(refused.stop.body) == {"message": "missing x-signature header"}

    signed = pb.HTTPReqCallRequest(method="GET", path="/api/books", headers=signed_headers("GET", "/api/books"))
    rewritten = await client.call_request(auth, signed)
    assert rewritten.WhichOneof("action") == "rewrite" and rewritten.rewrite.path == "/books"

    plain = await client.prepare("plain", [("path-rewrite", {"strip_prefix": "/api"})])
    passed = await client.call_request(plain, pb.HTTPReqCallRequest(method="GET", path="/other"))
    assert passed.WhichOneof("action") == "pass"


async def test_body_and_vars_reach_the_plugin_and_changes_come_back(client: RunnerClient) -> None:
    conf = await client.prepare("echo", [("echo-body", None)])
    request = pb.HTTPReqCallRequest(method="POST", path="/x", body=b"hello", vars={"remote_addr": "10.0.0.7"})
    request.args.add(name="q", value="1")
    answer = await client.call_request(conf, request)
    rewrite = answer.rewrite
    assert [(h.name, h.value) for h in rewrite.headers.set] == [
        ("x-body-present", "true"),
        ("x-remote-addr", "10.0.0.7"),
    ]
    assert rewrite.body == b"HELLO" and [(a.name, a.value) for a in rewrite.args.set] == [("seen", "1")]

    response = await client.call_response(conf, pb.HTTPRespCallRequest(status=200, body=b"ok"))
    assert response.status == 201 and response.body == b"[ok]"
    assert [(h.name, h.value) for h in response.headers.add] == [("set-cookie", "a=1"), ("set-cookie", "b=2")]


async def test_response_call_adds_header(client: RunnerClient) -> None:
    conf = await client.prepare("resp", [("path-rewrite", {"response_headers": {"X-Served-By": "runner"}})])
    answer = await client.call_response(
        conf, pb.HTTPRespCallRequest(status=200, headers=[pb.Header(name="a", value="b")])
    )
    assert answer.status == 0 and not answer.HasField("body")
    assert [(h.name, h.value) for h in answer.headers.set] == [("x-served-by", "runner")]


async def test_released_token_is_unknown_and_the_client_prepares_again(python_runner: Runner) -> None:
    async with RunnerClient(python_runner.target, timeout=5.0) as client:
        conf = await client.prepare("release", [("path-rewrite", {"strip_prefix": "/a"})])
        old_token = conf.token
        async with grpc.aio.insecure_channel(python_runner.target) as channel:
            stub = pb_grpc.PluginRunnerStub(channel)
            await stub.ReleaseConf(pb.ReleaseConfRequest(token=old_token), timeout=5)
            await stub.ReleaseConf(pb.ReleaseConfRequest(token=old_token), timeout=5)  # idempotent
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await stub.HTTPReqCall(pb.HTTPReqCallRequest(token=old_token, method="GET", path="/a/b"), timeout=5)
        assert unknown.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert rpc_status.error_reason(unknown.value) == rpc_status.TOKEN_UNKNOWN

        answer = await client.call_request(conf, pb.HTTPReqCallRequest(method="GET", path="/a/b"))
        assert answer.rewrite.path == "/b" and conf.token != old_token

        await client.release("release")
        answer = await client.call_request(conf, pb.HTTPReqCallRequest(method="GET", path="/a/b"))
        assert answer.rewrite.path == "/b"


async def test_plugin_exception_is_internal_with_its_name(client: RunnerClient) -> None:
    conf = await client.prepare("boom", [("boom", None)])
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await client.call_request(conf, pb.HTTPReqCallRequest(method="GET", path="/"))
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert failed.value.details() == "plugin 'boom' failed in on_request: RuntimeError: kaput"


async def test_slow_plugin_hits_the_call_deadline(client: RunnerClient) -> None:
    conf = await client.prepare("slow", [("slow", {"seconds": 5})])
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await client.call_request(conf, pb.HTTPReqCallRequest(method="GET", path="/"), timeout=0.2)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2


async def test_concurrent_prepares_of_one_key_share_one_token(client: RunnerClient) -> None:
    plugins = [("path-rewrite", {"strip_prefix": "/c"})]
    confs = await asyncio.gather(*(client.prepare("shared", plugins) for _ in range(20)))
    assert len({id(conf) for conf in confs}) == 1


async def test_restart_gives_a_new_epoch_and_old_tokens_are_unknown(runner_factory: RunnerFactory) -> None:
    first = runner_factory()
    async with RunnerClient(first.target, timeout=5.0) as client:
        await client.wait_ready(10)
        conf = await client.prepare("route", [("path-rewrite", {"strip_prefix": "/api"})])
        old_epoch, old_token = conf.epoch, conf.token
        first.process.stop()
        second = runner_factory()  # same socket path: the stale file of the first is gone or replaced

        async with grpc.aio.insecure_channel(second.target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await pb_grpc.PluginRunnerStub(channel).HTTPReqCall(
                    pb.HTTPReqCallRequest(token=old_token, method="GET", path="/api/x"), timeout=5
                )
        assert unknown.value.code() == rpc_status.TOKEN_UNKNOWN_CODE

        answer = await client.call_request(conf, pb.HTTPReqCallRequest(method="GET", path="/api/x"))
        assert answer.rewrite.path == "/x"
        assert conf.epoch != old_epoch and conf.epoch == client.epoch and conf.token != old_token


def test_stale_socket_file_is_replaced(runner_factory: RunnerFactory, tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(stale))
    listener.close()  # the file stays, nobody listens: what a crashed runner leaves
    runner = runner_factory(name="stale.sock")
    assert stat.S_IMODE(runner.socket.stat().st_mode) == 0o600


def test_sigterm_stops_gracefully_and_removes_the_socket(runner_factory: RunnerFactory) -> None:
    runner = runner_factory(python_runner_args(HMAC_AUTH))
    runner.process.stop()
    assert runner.process.popen.returncode == 0
    assert "plugin runner stopped" in "".join(runner.process.output)
    assert not runner.socket.exists()


def test_runner_exits_when_its_parent_dies(tmp_path: Path) -> None:
    assert_exits_with_parent(python_runner_args(SAMPLES), tmp_path / "orphan.sock")


def test_bad_plugin_spec_exits_with_a_message() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "plugin_runner", "--plugins", "no/such/file.py", "--socket", "/tmp/unused.sock"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert result.returncode == 2 and "no such plugin file: no/such/file.py" in result.stderr
