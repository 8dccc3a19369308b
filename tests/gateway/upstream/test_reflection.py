"""Server reflection client and ReflectionWatcher: the protocol alone, then against a real reflecting backend."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2 as rpb
from processes import BIN, Process, start
from tls_certs import CertificateAuthority, Issued

from gateway.tls import ClientTls, client_tls
from gateway.upstream.reflection import (
    ReflectionError,
    ReflectionWatcher,
    conversation,
    digest,
    fetch_file_set,
    file_set_of,
)
from transcoder.descriptors import DescriptorIndex

BACKEND = Path(__file__).resolve().parents[2] / "servers" / "reflection_backend.py"
BOOKSTORE = "bookstore.v1.Bookstore"
GREETER = "reflectiontest.v1.Greeter"


def start_backend(
    port: int = 0, services: str = "bookstore", reflection: str = "both", *extra: str
) -> tuple[Process, int]:
    args = [str(BIN / "python"), str(BACKEND), "--port", str(port), "--services", services]
    backend = start([*args, "--reflection", reflection, *extra])
    try:
        line = backend.wait_for("reflection backend listening on")
    except BaseException:
        backend.stop()
        raise
    return backend, int(line.rsplit(":", 1)[1])


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def backend() -> Iterator[int]:
    process, port = start_backend(services="bookstore,greeter")
    yield port
    process.stop()


# -- the protocol, without a network ------------------------------------------------------------------------------


def _file(name: str, *deps: str, service: str | None = None) -> bytes:
    proto = descriptor_pb2.FileDescriptorProto(name=name, package="p", syntax="proto3", dependency=deps)
    if service is not None:
        proto.service.add(name=service)
    return proto.SerializeToString()


def _files(*raw: bytes) -> rpb.ServerReflectionResponse:
    return rpb.ServerReflectionResponse(file_descriptor_response=rpb.FileDescriptorResponse(file_descriptor_proto=raw))


def _run(talk, replies: dict[str, rpb.ServerReflectionResponse]) -> tuple[list[str], bytes]:
    asked: list[str] = []
    request = next(talk)
    while True:
        kind = request.WhichOneof("message_request")
        key = f"{kind}={getattr(request, kind)}"
        asked.append(key)
        try:
            request = talk.send(replies[key])
        except StopIteration as done:
            return asked, done.value


def test_conversation_lists_services_and_fetches_missing_imports_by_name() -> None:
    listed = rpb.ServerReflectionResponse(
        list_services_response=rpb.ListServiceResponse(
            service=[rpb.ServiceResponse(name="p.Svc"), rpb.ServiceResponse(name="grpc.reflection.v1.ServerReflection")]
        )
    )
    replies = {
        "list_services=*": listed,
        # A Go-style server sends only the file asked for; its imports must be asked for one by one.
        "file_containing_symbol=p.Svc": _files(_file("p/svc.proto", "p/a.proto", service="Svc")),
        "file_by_filename=p/a.proto": _files(_file("p/a.proto", "p/b.proto")),
        "file_by_filename=p/b.proto": _files(_file("p/b.proto")),
    }
    asked, data = _run(conversation(), replies)
    assert asked == list(replies)  # reflection's own service is never asked about
    file_set = descriptor_pb2.FileDescriptorSet.FromString(data)
    assert [f.name for f in file_set.file] == ["p/a.proto", "p/b.proto", "p/svc.proto"]


def test_conversation_with_a_service_filter_skips_listing() -> None:
    replies = {"file_containing_symbol=p.Svc": _files(_file("p/svc.proto", service="Svc"))}
    asked, _ = _run(conversation(["p.Svc"]), replies)
    assert asked == ["file_containing_symbol=p.Svc"]


def test_conversation_reports_a_service_the_backend_does_not_have() -> None:
    missing = rpb.ServerReflectionResponse(error_response=rpb.ErrorResponse(error_code=5, error_message="not found"))
    with pytest.raises(ReflectionError, match=r"the backend has no service p\.Nope"):
        _run(conversation(["p.Nope"]), {"file_containing_symbol=p.Nope": missing})


# -- a real backend -----------------------------------------------------------------------------------------------


def test_fetch_reads_every_listed_service_with_its_imports(backend: int) -> None:
    index = DescriptorIndex.from_bytes(fetch_file_set([f"127.0.0.1:{backend}"]))
    assert set(index.services) == {BOOKSTORE, GREETER}
    assert "reflectiontest/v1/greeting.proto" in index.file_names
    assert any(b.template.text == "/v1/shelves" for b in index.bindings)  # google.api.http survives reflection


def test_fetch_with_a_service_filter(backend: int) -> None:
    index = DescriptorIndex.from_bytes(fetch_file_set([f"127.0.0.1:{backend}"], [GREETER]))
    assert list(index.services) == [GREETER]


def test_fetch_is_deterministic(backend: int) -> None:
    address = f"127.0.0.1:{backend}"
    assert fetch_file_set([address]) == fetch_file_set([address])


@pytest.mark.parametrize("versions", ["v1", "v1alpha"])
def test_fetch_speaks_v1_and_falls_back_to_v1alpha(versions: str) -> None:
    process, port = start_backend(reflection=versions)
    try:
        index = DescriptorIndex.from_bytes(fetch_file_set([f"127.0.0.1:{port}"]))
    finally:
        process.stop()
    assert list(index.services) == [BOOKSTORE]


def test_fetch_from_a_backend_without_reflection_says_so() -> None:
    process, port = start_backend(reflection="none")
    try:
        with pytest.raises(ReflectionError, match="does not serve gRPC server reflection"):
            fetch_file_set([f"127.0.0.1:{port}"])
    finally:
        process.stop()


def test_fetch_tries_the_next_node_and_names_every_failure(backend: int) -> None:
    down = f"127.0.0.1:{closed_port()}"
    assert fetch_file_set([down, f"127.0.0.1:{backend}"])
    with pytest.raises(ReflectionError) as caught:
        fetch_file_set([down], timeout=1)
    assert down in str(caught.value) and "unreachable" in str(caught.value)


# -- the watcher ----------------------------------------------------------------------------------------------------


async def _wait_for(changes: list[DescriptorIndex], count: int, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while len(changes) < count:
            await asyncio.sleep(0.05)


async def test_watcher_keeps_quiet_while_the_descriptors_are_those_of_load(backend: int) -> None:
    address = f"127.0.0.1:{backend}"
    current = DescriptorIndex.from_bytes(fetch_file_set([address]))
    assert digest(file_set_of(current)) == digest(fetch_file_set([address]))
    changes: list[DescriptorIndex] = []
    watcher = ReflectionWatcher("bookstore", [address], changes.append, interval=0, current=current)
    watcher.start()
    try:
        assert await watcher.refresh() is False
        assert await watcher.refresh() is False
    finally:
        await watcher.close()
    assert changes == []


async def test_watcher_sees_a_changed_service_set_when_the_node_reconnects(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="protogate.reflection")
    first, port = start_backend(services="bookstore")
    address = f"127.0.0.1:{port}"
    current = DescriptorIndex.from_bytes(fetch_file_set([address]))
    changes: list[DescriptorIndex] = []
    # No periodic fetch: only the reconnect can notice the new service.
    watcher = ReflectionWatcher("shop", [address], changes.append, interval=0, current=current)
    watcher.start()
    second: Process | None = None
    try:
        assert await watcher.refresh() is False
        await asyncio.sleep(0.3)  # let the channel report READY once
        first.stop()
        await asyncio.sleep(0.5)
        second, _ = await asyncio.to_thread(start_backend, port, "bookstore,greeter")
        await _wait_for(changes, 1)
    finally:
        await watcher.close()
        first.stop()
        if second is not None:
            second.stop()
    assert set(changes[0].services) == {BOOKSTORE, GREETER}
    assert watcher.current is changes[0]
    assert any("descriptors changed" in r.getMessage() for r in caplog.records)


async def test_watcher_refreshes_on_its_interval() -> None:
    first, port = start_backend(services="bookstore")
    address = f"127.0.0.1:{port}"
    changes: list[DescriptorIndex] = []
    watcher = ReflectionWatcher("shop", [address], changes.append, services=[GREETER], interval=0.2)
    watcher.start()
    second: Process | None = None
    try:
        await asyncio.sleep(0.6)  # Greeter is not there yet: failed fetches, nothing applied
        assert changes == []
        first.stop()
        second, _ = await asyncio.to_thread(start_backend, port, "bookstore,greeter")
        await _wait_for(changes, 1)
    finally:
        await watcher.close()
        first.stop()
        if second is not None:
            second.stop()
    assert list(changes[0].services) == [GREETER]


async def test_watcher_keeps_the_old_index_when_a_fetch_fails_and_logs_once_per_streak(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="protogate.reflection")
    process, port = start_backend(services="bookstore")
    address = f"127.0.0.1:{port}"
    current = DescriptorIndex.from_bytes(fetch_file_set([address]))
    changes: list[DescriptorIndex] = []
    watcher = ReflectionWatcher("shop", [address], changes.append, interval=0, timeout=1, current=current)
    watcher.start()
    restarted: Process | None = None
    try:
        process.stop()
        assert await watcher.refresh() is False
        assert await watcher.refresh() is False
        assert watcher.current is current
        failures = [r for r in caplog.records if "refresh failed" in r.getMessage()]
        assert len(failures) == 1 and failures[0].levelno == logging.WARNING
        restarted, _ = await asyncio.to_thread(start_backend, port, "bookstore")
        async with asyncio.timeout(10):
            while watcher._failing:
                await watcher.refresh()
                await asyncio.sleep(0.1)
    finally:
        await watcher.close()
        if restarted is not None:
            restarted.stop()
    assert changes == []  # same descriptors after the outage: nothing to apply
    assert any("works again" in r.getMessage() for r in caplog.records)


async def test_watcher_survives_a_callback_that_refuses(backend: int, caplog: pytest.LogCaptureFixture) -> None:
    def refuse(index: DescriptorIndex) -> None:
        raise ValueError("no")

    watcher = ReflectionWatcher("shop", [f"127.0.0.1:{backend}"], refuse, interval=0)
    watcher.start()
    try:
        assert await watcher.refresh() is True
        assert await watcher.refresh() is False  # the same set is not offered again
    finally:
        await watcher.close()
    assert any("applying the new descriptors failed" in r.getMessage() for r in caplog.records)


async def test_a_watcher_with_nothing_loaded_fetches_at_once(backend: int) -> None:
    changes: list[DescriptorIndex] = []
    watcher = ReflectionWatcher("shop", [f"127.0.0.1:{backend}"], changes.append, interval=0)
    watcher.start()
    try:
        await _wait_for(changes, 1, timeout=10)
    finally:
        await watcher.close()
    assert set(changes[0].services) == {BOOKSTORE, GREETER}


# -- over TLS (a grpcs upstream) ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertificateAuthority, Issued, Issued]:
    """The backend's own CA, its certificate (a DNS name only) and the gateway's client certificate."""
    ca = CertificateAuthority(tmp_path_factory.mktemp("reflection-pki"), "reflection")
    return ca, ca.issue("shop.internal", dns=("shop.internal",)), ca.issue("gateway", client=True)


@pytest.fixture(scope="module")
def tls_backend(tls_pki: tuple[CertificateAuthority, Issued, Issued]) -> Iterator[int]:
    """A reflecting backend that serves TLS and wants a client certificate from its CA."""
    ca, server, _ = tls_pki
    tls_args = ("--tls-cert", str(server.cert), "--tls-key", str(server.key), "--tls-client-ca", str(ca.cert))
    process, port = start_backend(0, "bookstore,greeter", "both", *tls_args)
    yield port
    process.stop()


def backend_tls(pki: tuple[CertificateAuthority, Issued, Issued], ca: Path | None = None) -> ClientTls:
    backend_ca, _, client = pki
    return client_tls(
        ca=str(ca or backend_ca.cert),
        client_cert=str(client.cert),
        client_key=str(client.key),
        key_passphrase_env=None,
        server_name="shop.internal",
        verify=True,
        base_dir=Path(),
    )


def test_fetch_over_tls_with_the_upstreams_ca_name_and_client_certificate(
    tls_pki: tuple[CertificateAuthority, Issued, Issued], tls_backend: int
) -> None:
    data = fetch_file_set([f"127.0.0.1:{tls_backend}"], tls=backend_tls(tls_pki))
    assert set(DescriptorIndex.from_bytes(data).services) == {BOOKSTORE, GREETER}


def test_fetch_over_tls_with_another_ca_names_the_verification_failure(
    tls_pki: tuple[CertificateAuthority, Issued, Issued], tls_backend: int, tmp_path: Path
) -> None:
    other = CertificateAuthority(tmp_path, "other")
    address = f"127.0.0.1:{tls_backend}"
    with pytest.raises(ReflectionError) as caught:
        fetch_file_set([address], timeout=2, tls=backend_tls(tls_pki, other.cert))
    message = str(caught.value)
    assert message.startswith(f"{address}: TLS handshake failed (")
    assert "CERTIFICATE_VERIFY_FAILED" in message
    with pytest.raises(ReflectionError, match="unreachable"):  # plaintext to a TLS port
        fetch_file_set([address], timeout=2)


async def test_watcher_over_tls_fetches_with_the_upstreams_tls(
    tls_pki: tuple[CertificateAuthority, Issued, Issued], tls_backend: int
) -> None:
    changes: list[DescriptorIndex] = []
    address = f"127.0.0.1:{tls_backend}"
    watcher = ReflectionWatcher("shop", [address], changes.append, interval=0, tls=backend_tls(tls_pki))
    watcher.start()
    try:
        await _wait_for(changes, 1, timeout=10)
    finally:
        await watcher.close()
    assert set(changes[0].services) == {BOOKSTORE, GREETER}
