"""FileDescriptorSet bytes -> DescriptorIndex: a private pool, its services, methods and HttpRules."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from transcoder.errors import TranscodeError
from transcoder.httprule import PathTemplate, parse_template
from transcoder.status import Code

# Files the transcoder needs to render error details and well-known types even when a descriptor
# set leaves them out (a set built without --include_imports, or one that never imports them).
_SUPPORT_FILES: tuple[str, ...] = (
    "google.protobuf.any_pb2",
    "google.protobuf.duration_pb2",
    "google.protobuf.timestamp_pb2",
    "google.protobuf.struct_pb2",
    "google.protobuf.wrappers_pb2",
    "google.protobuf.field_mask_pb2",
    "google.protobuf.empty_pb2",
    "google.rpc.status_pb2",
    "google.rpc.error_details_pb2",
)

_HTTP_KINDS = ("get", "put", "post", "delete", "patch")


@dataclass(eq=False)
class MethodInfo:
    """One gRPC method, with its prepared message classes and every HTTP binding it has."""

    full_name: str  # "bookstore.v1.Bookstore.GetShelf"
    grpc_path: str  # "/bookstore.v1.Bookstore/GetShelf", the :path of the gRPC call
    descriptor: MethodDescriptor
    input_class: type[Message]
    output_class: type[Message]
    client_streaming: bool
    server_streaming: bool
    bindings: list[HttpBinding] = field(default_factory=list)

    @property
    def service_name(self) -> str:
        return self.descriptor.containing_service.full_name

    @property
    def input_descriptor(self) -> Descriptor:
        return self.input_class.DESCRIPTOR

    @property
    def output_descriptor(self) -> Descriptor:
        return self.output_class.DESCRIPTOR


@dataclass(frozen=True, eq=False)
class HttpBinding:
    """One HttpRule (or one of its additional_bindings) of a method, with its template compiled."""

    http_method: str  # "GET", "POST", ... or the custom kind, upper-cased
    template: PathTemplate
    body: str  # "" (no body), "*" (whole request), or a top-level field name
    response_body: str  # "" (whole response) or a top-level field name
    method: MethodInfo


class DescriptorIndex:
    """A private DescriptorPool built from one FileDescriptorSet, indexed by service and method.

    The process-wide default pool is never touched, so two protos that define the same names can
    be loaded side by side.
    """

    def __init__(self, file_set: descriptor_pb2.FileDescriptorSet) -> None:
        self.pool = descriptor_pool.DescriptorPool()
        self.services: dict[str, ServiceDescriptor] = {}
        self.methods: dict[str, MethodInfo] = {}  # by full name and by gRPC path
        self.bindings: list[HttpBinding] = []
        self.file_names: tuple[str, ...] = tuple(f.name for f in file_set.file)
        self._add_files(file_set)
        for file_proto in file_set.file:
            for service_proto in file_proto.service:
                self._index_service(file_proto.package, service_proto)

    @classmethod
    def from_bytes(cls, data: bytes) -> DescriptorIndex:
        file_set = descriptor_pb2.FileDescriptorSet()
        try:
            file_set.ParseFromString(data)
        except (DecodeError, RuntimeWarning) as exc:
            raise TranscodeError(Code.INVALID_ARGUMENT, f"not a FileDescriptorSet: {exc}") from None
        if not file_set.file or any(not f.name for f in file_set.file):
            raise TranscodeError(Code.INVALID_ARGUMENT, "not a FileDescriptorSet: it holds no named .proto files")
        return cls(file_set)

    @classmethod
    def from_file(cls, path: str | Path) -> DescriptorIndex:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise TranscodeError(Code.NOT_FOUND, f"cannot read descriptor set {path}: {exc.strerror}") from None
        try:
            return cls.from_bytes(data)
        except TranscodeError as exc:
            raise TranscodeError(exc.code, f"{path}: {exc.message}") from None

    def method(self, name: str) -> MethodInfo:
        """A method by full name (`pkg.Service.Method`) or gRPC path (`/pkg.Service/Method`)."""
        try:
            return self.methods[name]
        except KeyError:
            raise TranscodeError(Code.NOT_FOUND, f"unknown method {name}") from None

    def methods_of(self, service: str) -> list[MethodInfo]:
        if service not in self.services:
            raise TranscodeError(Code.NOT_FOUND, f"unknown service {service}")
        return [m for key, m in self.methods.items() if key.startswith("/") and m.service_name == service]

    def message_class(self, full_name: str) -> type[Message]:
        try:
            return message_factory.GetMessageClass(self.pool.FindMessageTypeByName(full_name))
        except KeyError:
            raise TranscodeError(Code.NOT_FOUND, f"unknown message type {full_name}") from None

    def _add_files(self, file_set: descriptor_pb2.FileDescriptorSet) -> None:
        pending = {f.name: f for f in file_set.file}
        for module_name in _SUPPORT_FILES:
            module = __import__(module_name, fromlist=["DESCRIPTOR"])
            support = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
            pending.setdefault(support.name, support)
        # Add in dependency order: protoc writes sets that way, but hand-made sets need not be.
        while pending:
            progress = False
            for name, file_proto in list(pending.items()):
                if all(dep not in pending for dep in file_proto.dependency):
                    self._add_file(file_proto)
                    del pending[name]
                    progress = True
            if not progress:
                raise TranscodeError(Code.INVALID_ARGUMENT, f"import cycle among {sorted(pending)}")

    def _add_file(self, file_proto: descriptor_pb2.FileDescriptorProto) -> None:
        try:
            self.pool.Add(file_proto)
        except (TypeError, ValueError) as exc:
            missing = [dep for dep in file_proto.dependency if not self._has_file(dep)]
            hint = f" (missing imports {missing}: build it with protoc --include_imports)" if missing else ""
            raise TranscodeError(Code.INVALID_ARGUMENT, f"{file_proto.name}: {exc}{hint}") from None

    def _has_file(self, name: str) -> bool:
        try:
            self.pool.FindFileByName(name)
        except KeyError:
            return False
        return True

    def _index_service(self, package: str, service_proto: descriptor_pb2.ServiceDescriptorProto) -> None:
        service_name = f"{package}.{service_proto.name}" if package else service_proto.name
        service = self.pool.FindServiceByName(service_name)
        self.services[service_name] = service
        for method_proto in service_proto.method:
            descriptor = service.methods_by_name[method_proto.name]
            info = MethodInfo(
                full_name=descriptor.full_name,
                grpc_path=f"/{service_name}/{descriptor.name}",
                descriptor=descriptor,
                input_class=message_factory.GetMessageClass(descriptor.input_type),
                output_class=message_factory.GetMessageClass(descriptor.output_type),
                client_streaming=method_proto.client_streaming,
                server_streaming=method_proto.server_streaming,
            )
            # The extension is read off the raw options: the private pool does not know it.
            if method_proto.options.HasExtension(annotations_pb2.http):
                rule = method_proto.options.Extensions[annotations_pb2.http]
                info.bindings.extend(self._bindings(info, rule))
            self.methods[info.full_name] = info
            self.methods[info.grpc_path] = info
            self.bindings.extend(info.bindings)

    def _bindings(self, info: MethodInfo, rule: http_pb2.HttpRule) -> Iterable[HttpBinding]:
        yield self._binding(info, rule)
        for extra in rule.additional_bindings:
            if extra.additional_bindings:
                raise TranscodeError(
                    Code.INVALID_ARGUMENT, f"{info.full_name}: additional_bindings may not nest additional_bindings"
                )
            yield self._binding(info, extra)

    def _binding(self, info: MethodInfo, rule: http_pb2.HttpRule) -> HttpBinding:
        kind = rule.WhichOneof("pattern")
        if kind is None:
            raise TranscodeError(Code.INVALID_ARGUMENT, f"{info.full_name}: HttpRule has no pattern")
        if kind == "custom":
            http_method, path = rule.custom.kind.upper(), rule.custom.path
        else:
            http_method, path = kind.upper(), getattr(rule, kind)
        try:
            template = parse_template(path)
        except TranscodeError as exc:
            raise TranscodeError(exc.code, f"{info.full_name}: {exc.message}") from None
        _check_field_path(info.full_name, info.input_descriptor, "body", rule.body, allow_star=True)
        _check_field_path(info.full_name, info.output_descriptor, "response_body", rule.response_body)
        for variable in template.variables:
            _check_field_path(info.full_name, info.input_descriptor, "path variable", ".".join(variable.field_path))
        return HttpBinding(http_method, template, rule.body, rule.response_body, info)


def _check_field_path(method: str, message: Descriptor, what: str, path: str, *, allow_star: bool = False) -> None:
    """Refuse at load time a rule that names a field the message does not have."""
    if not path or (allow_star and path == "*"):
        return
    descriptor: Descriptor | None = message
    for part in path.split("."):
        found = descriptor.fields_by_name.get(part) if descriptor is not None else None
        if found is None:
            raise TranscodeError(
                Code.INVALID_ARGUMENT, f"{method}: {what} {path!r} names no field of {message.full_name}"
            )
        descriptor = found.message_type
