"""The committed plugin_runner/proto modules are what runner.proto generates (they never drift)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from plugin_runner import codegen

# Version stamps change with the installed grpcio-tools, not with the .proto: compare without them.
_STAMPS = re.compile(
    r"^(# Protobuf Python Version: .*|GRPC_GENERATED_VERSION = .*|\s+\d+,)$",
    re.MULTILINE,
)


def _normalised(text: str) -> str:
    return _STAMPS.sub("<version>", text)


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    for generated in codegen.generate(tmp_path):
        committed = codegen.OUT_DIR / generated.name
        assert committed.exists(), f"{committed} is missing: run python -m plugin_runner.codegen"
        assert _normalised(committed.read_text()) == _normalised(generated.read_text()), (
            f"{committed.name} is stale: run python -m plugin_runner.codegen"
        )


def test_stubs_import_as_a_package_and_keep_the_canonical_file_name() -> None:
    code = (
        "from plugin_runner.proto import runner_pb2, runner_pb2_grpc; "
        "assert runner_pb2.DESCRIPTOR.name == 'protogate/plugin/v1/runner.proto'; "
        "assert runner_pb2_grpc.PluginRunnerStub; import sys; assert 'protogate' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
