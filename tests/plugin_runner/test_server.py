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
from collections.abc import AsyncIterator, Callable
from email.utils import formatdate
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from processes import REPO
from runner_harness import (
    HMAC_AUTH,
    REWRITE,
    SAMPLES,
    Runner,
    RunnerFactory,
    assert_exits_with_parent,
    python_runner_args,
)

from plugin_runner import rpc_status
from plugin_runner.client import RunnerClient, RunnerConfigError
from plugin_runner.proto import runner_pb2 as pb
from plugin_runner.proto import runner_pb2_grpc as pb_grpc

SECRET = "0123456789abcdef-secret"
PROBES = REPO / "tests" / "servers" / "ext_plugins" / "probes.py"


@pytest.fixture(params=["stream", "unary"])
async def client(python_runner: Runner, request: pytest.FixtureRequest) -> AsyncIterator[RunnerClient]:
    """A client over the Calls stream (what the gateway uses with this runner), and one over the unary RPCs."""
    async with RunnerClient(python_runner.target, timeout=5.0, streaming=request.param == "stream") as client:
        await client.wait_ready(10)
        assert (client.stream is not None) == (request.param == "stream")
        yield client


def signed_headers(method: str, path: str) -> list[pb.Header]:
    date = formatdate(usegmt=True)
    digest = hmac.new(SECRET.encode(), f"{method}\n{path}\n{date}".encode(), hashlib.sha256).digest()
    return [pb.Header(name="date", value=date), pb.Header(name="x-signature", value=base64.b64encode(digest).decode())]


async def test_describe_lists_plugins_with_schemas_and_phases(client: RunnerClient) -> None:
    described = await client.describe()
    plugins = {plugin.name: plugin for plugin in described.plugins}
    assert set(plugins) == {"hmac-auth", "path-rewrite", "boom", "slow", "own-timeout", "echo-body"}
    assert len(described.epoch) == 16 and described.protocol_version == 2
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


async def test_a_plugin_timing_out_its_own_step_affects_only_itself(client: RunnerClient) -> None:
    conf = await client.prepare("own-timeout", [("own-timeout", None), ("path-rewrite", {"strip_prefix": "/t"})])
    answers = await asyncio.gather(
        *(client.call_request(conf, pb.HTTPReqCallRequest(method="GET", path=f"/t/{i}")) for i in range(3))
    )
    assert [answer.rewrite.path for answer in answers] == ["/0", "/1", "/2"]
    assert all([(h.name, h.value) for h in a.rewrite.headers.set] == [("x-own-timeout", "fired")] for a in answers)
    assert client.stream is None or client.stream.stats.opened == 1  # the stream was not hurt


async def test_a_chain_that_waits_goes_on_where_it_waited(client: RunnerClient) -> None:
    conf = await client.prepare("waits", [("slow", {"seconds": 0.01}), ("path-rewrite", {"strip_prefix": "/w"})])
    answers = await asyncio.gather(
        *(client.call_request(conf, pb.HTTPReqCallRequest(method="GET", path=f"/w/{i}")) for i in range(5))
    )
    assert [answer.rewrite.path for answer in answers] == [f"/{i}" for i in range(5)]


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


@pytest.mark.parametrize("streaming", [True, False])
async def test_released_token_is_unknown_and_the_client_prepares_again(python_runner: Runner, streaming: bool) -> None:
    async with RunnerClient(python_runner.target, timeout=5.0, streaming=streaming) as client:
        await client.wait_ready(10)
        conf = await client.prepare(f"release-{streaming}", [("path-rewrite", {"strip_prefix": "/a"})])
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

        await client.release(f"release-{streaming}")
        answer = await client.call_request(conf, pb.HTTPReqCallRequest(method="GET", path="/a/b"))
        assert answer.rewrite.path == "/b"
        assert (client.stream is not None and client.stream.stats.calls == 4) == streaming  # two of them retries


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


# -- the Calls stream ------------------------------------------------------------------------------------------------

