"""What plugin authors use: the Plugin base class and the Request/Response objects its hooks change."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel

__all__ = ["HeaderChanges", "Plugin", "Request", "Response", "Stop"]

HeaderList = list[tuple[str, str]]


class Plugin:
    """Base class of a runner plugin. Subclass it, set `name`, and override the hooks you need.

    ```python
    class RequireTeam(Plugin):
        name = "require-team"

        class Config(BaseModel):
            header: str = "x-team"

        async def on_request(self, request: Request, config: Config) -> None:
            if request.get_header(config.header) is None:
                request.stop(403, body={"message": "team header required"})
    ```

    - `name`: unique plugin name used in route configs (lowercase, hyphens).
    - `Config`: a pydantic model. Route configs are validated with it once, when the gateway prepares a
      route (a refusal names the field path), and its `model_json_schema()` is what Describe advertises.
      `None` means the hook receives the raw config dict.
    - `needs_body`: the gateway sends the full body to the hooks this class implements. Off by default:
      bodies cost a copy per call.
    - `vars`: names of gateway variables pushed to `request.vars` / `response.vars`.

    Hooks return `None`; what they do is recorded on the object they receive. In `on_request` a call to
    `request.stop(...)` answers the client and no later plugin runs; header, path, arg and body changes
    accumulate over the chain, and later plugins see earlier plugins' changes. Raising an exception fails
    the call with gRPC INTERNAL; the gateway's failure policy decides what the client sees.

    One instance serves every request of every route: keep per-request state on the request, not on self.
    """

    name: ClassVar[str]
    Config: ClassVar[type[BaseModel] | None] = None
    needs_body: ClassVar[bool] = False
    vars: ClassVar[tuple[str, ...]] = ()

    async def on_request(self, request: Request, config: Any) -> None:
        """Inspect or change the request before it is proxied. The default does nothing."""

    async def on_response(self, response: Response, config: Any) -> None:
        """Inspect or change the upstream's response before it reaches the client. The default does nothing."""

    @classmethod
    def description(cls) -> str:
        """First line of the class docstring, shown by Describe."""
        doc = cls.__doc__ if "__doc__" in cls.__dict__ else None
        return (doc or "").strip().splitlines()[0] if doc and doc.strip() else ""

    @classmethod
    def implements_request(cls) -> bool:
        return cls.on_request is not Plugin.on_request

    @classmethod
    def implements_response(cls) -> bool:
        return cls.on_response is not Plugin.on_response


@dataclass
class HeaderChanges:
    """Header changes merged over a chain: each lowercase name sits in at most one of set/add/remove."""

    set: dict[str, list[str]] = field(default_factory=dict)
    add: dict[str, list[str]] = field(default_factory=dict)
    remove: list[str] = field(default_factory=list)

    def record_set(self, name: str, value: str) -> None:
        self._forget(name)
        self.set[name] = [value]

    def record_add(self, name: str, value: str) -> None:
        if name in self.set:
            self.set[name].append(value)
        elif name in self.remove:
            # remove-then-add is "exactly these values", which is what set means.
            self.remove.remove(name)
            self.set[name] = [value]
        else:
            self.add.setdefault(name, []).append(value)

    def record_remove(self, name: str) -> None:
        self._forget(name)
        self.remove.append(name)

    def _forget(self, name: str) -> None:
        self.set.pop(name, None)
        self.add.pop(name, None)
        if name in self.remove:
            self.remove.remove(name)

    def __bool__(self) -> bool:
        return bool(self.set or self.add or self.remove)


@dataclass(frozen=True)
class Stop:
    """The answer a plugin sends instead of proxying."""

    status: int
    headers: HeaderList
    body: bytes


def _encode_body(body: bytes | str | Mapping[str, Any] | list[Any], headers: HeaderList) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    if not any(name == "content-type" for name, _ in headers):
        headers.append(("content-type", "application/json"))
    return json.dumps(body, separators=(",", ":")).encode()


