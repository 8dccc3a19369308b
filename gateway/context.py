"""RequestContext: the one object a request carries through the phases."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from multidict import CIMultiDict

from gateway.body import read_body

if TYPE_CHECKING:
    from gateway.config.models import Upstream
    from gateway.consumers import Consumer, ConsumerIndex
    from gateway.pipeline import PluginChain
    from gateway.responses import ProxyResponse


@dataclass
class RequestContext:
    """Per-request state. Plugins read and change this, never globals or themselves.

    What goes upstream is what the context says when the request phases end: `method`, `path`
    (normalised, percent-escapes kept), `query` (raw) and `headers` start as the client sent them
    and plugins rewrite them. `upstream_metadata` carries what the gateway itself asserts (the
    consumer's name) to gRPC upstreams as metadata, beside the header mapping.
    """

    request: web.Request
    route_id: str
    method: str
    path: str
    query: str
    headers: CIMultiDict[str]
    client_ip: str
    consumers: ConsumerIndex
    body_limit: int
    service_id: str | None = None
    started: float = field(default_factory=time.monotonic)
    consumer: Consumer | None = None
    vars: dict[str, Any] = field(default_factory=dict)
    upstream_metadata: list[tuple[str, str]] = field(default_factory=list)
    response: ProxyResponse | None = None
    # Set by traffic-split: the upstream (its id, or an inline one) the target calls instead of the route's.
    upstream_override: Upstream | str | None = None
    # Global rules' chain, then the route's (merged with the consumer's once one is known).
    chains: tuple[PluginChain, ...] = ()
    # The client certificate the TLS handshake verified (ssl.getpeercert()'s dict); None: none, or plain HTTP.
    client_cert: dict[str, Any] | None = None
    _body: bytes | None = None

    async def read_body(self) -> bytes:
        """The request body, read once within the route's limit (413 past it) and kept."""
        if self._body is None:
            self._body = await read_body(self.request, self.body_limit)
        return self._body

    def set_body(self, body: bytes) -> None:
        self._body = body

    @property
    def body_was_read(self) -> bool:
        return self._body is not None

    def set_upstream_header(self, name: str, value: str) -> None:
        """A header the gateway asserts: goes upstream as a header (HTTP) and as metadata (gRPC)."""
        self.headers[name] = value
        lowered = name.lower()
        self.upstream_metadata = [(k, v) for k, v in self.upstream_metadata if k != lowered]
        self.upstream_metadata.append((lowered, value))