CALLS = "/protogate.plugin.v1.PluginRunner/Calls"


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def stream_calls(target: str, calls: list[pb.Call], batches: list[int] | None = None) -> dict[int, pb.Result]:
    """Send `calls` as one CallBatch on a Calls stream of our own; every Result, by id. `batches` gets the number
    of results in each ResultBatch."""
    async with grpc.aio.insecure_channel(target) as channel:
        method = channel.stream_stream(
            CALLS, request_serializer=pb.CallBatch.SerializeToString, response_deserializer=pb.ResultBatch.FromString
        )
        stream = method(timeout=10)
        await stream.write(pb.CallBatch(calls=calls))
        results: dict[int, pb.Result] = {}
        while len(results) < len(calls):
            batch = await stream.read()
            assert batch is not grpc.aio.EOF
            results.update((result.id, result) for result in batch.results)
            if batches is not None:
                batches.append(len(batch.results))
        await stream.done_writing()
        assert await stream.read() is grpc.aio.EOF  # the runner ends the stream once all is answered
        assert await stream.code() == grpc.StatusCode.OK
        return results


async def test_calls_travel_batched_on_one_stream(python_runner: Runner) -> None:
    async with RunnerClient(python_runner.target, timeout=5.0) as client:
        await client.wait_ready(10)
        conf = await client.prepare("batched", [("path-rewrite", {"strip_prefix": "/b"})])
        answers = await asyncio.gather(
            *(client.call_request(conf, pb.HTTPReqCallRequest(method="GET", path=f"/b/{i}")) for i in range(50))
        )
        assert [answer.rewrite.path for answer in answers] == [f"/{i}" for i in range(50)]
        assert client.stream is not None
        stats = client.stream.stats
        assert stats.opened == 1 and stats.calls == 50 and stats.batches < 50


async def test_a_call_too_big_for_the_stream_goes_as_a_unary_rpc(python_runner: Runner) -> None:
    async with RunnerClient(python_runner.target, timeout=5.0, max_stream_message_bytes=64 * 1024) as client:
        await client.wait_ready(10)
        conf = await client.prepare("big", [("echo-body", None)])
        big = await client.call_request(conf, pb.HTTPReqCallRequest(method="POST", path="/", body=b"a" * 100_000))
        small = await client.call_request(conf, pb.HTTPReqCallRequest(method="POST", path="/", body=b"a"))
        assert big.rewrite.body == b"A" * 100_000 and small.rewrite.body == b"A"
        assert client.stream is not None and client.stream.stats.calls == 1  # only the small one


async def test_stream_results_carry_the_unary_status_codes(python_runner: Runner) -> None:
    async with RunnerClient(python_runner.target, timeout=5.0) as client:
        rewrite = await client.prepare("codes", [("path-rewrite", {"strip_prefix": "/c"})])
        boom = await client.prepare("codes-boom", [("boom", None)])
    calls = [
        pb.Call(id=1, http_req=pb.HTTPReqCallRequest(token=rewrite.token, method="GET", path="/c/x")),
        pb.Call(id=2, http_resp=pb.HTTPRespCallRequest(token=rewrite.token, status=200)),
        pb.Call(id=3, http_req=pb.HTTPReqCallRequest(token="gone.1", method="GET", path="/")),
        pb.Call(id=4, http_req=pb.HTTPReqCallRequest(token=boom.token, method="GET", path="/")),
        pb.Call(id=5),  # no kind of call set
    ]
    results = await stream_calls(python_runner.target, calls)
    assert results[1].http_req.rewrite.path == "/x" and results[2].HasField("http_resp")
    assert (results[3].error.code, results[3].error.message) == (
        rpc_status.TOKEN_UNKNOWN_CODE.value[0],
        "TOKEN_UNKNOWN: token 'gone.1' is not prepared",
    )
    assert results[4].error.code == grpc.StatusCode.INTERNAL.value[0]
    assert results[4].error.message == "plugin 'boom' failed in on_request: RuntimeError: kaput"
    assert results[5].error.code == grpc.StatusCode.UNIMPLEMENTED.value[0]


