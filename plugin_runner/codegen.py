"""Regenerate plugin_runner/proto/ from protos/protogate/plugin/v1/runner.proto with grpc_tools.

protoc runs with `-I protos`, so the descriptor keeps its canonical file name
(`protogate/plugin/v1/runner.proto`) and any other program loading the same .proto agrees with ours. The
modules are then moved flat into plugin_runner/proto/, and the one import protoc writes in the gRPC stub
(`from protogate.plugin.v1 import runner_pb2`) is pointed at `plugin_runner.proto` instead: no sys.path
tricks, and `import plugin_runner.proto.runner_pb2` works from any installed copy.

Run `python -m plugin_runner.codegen` after editing the .proto; a test fails while the committed files drift.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "protos"
PROTO_FILE = "protogate/plugin/v1/runner.proto"
OUT_DIR = Path(__file__).resolve().parent / "proto"
GENERATED = ("runner_pb2.py", "runner_pb2.pyi", "runner_pb2_grpc.py")
WELL_KNOWN_DIR = Path(grpc_tools.__file__).parent / "_proto"

_PROTOC_IMPORT = "from protogate.plugin.v1 import runner_pb2 as"
_PACKAGE_IMPORT = "from plugin_runner.proto import runner_pb2 as"


def generate(out_dir: Path = OUT_DIR) -> list[Path]:
    """Write the generated modules into `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{WELL_KNOWN_DIR}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            str(PROTO_ROOT / PROTO_FILE),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed for {PROTO_FILE}")
        written = []
        for name in GENERATED:
            text = (Path(tmp) / Path(PROTO_FILE).parent / name).read_text()
            if name == "runner_pb2_grpc.py":
                if _PROTOC_IMPORT not in text:
                    raise RuntimeError(f"protoc's stub no longer contains {_PROTOC_IMPORT!r}")
                text = text.replace(_PROTOC_IMPORT, _PACKAGE_IMPORT)
            target = out_dir / name
            target.write_text(text)
            written.append(target)
        return written


def main() -> int:
    for path in generate():
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