def _lower_pairs(pairs: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> HeaderList:
    items = pairs.items() if isinstance(pairs, Mapping) else (pairs or ())
    return [(str(name).lower(), str(value)) for name, value in items]


class _HeaderAccess:
    headers: HeaderList
    header_changes: HeaderChanges

    def get_header(self, name: str) -> str | None:
        """The first value of a header (case-insensitive), or None."""
        name = name.lower()
        return next((value for key, value in self.headers if key == name), None)

    def get_headers(self, name: str) -> list[str]:
        """Every value of a header (case-insensitive), in order."""
        name = name.lower()
        return [value for key, value in self.headers if key == name]

    def set_header(self, name: str, value: str) -> None:
        """Replace every value of a header with one value."""
        name = name.lower()
        self.headers = [(key, old) for key, old in self.headers if key != name]
        self.headers.append((name, value))
        self.header_changes.record_set(name, value)

    def add_header(self, name: str, value: str) -> None:
        """Append one more value of a header, keeping the existing ones (e.g. Set-Cookie)."""
        name = name.lower()
        self.headers.append((name, value))
        self.header_changes.record_add(name, value)

    def remove_header(self, name: str) -> None:
        """Delete every value of a header."""
        name = name.lower()
        self.headers = [(key, value) for key, value in self.headers if key != name]
        self.header_changes.record_remove(name)


@dataclass
class Request(_HeaderAccess):
    """One client request as a plugin sees it. Header names are lowercase; lists keep wire order."""

    method: str
    path: str
    args: list[tuple[str, str]] = field(default_factory=list)
    headers: HeaderList = field(default_factory=list)
    body: bytes | None = None
    """The request body, or None when no plugin of the chain declared `needs_body`."""
    vars: dict[str, str] = field(default_factory=dict)
    request_id: str = ""
    client_ip: str = ""
    client_port: int = 0
    route_id: str = ""
    consumer_name: str = ""
    scheme: str = "http"
    traceparent: str = ""
    tracestate: str = ""

    stopped: Stop | None = field(default=None, init=False)
    new_path: str | None = field(default=None, init=False)
    new_body: bytes | None = field(default=None, init=False)
    header_changes: HeaderChanges = field(default_factory=HeaderChanges, init=False)
    arg_sets: dict[str, list[str]] = field(default_factory=dict, init=False)
    arg_removes: list[str] = field(default_factory=list, init=False)

    def stop(
        self,
        status: int,
        body: bytes | str | Mapping[str, Any] | list[Any] = b"",
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> None:
        """Answer the client with `status` now; no later plugin runs. A dict/list body is sent as JSON."""
        if not 100 <= status <= 599:
            raise ValueError(f"HTTP status must be 100..599, got {status}")
        header_list = _lower_pairs(headers)
        self.stopped = Stop(status, header_list, _encode_body(body, header_list))

    def rewrite_path(self, path: str) -> None:
        """Proxy to `path` instead (percent-encoded, starting with '/', no query)."""
        if not path.startswith("/") or "?" in path:
            raise ValueError(f"path must start with '/' and carry no query: {path!r}")
        self.path = path
        self.new_path = path

    def get_arg(self, name: str) -> str | None:
        """The first value of a query argument, or None."""
        return next((value for key, value in self.args if key == name), None)

    def set_arg(self, name: str, value: str) -> None:
        """Replace every value of a query argument with one value (appended if new)."""
        self.args = _replace_pairs(self.args, name, [value])
        if name in self.arg_removes:
            self.arg_removes.remove(name)
        self.arg_sets[name] = [value]

    def remove_arg(self, name: str) -> None:
        """Delete every value of a query argument."""
        self.args = [(key, value) for key, value in self.args if key != name]
        self.arg_sets.pop(name, None)
        if name not in self.arg_removes:
            self.arg_removes.append(name)

    def set_body(self, body: bytes | str) -> None:
        """Replace the body that is proxied."""
        self.body = body.encode() if isinstance(body, str) else body
        self.new_body = self.body

    @property
    def rewritten(self) -> bool:
        return bool(
            self.new_path is not None
            or self.new_body is not None
            or self.header_changes
            or self.arg_sets
            or self.arg_removes
        )


def _replace_pairs(pairs: list[tuple[str, str]], name: str, values: list[str]) -> list[tuple[str, str]]:
    """New values take the place of the first old one; a new name goes at the end."""
    out: list[tuple[str, str]] = []
    placed = False
    for key, value in pairs:
        if key != name:
            out.append((key, value))
        elif not placed:
            out.extend((name, new) for new in values)
            placed = True
    if not placed:
        out.extend((name, new) for new in values)
    return out


@dataclass
class Response(_HeaderAccess):
    """The upstream's response as a plugin sees it, with the request's method and path for context."""

    status: int
    headers: HeaderList = field(default_factory=list)
    body: bytes | None = None
    """The response body, or None when no plugin of the chain declared `needs_body`."""
    vars: dict[str, str] = field(default_factory=dict)
    request_id: str = ""
    method: str = ""
    path: str = ""
    route_id: str = ""
    consumer_name: str = ""
    traceparent: str = ""
    tracestate: str = ""

    new_status: int | None = field(default=None, init=False)
    new_body: bytes | None = field(default=None, init=False)
    header_changes: HeaderChanges = field(default_factory=HeaderChanges, init=False)

    def set_status(self, status: int) -> None:
        """Send `status` to the client instead of the upstream's."""
        if not 100 <= status <= 599:
            raise ValueError(f"HTTP status must be 100..599, got {status}")
        self.status = status
        self.new_status = status

    def set_body(self, body: bytes | str | Mapping[str, Any] | list[Any]) -> None:
        """Send this body instead; a dict/list is sent as JSON (content-type set if absent)."""
        if isinstance(body, bytes | str):
            encoded = body.encode() if isinstance(body, str) else body
        else:
            encoded = json.dumps(body, separators=(",", ":")).encode()
            if self.get_header("content-type") is None:
                self.set_header("content-type", "application/json")
        self.body = encoded
        self.new_body = encoded

    @property
    def changed(self) -> bool:
        return bool(self.new_status is not None or self.new_body is not None or self.header_changes)