async def test_big_results_ready_together_go_in_several_batches(python_runner: Runner) -> None:
    async with RunnerClient(python_runner.target, timeout=5.0) as client:
        echo = await client.prepare("big-results", [("echo-body", None)])
    body = b"b" * 400_000  # the runner answers "[" + body + "]": three of them are over 1 MiB
    calls = [pb.Call(id=i, http_resp=pb.HTTPRespCallRequest(token=echo.token, status=200, body=body)) for i in range(3)]
    batches: list[int] = []
    results = await stream_calls(python_runner.target, calls, batches)
    assert all(results[i].http_resp.body == b"[" + body + b"]" for i in range(3))
    assert sum(batches) == 3 and len(batches) >= 2


async def test_the_runner_gives_up_a_call_at_its_timeout(python_runner: Runner) -> None:
    async with RunnerClient(python_runner.target, timeout=5.0) as client:
        slow = await client.prepare("gives-up", [("slow", {"seconds": 5})])
    started = time.monotonic()
    request = pb.HTTPReqCallRequest(token=slow.token, method="GET", path="/")
    results = await stream_calls(python_runner.target, [pb.Call(id=7, timeout_ms=100, http_req=request)])
    assert results[7].error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert time.monotonic() - started < 2  # the plugin was cancelled, as a unary handler at its deadline


async def test_a_killed_runner_fails_calls_in_flight_at_once(runner_factory: RunnerFactory) -> None:
    runner = runner_factory()
    async with RunnerClient(runner.target, timeout=5.0) as client:
        await client.wait_ready(10)
        slow = await client.prepare("killed", [("slow", {"seconds": 30})])
        waiting = [
            asyncio.create_task(client.call_request(slow, pb.HTTPReqCallRequest(method="GET", path="/"), timeout=20))
            for _ in range(3)
        ]
        assert client.stream is not None
        await until(lambda: client.stream is not None and client.stream.stats.calls == 3)
        started = time.monotonic()
        runner.process.popen.kill()
        for task in waiting:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await task
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 2


async def test_sigterm_answers_the_calls_in_flight_then_stops(runner_factory: RunnerFactory) -> None:
    runner = runner_factory(python_runner_args(REWRITE, SAMPLES, PROBES))
    async with RunnerClient(runner.target, timeout=5.0) as client:
        await client.wait_ready(10)
        chain = [("announce", None), ("slow", {"seconds": 0.3}), ("path-rewrite", {"strip_prefix": "/d"})]
        conf = await client.prepare("drain", chain)
        waiting = asyncio.create_task(client.call_request(conf, pb.HTTPReqCallRequest(method="GET", path="/d/x")))
        await asyncio.to_thread(runner.process.wait_for, "ext-plugin call for /d/x")  # the runner is on it
        started = time.monotonic()
        runner.process.popen.terminate()
        assert (await waiting).rewrite.path == "/x"
        assert client.stream is not None and client.stream.stats.opened == 1
        code = await asyncio.to_thread(runner.process.popen.wait, 10)
        assert code == 0 and time.monotonic() - started < 1.9  # the open stream did not hold it for the 2 s grace


LEGACY_RUNNER = REPO / "tests" / "servers" / "ext_plugins" / "legacy_runner.py"


@pytest.mark.parametrize("claim", [1, 2])
async def test_a_runner_without_the_calls_stream_is_called_unary(runner_factory: RunnerFactory, claim: int) -> None:
    runner = runner_factory([sys.executable, str(LEGACY_RUNNER), "--claim", str(claim), "--plugins", str(REWRITE)])
    async with RunnerClient(runner.target, timeout=5.0) as client:
        described = await client.wait_ready(10)
        assert described.protocol_version == claim and (client.stream is not None) == (claim == 2)
        conf = await client.prepare("legacy", [("path-rewrite", {"strip_prefix": "/l"})])
        for _ in range(2):  # a runner that claimed the stream falls back at its first UNIMPLEMENTED
            answer = await client.call_request(conf, pb.HTTPReqCallRequest(method="GET", path="/l/x"))
            assert answer.rewrite.path == "/x"
        assert client.stream is None
