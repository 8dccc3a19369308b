"""Active health checks of TLS upstreams: probes present and trust what the upstream's calls do (its `tls` block).

HTTPS nodes are real processes (tests/servers/http_upstream.py) serving a certificate from a CA of their own;
the grpcs node is a grpc.aio server in this process, as in test_health.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from gateway_harness import HTTP_UPSTREAM_SCRIPT
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from processes import BIN, Process, start
from tls_certs import CertificateAuthority, Issued

from gateway.config.models import Upstream
from gateway.upstream.grpc import GrpcUpstream
from gateway.upstream.http import HttpUpstream
from gateway.upstream.node_state import NodeSet

FAST = {"healthy": {"interval": 0.05, "successes": 1}, "timeout": 1.0}
# One failed probe of any kind takes the node out, so a refused handshake shows at once.
OUT_AFTER_ONE = {"interval": 0.05, "tcp_failures": 1, "http_failures": 1, "timeouts": 1}


@dataclass(frozen=True)
class Pki:
    backend_ca: CertificateAuthority
    other_ca: CertificateAuthority
    server: Issued  # echo.internal only: no IP address, so the name to check must be given
    gateway_client: Issued  # the gateway's certificate towards a backend that wants mutual TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("health-pki")
    backend = CertificateAuthority(directory, "backend")
    return Pki(
        backend_ca=backend,
        other_ca=CertificateAuthority(directory / "other", "other"),
        server=backend.issue("echo.internal", dns=("echo.internal",)),
        gateway_client=backend.issue("gateway", client=True),
    )


def start_https_upstream(pki: Pki, *extra: str) -> tuple[Process, int]:
    cert = pki.server
    args = [str(BIN / "python"), str(HTTP_UPSTREAM_SCRIPT), "--port", "0", "--name", "tls"]
    process = start([*args, "--tls-cert", str(cert.cert), "--tls-key", str(cert.key), *extra])
    try:
        line = process.wait_for("http upstream listening on")
    except BaseException:
        process.stop()
        raise
    return process, int(line.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def https_port(pki: Pki) -> Iterator[int]:
    process, port = start_https_upstream(pki)
    yield port
    process.stop()


@pytest.fixture(scope="module")
def mtls_port(pki: Pki) -> Iterator[int]:
    process, port = start_https_upstream(pki, "--tls-client-ca", str(pki.backend_ca.cert))
    yield port
    process.stop()


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def https_upstream(port: int, tls: dict[str, Any] | None, **check: Any) -> Upstream:
    active = {"type": "https", "http_path": "/status/200", **FAST, "unhealthy": OUT_AFTER_ONE, **check}
    document: dict[str, Any] = {"scheme": "https", "nodes": {f"127.0.0.1:{port}": 1}, "checks": {"active": active}}
    if tls is not None:
        document["tls"] = tls
    return Upstream.model_validate(document)


async def comes_back(nodes: NodeSet) -> None:
    """Take the node out by hand: only successful probes bring it back, so this proves they pass."""
    state = nodes.states[0]
    nodes.failure(state, "tcp", "active")
    assert not state.healthy
    await eventually(lambda: state.healthy)


async def goes_out(nodes: NodeSet) -> None:
    await eventually(lambda: not nodes.states[0].healthy)


async def test_https_probe_trusts_the_upstreams_ca_and_checks_its_server_name(pki: Pki, https_port: int) -> None:
    tls = {"ca": str(pki.backend_ca.cert), "server_name": "echo.internal"}
    client = HttpUpstream(https_upstream(https_port, tls))
    try:
        await comes_back(client.nodes)
    finally:
        await client.close()


async def test_https_probe_without_the_ca_fails_verification_and_says_so(
    pki: Pki, https_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="protogate.upstream.health")
    client = HttpUpstream(https_upstream(https_port, {"server_name": "echo.internal"}))  # the system's CAs
    try:
        await goes_out(client.nodes)
        await asyncio.sleep(0.3)  # several more failed probes: still one line
    finally:
        await client.close()
    lines = [r.getMessage() for r in caplog.records if "health probe of" in r.getMessage()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"health probe of 127.0.0.1:{https_port}: TLS certificate verification failed:")
    assert "certificate verify failed" in lines[0]


async def test_https_probe_with_another_ca_or_the_wrong_name_is_refused(
    pki: Pki, https_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="protogate.upstream.health")
    other = HttpUpstream(https_upstream(https_port, {"ca": str(pki.other_ca.cert), "server_name": "echo.internal"}))
    unnamed = HttpUpstream(https_upstream(https_port, {"ca": str(pki.backend_ca.cert)}))  # checks 127.0.0.1
    try:
        await goes_out(other.nodes)
        await goes_out(unnamed.nodes)
    finally:
        await other.close()
        await unnamed.close()
    text = caplog.text
    assert "unable to get local issuer certificate" in text or "self-signed certificate" in text
    assert "IP address mismatch" in text or "Hostname mismatch" in text


async def test_https_verify_certificate_false_turns_verification_off_for_probes(https_port: int) -> None:
    client = HttpUpstream(https_upstream(https_port, None, https_verify_certificate=False))
    try:
        await comes_back(client.nodes)
    finally:
        await client.close()


async def test_https_probe_presents_the_client_certificate_to_an_mtls_upstream(pki: Pki, mtls_port: int) -> None:
    tls = {
        "ca": str(pki.backend_ca.cert),
        "server_name": "echo.internal",
        "client_cert": str(pki.gateway_client.cert),
        "client_key": str(pki.gateway_client.key),
    }
    with_cert = HttpUpstream(https_upstream(mtls_port, tls))
    without = HttpUpstream(https_upstream(mtls_port, {"ca": tls["ca"], "server_name": tls["server_name"]}))
    try:
        await comes_back(with_cert.nodes)
        await goes_out(without.nodes)  # the backend refuses the handshake
        assert with_cert.nodes.states[0].healthy
    finally:
        await with_cert.close()
        await without.close()


# -- grpc health probes of a grpcs upstream --------------------------------------------------------------------------


@pytest.fixture
async def grpcs_health(pki: Pki) -> AsyncIterator[int]:
    """A TLS gRPC server answering grpc.health.v1 (SERVING for the whole server); it wants client certificates."""
    server = grpc.aio.server()
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    pair = (pki.server.key.read_bytes(), pki.server.cert.read_bytes())
    credentials = grpc.ssl_server_credentials(
        [pair], root_certificates=pki.backend_ca.cert.read_bytes(), require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    yield port
    await server.stop(0)


def grpcs_upstream(port: int, tls: dict[str, Any]) -> Upstream:
    # check.port makes the probe open a channel of its own rather than go through the client's channels.
    active = {"type": "grpc", "port": port, **FAST, "unhealthy": OUT_AFTER_ONE}
    nodes = {f"127.0.0.1:{port}": 1}
    return Upstream.model_validate({"scheme": "grpcs", "nodes": nodes, "tls": tls, "checks": {"active": active}})


async def test_grpc_probe_on_its_own_port_uses_the_upstreams_tls(
    pki: Pki, grpcs_health: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="protogate.upstream.health")
    tls = {
        "ca": str(pki.backend_ca.cert),
        "server_name": "echo.internal",
        "client_cert": str(pki.gateway_client.cert),
        "client_key": str(pki.gateway_client.key),
    }
    good = GrpcUpstream(grpcs_upstream(grpcs_health, tls))
    wrong_ca = GrpcUpstream(grpcs_upstream(grpcs_health, {**tls, "ca": str(pki.other_ca.cert)}))
    try:
        await comes_back(good.node_set)
        await goes_out(wrong_ca.node_set)
    finally:
        await good.close()
        await wrong_ca.close()
    assert f"health probe of 127.0.0.1:{grpcs_health}: TLS handshake failed" in caplog.text
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


async def test_grpc_probe_through_the_clients_channels_uses_the_upstreams_tls(pki: Pki, grpcs_health: int) -> None:
    tls = {
        "ca": str(pki.backend_ca.cert),
        "server_name": "echo.internal",
        "client_cert": str(pki.gateway_client.cert),
        "client_key": str(pki.gateway_client.key),
    }
    active = {"type": "grpc", **FAST, "unhealthy": OUT_AFTER_ONE}
    nodes = {f"127.0.0.1:{grpcs_health}": 1}
    document = {"scheme": "grpcs", "nodes": nodes, "tls": tls, "checks": {"active": active}}
    client = GrpcUpstream(Upstream.model_validate(document), base_dir=Path())
    try:
        await comes_back(client.node_set)
    finally:
        await client.close()
