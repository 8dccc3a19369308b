"""Where a proto's descriptors come from: a descriptor set file, .proto files compiled at load, or reflection."""

from __future__ import annotations

import base64
import logging
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc_tools
from google.api import annotations_pb2

from gateway.config.models import Proto, Upstream
from gateway.tls import ClientTls, TlsMaterialError, client_tls_of
from gateway.upstream.reflection import ReflectionError, fetch_file_set
from transcoder.descriptors import DescriptorIndex
from transcoder.errors import TranscodeError

log = logging.getLogger("protogate.protos")

# googleapis-common-protos installs google/api/*.proto beside its modules (google.api is a namespace package,
# so its __file__ is None); grpc_tools ships google/protobuf/*.proto.
GOOGLEAPIS_DIR = Path(annotations_pb2.__file__).parent.parent.parent
WELL_KNOWN_DIR = Path(grpc_tools.__file__).parent / "_proto"
PROTOC_TIMEOUT = 60.0  # seconds; a compile that takes longer is stuck, not slow


@dataclass(frozen=True)
class SourceError(Exception):
    """A proto source that cannot be loaded; `field` is the path under `protos[i]` that is wrong."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def load_descriptor_index(
    proto: Proto, base_dir: Path, upstreams: Mapping[str, Upstream] | None = None
) -> DescriptorIndex | None:
    """The DescriptorIndex of one configured proto; None for an optional reflection source that is down."""
    if proto.descriptor_set is not None:
        try:
            return DescriptorIndex.from_file(_resolve(base_dir, proto.descriptor_set))
        except TranscodeError as exc:
            raise SourceError("descriptor_set", exc.message) from None
    if proto.descriptor_set_base64 is not None:
        try:
            return DescriptorIndex.from_bytes(base64.b64decode("".join(proto.descriptor_set_base64.split())))
        except TranscodeError as exc:
            raise SourceError("descriptor_set_base64", exc.message) from None
    if proto.proto_files is not None:
        return _compiled_index(proto, base_dir)
    return _reflected_index(proto, upstreams or {}, base_dir)


def _resolve(base_dir: Path, path: str) -> Path:
    resolved = Path(path)
    return resolved if resolved.is_absolute() else base_dir / resolved


def _compiled_index(proto: Proto, base_dir: Path) -> DescriptorIndex:
    files = [_resolve(base_dir, p) for p in proto.proto_files or ()]
    for number, path in enumerate(files):
        if not path.is_file():
            raise SourceError(f"proto_files[{number}]", f"no such file: {path}")
    # Without include_dirs the config file's directory is the import root, as protoc's own default is cwd.
    includes = [_resolve(base_dir, d) for d in proto.include_dirs] or [base_dir]
    for number, path in enumerate(includes[: len(proto.include_dirs)]):
        if not path.is_dir():
            raise SourceError(f"include_dirs[{number}]", f"not a directory: {path}")
    try:
        data = compile_proto_files(files, includes)
    except ProtocError as exc:
        raise SourceError("proto_files", str(exc)) from None
    try:
        return DescriptorIndex.from_bytes(data)
    except TranscodeError as exc:
        raise SourceError("proto_files", exc.message) from None


class ProtocError(Exception):
    """protoc refused the input; the message carries what protoc printed."""


def compile_proto_files(files: Sequence[Path], include_dirs: Sequence[Path]) -> bytes:
    """FileDescriptorSet bytes (imports included) of `files`; google/api and google/protobuf are importable.

    protoc runs in a child process: grpc_tools' protoc writes its errors to the C stderr, which only a
    child process lets us capture.
    """
    includes = [*include_dirs, GOOGLEAPIS_DIR, WELL_KNOWN_DIR]
    with tempfile.TemporaryDirectory(prefix="protogate-protoc-") as tmp:
        out = Path(tmp) / "descriptor_set.binpb"
        args = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            *(f"--proto_path={d}" for d in includes),
            "--include_imports",
            f"--descriptor_set_out={out}",
            *(str(f) for f in files),
        ]
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=PROTOC_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise ProtocError(f"protoc did not finish within {PROTOC_TIMEOUT:g}s") from None
        if done.returncode != 0 or not out.is_file():
            said = (done.stderr or done.stdout).strip() or f"exit code {done.returncode}"
            names = ", ".join(str(f) for f in files)
            raise ProtocError(f"protoc cannot compile {names}: {said}")
        return out.read_bytes()


def _reflected_index(proto: Proto, upstreams: Mapping[str, Upstream], base_dir: Path) -> DescriptorIndex | None:
    source = proto.reflection
    assert source is not None  # the model allows exactly one source
    upstream = upstreams.get(source.upstream_id)
    if upstream is None:
        raise SourceError("reflection.upstream_id", f"no upstream has id {source.upstream_id!r}")
    if not upstream.is_grpc:
        message = f"upstream {upstream.id!r} has scheme {upstream.scheme}, not grpc or grpcs"
        raise SourceError("reflection.upstream_id", message)
    try:
        tls = reflection_tls(upstream, base_dir)
    except TlsMaterialError as exc:  # also reported at the upstream's own tls field
        raise SourceError("reflection.upstream_id", f"upstream {upstream.id!r}: tls.{exc}") from None
    try:
        data = fetch_file_set(upstream_addresses(upstream), source.services, source.timeout, tls)
    except ReflectionError as exc:
        if not source.required:
            log.warning("proto %s: reflection failed at load (%s); its routes wait for the first fetch", proto.id, exc)
            return None
        raise SourceError("reflection", f"cannot read descriptors from upstream {upstream.id!r}: {exc}") from None
    try:
        return DescriptorIndex.from_bytes(data)
    except TranscodeError as exc:
        raise SourceError("reflection", f"upstream {upstream.id!r} sent unusable descriptors: {exc.message}") from None


def reflection_tls(upstream: Upstream, base_dir: Path) -> ClientTls | None:
    """What reflection presents and trusts: a grpcs upstream's client TLS, as its calls use; None for grpc."""
    return client_tls_of(upstream.tls, base_dir) if upstream.scheme == "grpcs" else None


def upstream_addresses(upstream: Upstream) -> list[str]:
    """The nodes reflection asks, in config order; weight 0 means drained, so those are skipped."""
    return [f"[{n.host}]:{n.port}" if ":" in n.host else f"{n.host}:{n.port}" for n in upstream.nodes if n.weight > 0]
