"""The Node.js runner (examples/plugins/node) speaks the same protocol: driven through plugin_runner.client.

`npm ci --prefix examples/plugins/node` (run by `make test`) installs its dependencies; without them these
tests fail and say so. They are skipped only where no `node` binary exists at all.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import stat
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from runner_harness import NODE_RUNNER_DIR, Runner, assert_exits_with_parent, start_runner

from plugin_runner import rpc_status
from plugin_runner.client import RunnerClient, RunnerConfigError
from plugin_runner.proto import runner_pb2 as pb
from plugin_runner.proto import runner_pb2_grpc as pb_grpc

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")


def node_args() -> list[str]:
    assert NODE is not None
    missing = [
        dep
        for dep in ("@grpc/grpc-js", "@grpc/proto-loader", "grpc-health-check", "protobufjs")
        if not (NODE_RUNNER_DIR / "node_modules" / dep).is_dir()
    ]
    if missing:
        pytest.fail(f"{NODE_RUNNER_DIR}/node_modules lacks {missing}: run `npm ci --prefix examples/plugins/node`")
    return [NODE, str(NODE_RUNNER_DIR / "runner.js")]


@pytest.fixture(scope="module")
def node_runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    runner = start_runner(node_args(), tmp_path_factory.mktemp("node") / "runner.sock")
    yield runner
    runner.process.stop()


@pytest.fixture(params=["stream", "unary"])
async def client(node_runner: Runner, request: pytest.FixtureRequest) -> AsyncIterator[RunnerClient]:
    """A client over the Calls stream (what the gateway uses with this runner), and one over the unary RPCs."""
    async with RunnerClient(node_runner.target, timeout=5.0, streaming=request.param == "stream") as client:
        await client.wait_ready(10)
        assert (client.stream is not None) == (request.param == "stream")
        yield client


async def test_describe_and_health(client: RunnerClient, node_runner: Runner) -> None:
    described = await client.describe()
    assert described.runner_name == "protogate-node-runner" and described.protocol_version == 2
    [plugin] = described.plugins
    assert plugin.name == "require-header" and plugin.request_phase and not plugin.response_phase
    assert json.loads(plugin.config_schema)["required"] == ["header"]
    assert await client.check_health()
    async with grpc.aio.insecure_channel(node_runner.target) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_socket_is_private(node_runner: Runner) -> None:
    mode = node_runner.socket.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


async def test_require_header_stops_or_passes(client: RunnerClient) -> None:
    conf = await client.prepare("team", [("require-header", {"header": "X-Team", "status": 401})])
    assert conf.request_phase and not conf.response_phase and conf.token.startswith(conf.epoch)

    refused = await client.call_request(conf, pb.HTTPReqCallRequest(method="GET", path="/x"))
    assert refused.WhichOneof("action") == "stop" and refused.stop.status == 401
    assert json.loads(refused.stop.body) == {"message": "missing required header", "header": "x-team"}

    allowed = pb.HTTPReqCallRequest(method="GET", path="/x", headers=[pb.Header(name="x-team", value="core")])
    assert (await client.call_request(conf, allowed)).WhichOneof("action") == "pass"

    unchanged = await client.call_response(conf, pb.HTTPRespCallRequest(status=200))
    assert unchanged == pb.HTTPRespCallResponse()


async def test_struct_config_defaults_to_403(node_runner: Runner) -> None:
    prepare = pb.PrepareConfRequest()
    prepare.plugins.add(name="require-header").config_struct.update({"header": "x-key"})
    async with grpc.aio.insecure_channel(node_runner.target) as channel:
        stub = pb_grpc.PluginRunnerStub(channel)
        prepared = await stub.PrepareConf(prepare, timeout=5)
        answer = await stub.HTTPReqCall(pb.HTTPReqCallRequest(token=prepared.token, method="GET"), timeout=5)
    assert answer.stop.status == 403


async def test_bad_config_names_fields(client: RunnerClient) -> None:
    with pytest.raises(RunnerConfigError) as refused:
        await client.prepare("bad", [("require-header", {"status": 42, "extra": True}), ("nope", None)])
    assert [field for field, _ in refused.value.violations] == [
        "plugins[0](require-header).config.extra",
        "plugins[0](require-header).config.header",
        "plugins[0](require-header).config.status",
        "plugins[1].name",
    ]


async def test_released_token_is_unknown_and_the_client_recovers(client: RunnerClient, node_runner: Runner) -> None:
    conf = await client.prepare("release", [("require-header", {"header": "x-team"})])
    old_token = conf.token
    await client.release("release")
    async with grpc.aio.insecure_channel(node_runner.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await pb_grpc.PluginRunnerStub(channel).HTTPRespCall(pb.HTTPRespCallRequest(token=old_token), timeout=5)
    assert unknown.value.code() == rpc_status.TOKEN_UNKNOWN_CODE
    assert rpc_status.error_reason(unknown.value) == rpc_status.TOKEN_UNKNOWN

    answer = await client.call_request(conf, pb.HTTPReqCallRequest(method="GET", path="/"))
    assert answer.stop.status == 403 and conf.token != old_token


async def test_calls_stream_answers_with_the_unary_status_codes(node_runner: Runner) -> None:
    async with RunnerClient(node_runner.target, timeout=5.0) as client:
        conf = await client.prepare("stream", [("require-header", {"header": "x-team"})])
    calls = [
        pb.Call(id=1, http_req=pb.HTTPReqCallRequest(token=conf.token, method="GET", path="/")),
        pb.Call(id=2, http_resp=pb.HTTPRespCallRequest(token=conf.token, status=200)),
        pb.Call(id=3, http_req=pb.HTTPReqCallRequest(token="gone.1", method="GET", path="/")),
        pb.Call(id=2**40, timeout_ms=100),  # no kind of call set; an id past 32 bits
    ]
    async with grpc.aio.insecure_channel(node_runner.target) as channel:
        method = channel.stream_stream(
            "/protogate.plugin.v1.PluginRunner/Calls",
            request_serializer=pb.CallBatch.SerializeToString,
            response_deserializer=pb.ResultBatch.FromString,
        )
        stream = method(timeout=10)
        await stream.write(pb.CallBatch(calls=calls))
        results: dict[int, pb.Result] = {}
        while len(results) < len(calls):
            batch = await stream.read()
            assert batch is not grpc.aio.EOF
            results.update((result.id, result) for result in batch.results)
        await stream.done_writing()
        assert await stream.read() is grpc.aio.EOF and await stream.code() == grpc.StatusCode.OK
    assert results[1].http_req.stop.status == 403 and results[2].http_resp == pb.HTTPRespCallResponse()
    assert results[3].error.code == rpc_status.TOKEN_UNKNOWN_CODE.value[0]
    assert results[2**40].error.code == grpc.StatusCode.UNIMPLEMENTED.value[0]


def test_sigterm_stops_and_removes_the_socket(tmp_path: Path) -> None:
    runner = start_runner(node_args(), tmp_path / "term.sock")
    runner.process.stop()
    assert runner.process.popen.returncode == 0 and not runner.socket.exists()


async def test_sigterm_with_a_calls_stream_open_stops_at_once(tmp_path: Path) -> None:
    runner = start_runner(node_args(), tmp_path / "open.sock")
    try:
        async with RunnerClient(runner.target, timeout=5.0) as client:
            await client.wait_ready(10)
            conf = await client.prepare("open", [("require-header", {"header": "x-team"})])
            await client.call_request(conf, pb.HTTPReqCallRequest(method="GET", path="/"))
            assert client.stream is not None and client.stream.stats.calls == 1  # the stream is open
            started = time.monotonic()
            runner.process.popen.terminate()
            assert await asyncio.to_thread(runner.process.popen.wait, 10) == 0
            assert time.monotonic() - started < 1.9  # not held for the 2 s forced-shutdown timer
    finally:
        runner.process.stop()
    assert not runner.socket.exists()


def test_exits_when_its_parent_dies(tmp_path: Path) -> None:
    assert_exits_with_parent(node_args(), tmp_path / "orphan.sock")
