"""Compile the bookstore proto into a descriptor set and Python stubs under examples/quickstart/generated/."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
PROTO_ROOT = REPO_ROOT / "protos" / "examples"
PROTO_FILE = "bookstore/v1/bookstore.proto"
DEFAULT_OUT_DIR = HERE / "generated"
DESCRIPTOR_SET_NAME = "bookstore.binpb"


class BuildError(RuntimeError):
    """The proto could not be compiled; the message says why."""


def _googleapis_include_dir() -> Path:
    # `google` is a namespace package shared by protobuf and googleapis-common-protos, so locate
    # the directory through a module that only googleapis-common-protos ships.
    spec = importlib.util.find_spec("google.api.annotations_pb2")
    if spec is None or spec.origin is None:
        raise BuildError("googleapis-common-protos is not installed (google/api/annotations.proto not found)")
    include = Path(spec.origin).resolve().parent.parent.parent
    if not (include / "google" / "api" / "annotations.proto").is_file():
        raise BuildError(f"google/api/annotations.proto is missing under {include}")
    return include


def _grpc_tools_include_dir() -> Path:
    spec = importlib.util.find_spec("grpc_tools")
    if spec is None or spec.origin is None:
        raise BuildError("grpcio-tools is not installed")
    include = Path(spec.origin).resolve().parent / "_proto"
    if not (include / "google" / "protobuf" / "empty.proto").is_file():
        raise BuildError(f"the well-known protos are missing under {include}")
    return include


def _install(staging: Path, out_dir: Path) -> None:
    # Replace file by file with os.replace so a concurrent reader sees either the old or the new
    # version of each file, never a half-written one.
    for source in sorted(p for p in staging.rglob("*") if p.is_file()):
        target = out_dir / source.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)


def build(out_dir: Path | None = None) -> Path:
    """Compile the bookstore proto into ``out_dir`` and return the descriptor set's path.

    Writes ``bookstore.binpb`` (a FileDescriptorSet with imports and source info) and the Python
    modules ``bookstore/v1/bookstore_pb2{,_grpc}.py`` and ``bookstore_pb2.pyi``. Safe to run again.
    Raises BuildError when protoc refuses the input.
    """
    from grpc_tools import protoc

    out_dir = (out_dir or DEFAULT_OUT_DIR).resolve()
    if not (PROTO_ROOT / PROTO_FILE).is_file():
        raise BuildError(f"proto source not found: {PROTO_ROOT / PROTO_FILE}")
    includes = [PROTO_ROOT, _googleapis_include_dir(), _grpc_tools_include_dir()]
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=out_dir))
    try:
        args = [
            "grpc_tools.protoc",
            *(f"--proto_path={include}" for include in includes),
            f"--descriptor_set_out={staging / DESCRIPTOR_SET_NAME}",
            "--include_imports",
            "--include_source_info",
            f"--python_out={staging}",
            f"--grpc_python_out={staging}",
            f"--pyi_out={staging}",
            PROTO_FILE,
        ]
        code = protoc.main(args)
        if code != 0:
            raise BuildError(f"protoc failed with exit code {code} compiling {PROTO_ROOT / PROTO_FILE}")
        _install(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir / DESCRIPTOR_SET_NAME


def main() -> int:
    try:
        descriptor_set = build()
    except BuildError as exc:
        print(f"build.py: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {descriptor_set}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
