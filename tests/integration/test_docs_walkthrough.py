"""The README and docs followed as written: their config snippets load, their curl commands answer as shown."""

from __future__ import annotations

import codecs
import http.client
import importlib.util
import json
import re
import shlex
import shutil
import socket
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from gateway_harness import QUICKSTART, Client, Gateway, start_backend, start_gateway, start_http_upstream
from processes import REPO
from tls_certs import CertificateAuthority

from gateway.cli import main

README = REPO / "README.md"
DOCS = REPO / "docs"
# The pages this walkthrough follows (docs/ext-plugins.md and docs/plugin-protocol.md have their own tests).
PAGES = [README, DOCS / "plugins.md", DOCS / "tls.md", DOCS / "admin-api.md", DOCS / "transcoding.md"]


def section(path: Path, heading: str) -> str:
    """The text under a markdown heading, up to the next heading of the same or a higher level."""
    text = path.read_text()
    match = re.search(rf"^(#+) {re.escape(heading)}\n", text, re.MULTILINE)
    assert match is not None, f"{path.name} has no heading {heading!r}"
    level = len(match.group(1))
    rest = text[match.end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def github_anchors(path: Path) -> set[str]:
    anchors: set[str] = set()
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchor, n = slug, 1
        while anchor in anchors:
            anchor, n = f"{slug}-{n}", n + 1
        anchors.add(anchor)
    return anchors


def load_script(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_relative_link_resolves() -> None:
    # docs/transcoding.md and docs/plugins.md pointed at a THREATS.md the repository does not have.
    broken = []
    for page in PAGES:
        text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.MULTILINE | re.DOTALL)
        for link in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", link):
                continue
            target, _, anchor = link.partition("#")
            resolved = (page.parent / target).resolve() if target else page
            if not resolved.exists():
                broken.append(f"{page.name}: {link} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in github_anchors(resolved):
                broken.append(f"{page.name}: {link} (no such heading)")
        broken += [f"{page.name}: mentions THREATS" for _ in re.findall(r"THREATS", text)]
    assert broken == []


def test_grpc_transcode_section_covers_streaming_and_links_the_transcoding_page() -> None:
    text = section(DOCS / "plugins.md", "grpc-transcode (506)")
    assert "](transcoding.md)" in text
    for needed in ("`stream_format`", "`ndjson`", "`sse`", "`array`", "Accept: application/x-ndjson"):
        assert needed in text, needed
    assert "Accept: text/event-stream" in text


def test_readme_lists_every_command() -> None:
    commands = code_blocks(section(README, "The command"), "")[0]
    for command in ("run", "validate", "openapi", "export"):
        assert f"protogate {command} -c FILE" in commands
    assert "--with-runners" in commands


def test_readme_configuration_example_validates(
    tmp_path: Path, bookstore_descriptor_set: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (example,) = code_blocks(section(README, "Configuration"), "yaml")
    (tmp_path / "generated").mkdir()
    shutil.copy(bookstore_descriptor_set, tmp_path / "generated" / "bookstore.binpb")
    path = tmp_path / "config.yaml"
    path.write_text(example)
    assert main(["validate", "-c", str(path)]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out == f"{path}: ok (1 routes, 1 upstreams, 1 protos)\n"


def test_readme_plugin_example_answers_as_apisix_would(tmp_path: Path) -> None:
    (example,) = code_blocks(section(README, "Plugins"), "yaml")
    upstream, port = start_http_upstream("backend")
    try:
        path = tmp_path / "config.yaml"
        path.write_text(f"upstreams:\n  - id: backend\n    nodes: {{'127.0.0.1:{port}': 1}}\n{example}")
        gateway = start_gateway(path)
        try:
            client = Client(gateway)
            status, _, body = client.get("/anything/hello")
            assert (status, body["message"]) == (401, "Missing API key in request")
            status, _, body = client.get("/anything/hello?a=1", headers={"apikey": "jack-secret"})
            assert status == 200 and body["path"] == "/echo/hello?a=1"
            assert ["X-Consumer-Username", "jack"] in body["headers"]
            status, _, body = client.get("/anything/hello", headers={"apikey": "jack-secret"})
            assert (status, body["code"]) == (429, 8)  # limit-req: one a second, no burst
        finally:
            gateway.process.stop()
    finally:
        upstream.stop()


def test_tls_examples_validate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    https, listeners = code_blocks(section(DOCS / "tls.md", "The HTTPS listener"), "yaml")
    servers = CertificateAuthority(tmp_path / "certs", "servers")
    clients = CertificateAuthority(tmp_path / "certs", "partner-clients")
    servers.issue("www", dns=("www.example.com", "*.example.com"))
    partners = servers.issue("partners", dns=("partners.example.com",), passphrase="s3cret")
    monkeypatch.setenv("PARTNERS_KEY_PASSPHRASE", "s3cret")
    assert clients.cert.name == "partner-clients-ca.pem"
    # The one placeholder in the page: an inline certificate, shown shortened.
    placeholder = '"-----BEGIN CERTIFICATE-----\\n..."'
    assert placeholder in https
    https = https.replace(placeholder, json.dumps(partners.cert_pem))
    ssls = https[https.index("ssls:") :]
    for name, document in (("https.yaml", https), ("listeners.yaml", listeners + ssls)):
        path = tmp_path / name
        path.write_text(document)
        assert main(["validate", "-c", str(path)]) == 0, name


def quickstart_config(tmp_path: Path, descriptor_set: Path, backend_port: int) -> Path:
    """examples/quickstart/config.yaml as written, with the ports and descriptor path of this test."""
    text = (QUICKSTART / "config.yaml").read_text()
    document = yaml.safe_load(text)
    assert document["gateway"]["listen"] == "127.0.0.1:9080"
    assert document["upstreams"][0]["nodes"] == {"127.0.0.1:50051": 1}
    assert document["protos"][0]["descriptor_set"] == "generated/bookstore.binpb"
    text = text.replace("127.0.0.1:50051", f"127.0.0.1:{backend_port}")
    text = text.replace("generated/bookstore.binpb", str(descriptor_set))
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def curl(gateway: Gateway, command: str) -> tuple[int, bytes]:
    """Run one documented curl command (the options the docs use) against `gateway`; status and body."""
    stdin = b""
    if "|" in command:
        producer, command = command.split("|", 1)
        words = shlex.split(producer)
        assert words[0] == "printf", producer
        stdin = codecs.decode(words[1], "unicode_escape").encode()
    words = shlex.split(command)
    assert words.pop(0) == "curl"
    method, headers, body, url = "GET", {}, b"", ""
    while words:
        word = words.pop(0)
        if word in ("-s", "-i", "-N", "-sN"):
            continue
        if word == "-X":
            method = words.pop(0)
        elif word == "-H":
            name, _, value = words.pop(0).partition(":")
            headers[name] = value.strip()
        elif word in ("-d", "--data-binary"):
            value = words.pop(0)
            body = stdin if value == "@-" else value.encode()
            method = "POST" if method == "GET" else method
        else:
            assert not word.startswith("-"), f"an option this helper does not know: {word}"
            url = word
    assert url.startswith("http://127.0.0.1:9080/"), url
    connection = http.client.HTTPConnection(gateway.host, gateway.port, timeout=10)
    try:
        connection.request(method, url.removeprefix("http://127.0.0.1:9080"), body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def check_answer(command: str, status: int, answer: bytes) -> None:
    if "/v1/shelves/999" in command:
        assert (status, json.loads(answer)["code"]) == (404, 5), answer
        return
    assert status == 200, (command, answer)
    if "-sN" in command:  # a stream: one {"result": ...} line per message
        lines = answer.decode().splitlines()
        assert lines and all("result" in json.loads(line) for line in lines), answer
    else:
        assert isinstance(json.loads(answer), dict), answer


def test_quickstart_prints_curl_commands_that_work(tmp_path: Path, bookstore_descriptor_set: Path) -> None:
    run = load_script(QUICKSTART / "run.py")
    backend, port = start_backend("quickstart")
    try:
        gateway = start_gateway(quickstart_config(tmp_path, bookstore_descriptor_set, port))
        try:
            for command in run.CURLS:
                check_answer(command, *curl(gateway, command))
        finally:
            gateway.process.stop()
    finally:
        backend.stop()


def test_readme_curl_commands_work(tmp_path: Path, bookstore_descriptor_set: Path) -> None:
    commands = []
    for heading in ("Set-up: two commands", "Streaming"):
        for block in code_blocks(section(README, heading), "sh"):
            commands += [line for line in block.splitlines() if "curl" in line and "127.0.0.1:9080" in line]
    assert len(commands) == 6
    backend, port = start_backend("readme")
    try:
        gateway = start_gateway(quickstart_config(tmp_path, bookstore_descriptor_set, port))
        try:
            for command in commands:
                check_answer(command, *curl(gateway, command))
        finally:
            gateway.process.stop()
    finally:
        backend.stop()


def test_quickstart_refuses_to_start_beside_a_running_one() -> None:
    # A second bookstore backend would bind beside the first (grpc servers use SO_REUSEPORT) and share
    # its connections, each with shelves of its own: run.py checks its ports first.
    run = load_script(QUICKSTART / "run.py")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert run.busy_ports({port: "the bookstore backend"}) == [
            f"127.0.0.1:{port} (the bookstore backend): address already in use"
        ]
    assert run.busy_ports({port: "the bookstore backend"}) == []
