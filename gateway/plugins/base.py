"""Plugin: the base of every built-in plugin (a config model, a priority, phase hooks)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

from pydantic import BaseModel

if TYPE_CHECKING:
    from gateway.context import RequestContext

ConfigT = TypeVar("ConfigT", bound=BaseModel)


class Plugin(Generic[ConfigT]):
    """A built-in plugin, configured once per route and shared by every request on it.

    `name` is the key in a route's `plugins` map (APISIX's name); `Config` validates that map's
    value at load time, so a plugin never sees an invalid config. Per-request state lives on the
    RequestContext, never on the plugin. Phase hooks are no-ops by default; a hook returns None to
    go on, or raises GatewayError to stop the request with that answer.
    """

    name: ClassVar[str]
    priority: ClassVar[int]
    Config: ClassVar[type[BaseModel]]

    def __init__(self, config: ConfigT) -> None:
        self.config = config

    async def rewrite(self, ctx: RequestContext) -> None:
        """Before routing decisions are final: rewrite the request, identify the consumer."""

    async def access(self, ctx: RequestContext) -> None:
        """Allow or refuse: limits, restrictions."""
