"""The `protogate` command: validate and --version in-process, run as a real subprocess."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import __version__
from gateway.cli import _listen, main

PROTOGATE = str(Path(sys.executable).parent / "protogate")

VALID: dict[str, Any] = {
    "gateway": {"listen": "127.0.0.1:0", "client_header_timeout": 5},
    "upstreams": [{"id": "web", "nodes": {"127.0.0.1:1": 1}}],
    "routes": [{"id": "all", "uri": "/*", "upstream_id": "web"}],
}


def write(tmp_path: Path, document: Any, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    return path


def protogate(*args: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROTOGATE, *args], capture_output=True, text=True, timeout=timeout, check=False)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"protogate {__version__}\n"


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    out = capsys.readouterr().out
    assert "run" in out and "validate" in out


def test_validate_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, VALID)
    assert main(["validate", "-c", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"{path}: ok (1 routes, 1 upstreams, 0 protos)\n"
    assert captured.err == ""


def test_validate_prints_every_schema_error_with_its_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = {
        "gateway": {"listen": "nope", "max_header_count": 0, "client_body_timeout": 0},
        "routes": [{"id": "r", "uri": "relative", "upstream_id": "web"}],
    }
    assert main(["validate", "-c", str(write(tmp_path, document))]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "invalid config (4 errors)" in captured.err
    for where in ("gateway.listen", "gateway.max_header_count", "gateway.client_body_timeout", "routes[0].uri"):
        assert f"  {where}: " in captured.err, captured.err


def test_validate_prints_every_reference_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = {
        **VALID,
        "routes": [
            {"id": "a", "uri": "/a", "upstream_id": "missing"},
            {"id": "a", "uri": "/b", "upstream_id": "web"},
        ],
    }
    assert main(["validate", "-c", str(write(tmp_path, document))]) == 1
    err = capsys.readouterr().err
    assert "invalid config (2 errors)" in err
    assert "routes[0]" in err and "missing" in err
    assert "'a'" in err or '"a"' in err  # the duplicated id is named


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "cannot read"),
        ("routes: [", "not valid YAML"),
        ("- a list", "must be a mapping"),
        (b"\xff\xfe", "cannot read"),
    ],
    ids=["missing", "bad-yaml", "not-a-mapping", "not-utf8"],
)
def test_validate_unreadable_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | bytes | None, needle: str
) -> None:
    path = tmp_path / "config.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    assert main(["validate", "-c", str(path)]) == 1
    err = capsys.readouterr().err
    # A problem with the file as a whole is one line: the file, then what is wrong with it.
    assert err.startswith(f"{path}: ") and needle in err and err.count("\n") == 1, err


def test_run_help() -> None:
    result = protogate("run", "--help")
    assert result.returncode == 0
    for option in ("--config", "--listen", "--log-level"):
        assert option in result.stdout


def test_run_needs_a_config() -> None:
    result = protogate("run")
    assert result.returncode == 2
    assert "--config" in result.stderr


def test_run_with_an_unreadable_config_exits_1(tmp_path: Path) -> None:
    result = protogate("run", "-c", str(tmp_path / "absent.yaml"))
    assert result.returncode == 1
    assert "cannot read" in result.stderr and "absent.yaml" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_with_a_bad_listen_flag_exits_2(tmp_path: Path) -> None:
    result = protogate("run", "-c", str(write(tmp_path, VALID)), "--listen", "127.0.0.1:http")
    assert result.returncode == 2
    assert "HOST:PORT" in result.stderr and "Traceback" not in result.stderr


def test_run_on_a_port_in_use_exits_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = protogate("run", "-c", str(write(tmp_path, VALID)), "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "in use" in result.stderr.lower() and "Traceback" not in result.stderr
    assert "error while attempting to bind" not in result.stderr  # asyncio's wrapping, said once is enough


def test_run_serves_then_stops_on_sigterm(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [PROTOGATE, "run", "-c", str(write(tmp_path, VALID))],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert f"protogate {__version__} listening on http://127.0.0.1:" in line, line
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def validate_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], document: Any) -> list[str]:
    """The error lines `validate` prints for a document (it must refuse it)."""
    assert main(["validate", "-c", str(write(tmp_path, document))]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line.strip() for line in err.splitlines()[1:]]


def test_validate_names_the_field_a_typo_meant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = {
        "gatway": {"listen": 9080},
        "upstreams": [{"id": "web", "nodes": {"127.0.0.1:1": 1}, "checks": {"active": {"healthy": {"intervall": 1}}}}],
        "routes": [{"id": "r", "uri": "/x", "upstream_idd": "web"}],
    }
    errors = validate_errors(tmp_path, capsys, document)
    assert "gatway: unknown field (did you mean 'gateway'?)" in errors
    assert "upstreams[0].checks.active.healthy.intervall: unknown field (did you mean 'interval'?)" in errors
    assert "routes[0].upstream_idd: unknown field (did you mean 'upstream_id'?)" in errors


def test_validate_names_the_plugin_field_a_typo_meant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plugins = {"limit-count": {"count": 1, "time_windw": 60, "_meta": {"error_response": {}}}}
    document = {**VALID, "routes": [{**VALID["routes"][0], "plugins": plugins}]}
    errors = validate_errors(tmp_path, capsys, document)
    assert "routes[0].plugins.limit-count.time_windw: unknown field (did you mean 'time_window'?)" in errors
    # Nothing close: the fields that are there.
    assert "routes[0].plugins.limit-count._meta.error_response: unknown field (expected one of: disable, priority)" in (
        errors
    )


def test_validate_names_the_plugin_a_typo_meant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = {**VALID, "routes": [{**VALID["routes"][0], "plugins": {"grpc-transcod": {"proto_id": "p"}}}]}
    (error,) = validate_errors(tmp_path, capsys, document)
    assert error.startswith("routes[0].plugins.grpc-transcod: unknown plugin (did you mean 'grpc-transcode'? known: ")


def test_validate_says_what_was_given_for_a_wrong_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = {
        "upstreams": [{"id": "web", "nodes": {"127.0.0.1:1": 1}, "timeout": 5}],
        "routes": [{"id": "r", "uri": "/x", "methods": "GET", "upstream_id": "web", "plugins": ["key-auth"]}],
    }
    errors = validate_errors(tmp_path, capsys, document)
    assert "upstreams[0].timeout: Input should be a mapping of fields, not 5 (a number)" in errors
    assert "routes[0].methods: Input should be a list, not 'GET' (a string)" in errors
    assert "routes[0].plugins: Input should be a mapping of fields, not a list" in errors


def test_validate_paths_follow_the_document_as_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # APISIX's {"host:port": weight} map and a bare listen port are normalised by the models; the
    # path still points at what the user wrote, not at the list the models made of it.
    document = {
        "gateway": {"listen": 99999},
        "upstreams": [{"id": "web", "nodes": {"127.0.0.1:1": "one"}}],
    }
    errors = validate_errors(tmp_path, capsys, document)
    assert "gateway.listen: Input should be less than or equal to 65535" in errors
    assert any(e.startswith('upstreams[0].nodes["127.0.0.1:1"]: Input should be a valid integer') for e in errors)
    # One listener written as a mapping, without the list around it.
    errors = validate_errors(tmp_path, capsys, {"gateway": {"listen": {"port": 99999, "tsl": True}}})
    assert errors == [
        "gateway.listen.port: Input should be less than or equal to 65535",
        "gateway.listen.tsl: unknown field (did you mean 'tls'?)",
    ]


def test_validate_refuses_a_key_given_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # YAML would keep the second `plugins:` silently, and the route would lose its key-auth.
    text = "routes:\n  - id: r\n    uri: /x\n    plugins: {key-auth: {}}\n    plugins: {cors: {}}\n"
    path = write(tmp_path, text)
    assert main(["validate", "-c", str(path)]) == 1
    err = capsys.readouterr().err
    assert err == f"{path}: not valid YAML: line 5, column 5: duplicate key 'plugins' (first given at line 4)\n"


def test_validate_allows_yaml_merge_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (
        "upstreams:\n"
        "  - &web {id: web, nodes: {'127.0.0.1:1': 1}}\n"
        "  - <<: *web\n"
        "    id: web2\n"
        "routes: [{id: r, uri: /x, upstream_id: web2}]\n"
    )
    assert main(["validate", "-c", str(write(tmp_path, text))]) == 0, capsys.readouterr().err


def test_validate_yaml_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "gateway:\n  listen: [9080\n")
    assert main(["validate", "-c", str(path)]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"{path}: not valid YAML: line 3, column 1: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence at line 2, column 11)\n"
    )


def test_validate_checks_the_resources_of_a_file_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # `run` loads the store's resources and refuses them; `validate` must say the same, not "ok".
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({"routes": [{"id": "r", "uri": "/x", "upstream_id": "nope"}]}))
    path = write(tmp_path, {"store": {"type": "file", "path": "data.yaml"}})
    assert main(["validate", "-c", str(path)]) == 1
    err = capsys.readouterr().err
    assert (
        err == f"{path} (store: file): invalid config (1 error):\n  routes[0].upstream_id: no upstream has id 'nope'\n"
    )

    (tmp_path / "data.yaml").write_text(yaml.safe_dump({k: VALID[k] for k in ("upstreams", "routes")}))
    assert main(["validate", "-c", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: ok (1 routes, 1 upstreams, 0 protos)\n"


def test_validate_refuses_an_open_admin_api_without_a_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # `run` refuses to start it; `validate` used to say "ok".
    errors = validate_errors(tmp_path, capsys, {"admin": {"listen": "0.0.0.0:9180"}})
    assert len(errors) == 1 and errors[0].startswith(
        "admin.key: the Admin API would listen on 0.0.0.0:9180 without a key"
    )
    assert main(["validate", "-c", str(write(tmp_path, {"admin": {"listen": "127.0.0.1:9180"}}))]) == 0


@pytest.mark.parametrize(
    ("value", "parsed"),
    [("127.0.0.1:9080", ("127.0.0.1", 9080)), ("9090", ("", 9090)), (":0", ("", 0)), ("[::1]:80", ("::1", 80))],
)
def test_run_listen_flag(value: str, parsed: tuple[str, int]) -> None:
    assert _listen(value) == parsed


def test_run_reports_shape_errors_with_their_paths(tmp_path: Path) -> None:
    # The standalone store reads the same file; its own complaint ("routes[0] needs id") came without
    # the loader's paths and messages, under "cannot read the config store".
    path = write(tmp_path, {"routes": [{"uri": "/x", "upstream": {"nodes": {"127.0.0.1:1": 1}}}]})
    result = protogate("run", "-c", str(path))
    assert result.returncode == 1
    assert result.stderr == f"{path}: invalid config (1 error):\n  routes[0].id: Field required\n"


def test_run_with_bad_yaml_says_where_in_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "routes: [\n")
    result = protogate("run", "-c", str(path))
    assert result.returncode == 1
    assert result.stderr.startswith(f"{path}: not valid YAML: line 2, column 1: ")
    assert result.stderr.count("\n") == 1


def test_run_names_the_metrics_address_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        metrics = {"prometheus": {"enabled": True, "export_addr": f"127.0.0.1:{port}"}}
        result = protogate("run", "-c", str(write(tmp_path, {**VALID, "telemetry": metrics})))
    assert result.returncode == 1
    assert result.stderr == f"protogate: cannot serve metrics on 127.0.0.1:{port}: address already in use\n"
