"""gateway/tls.py and gateway/tls_edge.py: material checks at load, SNI choice, hot swap, mtls-auth, runner TLS."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest
from tls_certs import CertificateAuthority, Issued, server_cert

from gateway.config.loader import ConfigError, load_document
from gateway.config.models import Ssl, TlsListen
from gateway.consumers import Consumer, ConsumerIndex
from gateway.plugins.mtls_auth import MtlsAuth, MtlsAuthConfig, MtlsAuthCredential, certificate_identities
from gateway.tls import TlsMaterialError, load_bundle, tls_failure
from gateway.tls_edge import TlsEdge, hsts_value


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("ca"), "unit")


@pytest.fixture(scope="module")
def certs(ca: CertificateAuthority) -> dict[str, Issued]:
    return {
        "api": server_cert(ca, "api.test"),
        "wild": server_cert(ca, "*.wild.test"),
        "other": server_cert(ca, "other.test"),
        "locked": ca.issue("locked", dns=("locked.test",), passphrase="pw"),
    }


def issues(document: dict[str, Any], base_dir: Path = Path()) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_document(document, base_dir=base_dir)
    return [str(issue) for issue in caught.value.issues]


# -- material and the loader


def test_bundle_from_files_or_inline_pem(certs: dict[str, Issued]) -> None:
    api = certs["api"]
    assert load_bundle(str(api.cert), str(api.key), Path()).names() == ["api.test"]
    assert load_bundle(api.cert_pem, api.key_pem, Path("/nowhere")).leaf == api.certificate


def test_bundle_refusals_name_the_field(certs: dict[str, Issued], monkeypatch: pytest.MonkeyPatch) -> None:
    api, other, locked = certs["api"], certs["other"], certs["locked"]
    cases = [
        ((str(api.cert), str(other.key)), {}, "key", "does not match"),
        (("/no/such.pem", str(api.key)), {}, "cert", "cannot read"),
        (("-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----", str(api.key)), {}, "cert", "PEM"),
        ((str(locked.cert), str(locked.key)), {}, "key", "encrypted"),
        ((str(locked.cert), str(locked.key)), {"passphrase_env": "NOT_SET_ANYWHERE"}, "key_passphrase_env", "not set"),
    ]
    for (cert, key), kwargs, field, words in cases:
        with pytest.raises(TlsMaterialError) as caught:
            load_bundle(cert, key, Path(), **kwargs)
        assert caught.value.field == field and words in caught.value.message
    monkeypatch.setenv("WRONG_PW", "nope")
    with pytest.raises(TlsMaterialError, match="wrong"):
        load_bundle(str(locked.cert), str(locked.key), Path(), passphrase_env="WRONG_PW")
    monkeypatch.setenv("RIGHT_PW", "pw")
    assert load_bundle(str(locked.cert), str(locked.key), Path(), passphrase_env="RIGHT_PW").names() == ["locked.test"]


def test_a_chain_out_of_order_is_refused(ca: CertificateAuthority, certs: dict[str, Issued]) -> None:
    api = certs["api"]
    wrong_order = api.cert_pem + certs["other"].cert_pem  # the second is no issuer of the first
    with pytest.raises(TlsMaterialError, match="not issued by"):
        load_bundle(wrong_order, api.key_pem, Path())
    assert len(load_bundle(api.cert_pem + ca.pem, api.key_pem, Path()).chain) == 2


def test_loader_checks_ssls_with_field_paths(certs: dict[str, Issued]) -> None:
    api, other = certs["api"], certs["other"]
    good = {"id": "a", "cert": str(api.cert), "key": str(api.key), "snis": ["api.test"]}
    assert load_document({"ssls": [good]}).config.ssls[0].snis == ["api.test"]
    found = issues(
        {
            "gateway": {"tls_listen": {"port": 0, "fallback_sni": "nobody.test"}},
            "ssls": [
                {**good, "key": str(other.key)},
                {**good, "id": "b"},
                {**good, "id": "d", "snis": ["API.test"], "client": {"ca": "/no/ca.pem"}},
            ],
        }
    )
    assert "ssls[0].key: the key does not match the certificate (the first one in cert)" in found
    assert "ssls[1].snis: 'api.test' is served by ssl 'a' already" in found
    assert any(i.startswith("ssls[2].client.ca: cannot read") for i in found)
    assert "gateway.tls_listen.fallback_sni: no ssl object serves 'nobody.test'" in found
    found = issues({"ssls": [{**good, "snis": ["bad name"]}]})  # the schema first: no file is read
    assert any(i.startswith("ssls[0].snis") and "not a host name" in i for i in found)


def test_loader_checks_upstream_and_runner_tls(ca: CertificateAuthority, certs: dict[str, Issued]) -> None:
    nodes = {"127.0.0.1:1": 1}
    found = issues(
        {
            "upstreams": [
                {"id": "a", "scheme": "http", "nodes": nodes, "tls": {"ca": str(ca.cert)}},
                {"id": "b", "scheme": "grpcs", "nodes": nodes, "tls": {"verify": False}},
            ]
        }
    )
    assert any("upstreams[0]" in i and "tls applies to scheme https or grpcs" in i for i in found)
    assert any("upstreams[1]" in i and "grpcs always verifies" in i for i in found)
    found = issues({"upstreams": [{"id": "a", "scheme": "https", "nodes": nodes, "tls": {"ca": "/no/ca.pem"}}]})
    assert any(i.startswith("upstreams[0].tls.ca: cannot read") for i in found)
    key_only = {"client_cert": str(certs["api"].cert), "client_key": str(certs["other"].key)}
    found = issues({"upstreams": [{"id": "a", "scheme": "https", "nodes": nodes, "tls": key_only}]})
    assert any(i.startswith("upstreams[0].tls.client_key: the key does not match") for i in found)
    found = issues({"plugin_runners": [{"name": "r", "dev": True, "address": "unix:/x.sock", "tls": {}}]})
    assert any("tls needs a HOST:PORT address" in i for i in found)


def test_hsts_value() -> None:
    assert hsts_value(None) is None
    listen = TlsListen.model_validate({"hsts": {"max_age": 60, "include_subdomains": True, "preload": True}})
    assert hsts_value(listen.hsts) == "max-age=60; includeSubDomains; preload"


def test_tls_failure_words() -> None:
    assert tls_failure("Custom verification check failed with error: UNAUTHENTICATED: Hostname Verification")
    assert not tls_failure("failed to connect to all addresses; Connection refused")


# -- the edge: SNI choice and hot swap, over real loopback handshakes


def _ssl(ssl_id: str, cert: Issued, snis: list[str], **extra: Any) -> Ssl:
    return Ssl.model_validate({"id": ssl_id, "cert": str(cert.cert), "key": str(cert.key), "snis": snis, **extra})


class Holder:
    """Stands in for the running config the edge follows."""

    def __init__(self, ssls: list[Ssl]) -> None:
        self.ssls = ssls

    def __call__(self) -> tuple[list[Ssl], Path]:
        return self.ssls, Path()


async def _served(port: int, ca: CertificateAuthority, name: str | None) -> bytes:
    context = ssl.create_default_context(cafile=str(ca.cert))
    if name is None or name.startswith("unknown"):
        context.check_hostname = False
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=name or "")
    ssl_object = writer.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True)
    writer.close()
    await writer.wait_closed()
    return der


async def _serve(edge: TlsEdge) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0, ssl=edge.listener_context())


async def test_sni_exact_before_wildcard_and_fallback(ca: CertificateAuthority, certs: dict[str, Issued]) -> None:
    holder = Holder([_ssl("api", certs["api"], ["api.test"]), _ssl("wild", certs["wild"], ["*.wild.test"])])
    edge = TlsEdge(holder, TlsListen(fallback_sni="a.wild.test"))
    assert edge.select("API.test.").id == "api"  # type: ignore[union-attr]
    assert edge.select("x.wild.test").id == "wild"  # type: ignore[union-attr]
    assert edge.select("a.b.wild.test").id == "wild"  # type: ignore[union-attr]  # no match: the fallback
    assert edge.select("a.b.wild.test", fallback=False) is None  # a wildcard covers one label only
    server = await _serve(edge)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await _served(port, ca, "api.test") == certs["api"].der
        assert await _served(port, ca, "z.wild.test") == certs["wild"].der
        assert await _served(port, ca, None) == certs["wild"].der
    finally:
        server.close()
        await server.wait_closed()


async def test_config_change_and_file_change_swap_certificates(
    ca: CertificateAuthority, certs: dict[str, Issued], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    live = server_cert(CertificateAuthority(tmp_path, "live"), "api.test")
    holder = Holder([_ssl("api", live, ["api.test"])])
    edge = TlsEdge(holder, TlsListen(), check_interval=0.0)
    first = edge.certificate_of("api")
    holder.ssls = [_ssl("api", certs["api"], ["api.test"])]  # a reload with another certificate
    edge.refresh()
    assert edge.certificate_of("api").leaf == certs["api"].certificate  # type: ignore[union-attr]

    holder.ssls = [_ssl("api", live, ["api.test"])]
    edge.refresh()
    assert edge.certificate_of("api") is not None and edge.certificate_of("api").leaf == first.leaf  # type: ignore
    live.key.write_bytes(certs["other"].key.read_bytes())  # a broken renewal on disk
    edge.refresh()
    assert edge.certificate_of("api").leaf == first.leaf  # type: ignore[union-attr]
    assert "the new certificate was refused" in caplog.text


async def test_mtls_context_trusts_only_its_ca(tmp_path: Path, certs: dict[str, Issued]) -> None:
    clients = CertificateAuthority(tmp_path, "clients")
    holder = Holder(
        [
            _ssl("api", certs["api"], ["api.test"]),
            _ssl("secure", certs["other"], ["other.test"], client={"ca": str(clients.cert)}),
        ]
    )
    edge = TlsEdge(holder, TlsListen())
    listener = edge.listener_context()
    assert listener.verify_mode == ssl.CERT_OPTIONAL
    secure, api = edge.select("other.test"), edge.select("api.test")
    assert secure is not None and secure.context.mtls and secure.context.verify_mode == ssl.CERT_OPTIONAL
    assert api is not None and not api.context.mtls and api.trusted == clients.cert.read_bytes()
    holder.ssls = holder.ssls[:1]
    edge.refresh(force=True)
    assert listener.verify_mode == ssl.CERT_NONE  # no mTLS host left: no certificate is asked for


# -- mtls-auth


class _Ctx:
    def __init__(self, cert: dict[str, Any] | None, consumers: ConsumerIndex) -> None:
        self.client_cert = cert
        self.consumers = consumers
        self.consumer: Consumer | None = None


def test_mtls_auth_credentials() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        MtlsAuthCredential.model_validate({"cn": "a", "san": "b"})
    assert MtlsAuth.consumer_credential(MtlsAuthCredential(cn="alice")) == "cn:alice"
    cert = {"subject": ((("commonName", "alice"),),), "subjectAltName": (("URI", "spiffe://t/alice"),)}
    assert certificate_identities(cert) == ["san:spiffe://t/alice", "cn:alice"]


async def test_mtls_auth_maps_san_then_cn() -> None:
    alice, bob = Consumer("alice"), Consumer("bob")
    index = ConsumerIndex([alice, bob], {"mtls-auth": {"san:spiffe://t/alice": alice, "cn:bob": bob}})
    plugin = MtlsAuth(MtlsAuthConfig())
    ctx = _Ctx({"subject": ((("commonName", "bob"),),), "subjectAltName": (("URI", "spiffe://t/alice"),)}, index)
    await plugin.rewrite(ctx)  # type: ignore[arg-type]
    assert ctx.consumer is alice
    ctx = _Ctx({"subject": ((("commonName", "bob"),),)}, index)
    await plugin.rewrite(ctx)  # type: ignore[arg-type]
    assert ctx.consumer is bob
    for cert, message in ((None, "Missing client certificate"), ({"subject": ()}, "Invalid client certificate")):
        with pytest.raises(Exception, match=message):
            await plugin.rewrite(_Ctx(cert, index))  # type: ignore[arg-type]
    anonymous = MtlsAuth(MtlsAuthConfig(anonymous_consumer="bob"))
    ctx = _Ctx(None, index)
    await anonymous.rewrite(ctx)  # type: ignore[arg-type]
    assert ctx.consumer is bob


# -- plugin runners over TLS


async def test_runner_over_tls_with_a_client_certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.config.models import PluginRunner
    from gateway.runner.supervisor import RunnerStartError, RunnerSupervisor
    from plugin_runner.server import TLS_CERT_ENV, TLS_CLIENT_CA_ENV, TLS_KEY_ENV, start_server

    authority = CertificateAuthority(tmp_path, "runners")
    runner_cert = authority.issue("runner.internal", dns=("runner.internal",))
    gateway_cert = authority.issue("gateway", client=True)
    monkeypatch.setenv(TLS_CERT_ENV, str(runner_cert.cert))
    monkeypatch.setenv(TLS_KEY_ENV, str(runner_cert.key))
    monkeypatch.setenv(TLS_CLIENT_CA_ENV, str(authority.cert))
    server = await start_server([], "127.0.0.1:0")
    try:
        tls = {"ca": str(authority.cert), "server_name": "runner.internal"}
        with_cert = {**tls, "client_cert": str(gateway_cert.cert), "client_key": str(gateway_cert.key)}
        for block, works in ((with_cert, True), (tls, False)):
            config = PluginRunner(name="r", dev=True, address=server.address, tls=block, start_timeout=0.5)
            supervisor = RunnerSupervisor(config, server.address)
            try:
                if works:
                    await supervisor.start()
                    assert supervisor.ready
                else:
                    with pytest.raises(RunnerStartError):
                        await supervisor.start()
            finally:
                await supervisor.stop()
    finally:
        await server.stop(0)
