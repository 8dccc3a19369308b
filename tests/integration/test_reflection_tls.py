"""End to end: descriptors read by server reflection from a grpcs upstream, over the upstream's own TLS."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from gateway_harness import Client, GatewayFactory
from processes import BIN, REPO, start
from tls_certs import CertificateAuthority, Issued

BACKEND = REPO / "tests" / "servers" / "reflection_backend.py"


@dataclass(frozen=True)
class Pki:
    backend_ca: CertificateAuthority
    other_ca: CertificateAuthority
    backend: Issued  # shop.internal only: the name to check comes from tls.server_name
    gateway_client: Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("reflection-tls-pki")
    backend_ca = CertificateAuthority(directory, "backend")
    return Pki(
        backend_ca=backend_ca,
        other_ca=CertificateAuthority(directory / "other", "other"),
        backend=backend_ca.issue("shop.internal", dns=("shop.internal",)),
        gateway_client=backend_ca.issue("gateway", client=True),
    )


@pytest.fixture(scope="module")
def grpcs_backend(pki: Pki) -> Iterator[int]:
    """A reflecting Bookstore + Greeter serving TLS with a CA of its own, requiring client certificates."""
    cert = pki.backend
    args = [str(BIN / "python"), str(BACKEND), "--port", "0", "--services", "bookstore,greeter"]
    tls = ["--tls-cert", str(cert.cert), "--tls-key", str(cert.key), "--tls-client-ca", str(pki.backend_ca.cert)]
    process = start([*args, *tls])
    try:
        line = process.wait_for("reflection backend listening on")
    except BaseException:
        process.stop()
        raise
    yield int(line.rsplit(":", 1)[1])
    process.stop()


def grpcs_config(pki: Pki, port: int, ca: Path | None = None, refresh: float = 30) -> dict[str, Any]:
    tls = {
        "ca": str(ca or pki.backend_ca.cert),
        "server_name": "shop.internal",
        "client_cert": str(pki.gateway_client.cert),
        "client_key": str(pki.gateway_client.key),
    }
    upstream = {"id": "shop", "scheme": "grpcs", "nodes": {f"127.0.0.1:{port}": 1}, "tls": tls}
    return {
        "protos": [{"id": "shop", "reflection": {"upstream_id": "shop", "timeout": 3, "refresh_interval": refresh}}],
        "upstreams": [{**upstream, "timeout": {"connect": 1, "read": 3}}],
        "routes": [
            {"id": "rest", "uri": "/v1/*", "upstream_id": "shop", "plugins": {"grpc-transcode": {"proto_id": "shop"}}},
        ],
    }


def test_reflection_over_grpcs_builds_the_routes_and_transcodes(
    pki: Pki, grpcs_backend: int, gateway_factory: GatewayFactory
) -> None:
    gateway = gateway_factory(grpcs_config(pki, grpcs_backend, refresh=0.2))
    client = Client(gateway)
    status, _, body = client.get("/v1/shelves")
    assert status == 200, body
    assert [shelf["theme"] for shelf in body["shelves"]] == ["Fiction", "Poetry"]
    status, _, body = client.get("/v1/greetings/Ada")  # the second service came over the same TLS reflection
    assert status == 200 and body["message"].startswith("Hello, Ada!")
    # The running gateway's watcher re-fetches every 0.2 s over the same TLS: a few rounds, and none failed.
    time.sleep(1.0)
    assert "reflection refresh failed" not in "".join(gateway.process.output)


def test_reflection_over_grpcs_with_another_ca_is_a_load_error_naming_verification(
    pki: Pki, grpcs_backend: int, tmp_path: Path
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(grpcs_config(pki, grpcs_backend, ca=pki.other_ca.cert)))
    done = subprocess.run(
        [str(BIN / "protogate"), "validate", "-c", str(config)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1, done.stdout + done.stderr
    expected = f"protos[0].reflection: cannot read descriptors from upstream 'shop': 127.0.0.1:{grpcs_backend}: "
    assert expected + "TLS handshake failed (" in done.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in done.stderr
