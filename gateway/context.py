"""RequestContext: the one object a request carries through the phases."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class RequestContext:
    request: web.Request
    route_id: str
    path: str  # normalised, still percent-encoded where escapes are not unreserved characters
    query: str  # raw query string
    started: float = field(default_factory=time.monotonic)
    consumer: Any = None
    vars: dict[str, Any] = field(default_factory=dict)
