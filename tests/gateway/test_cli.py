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
from gateway.cli import main

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
    assert err.startswith(f"{path}: invalid config (1 error):\n") and needle in err, err


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
