"""Compile .proto files to FileDescriptorSet bytes with grpc_tools, for tests."""

from __future__ import annotations

import tempfile
from pathlib import Path

import grpc_tools
from google.api import annotations_pb2
from grpc_tools import protoc

# googleapis-common-protos installs google/api/*.proto beside its modules (google.api is a namespace package,
# so its __file__ is None); grpc_tools ships google/protobuf/*.proto.
GOOGLEAPIS_DIR = Path(annotations_pb2.__file__).parent.parent.parent
WELL_KNOWN_DIR = Path(grpc_tools.__file__).parent / "_proto"


def compile_descriptor_set(proto_paths: list[Path], include_dirs: list[Path]) -> bytes:
    """Run protoc --include_imports over `proto_paths`; googleapis and well-known includes are added."""
    includes = [*include_dirs, GOOGLEAPIS_DIR, WELL_KNOWN_DIR]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "descriptor_set.pb"
        args = ["protoc", *(f"-I{d}" for d in includes), "--include_imports", f"--descriptor_set_out={out}"]
        rc = protoc.main([*args, *(str(p) for p in proto_paths)])
        if rc != 0:
            raise RuntimeError(f"protoc failed ({rc}) for {[str(p) for p in proto_paths]}")
        return out.read_bytes()
