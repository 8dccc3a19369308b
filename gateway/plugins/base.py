"""Plugin: the base of every built-in plugin (a config model, a priority, phase hooks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from gateway.context import RequestContext
    from gateway.responses import ProxyResponse, Reply

ConfigT = TypeVar("ConfigT", bound=BaseModel)

PHASES: tuple[str, ...] = ("rewrite", "access", "before_proxy", "header_filter", "body_filter", "log")


class PluginConfig(BaseModel):
    """Base for plugin config models: unknown fields refused, frozen after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Plugin(Generic[ConfigT]):
    """A built-in plugin, configured once per route and shared by every request on it.

    `name` is the key in a `plugins` map (APISIX's name); `Config` validates that map's value at
    load time, so a plugin never sees an invalid config. `priority` orders plugins within a phase,
    higher first (APISIX's numbers). An authentication plugin also has `ConsumerConfig`, the
    credential a consumer carries for it, and `consumer_credential` to index consumers by it.

    Per-request state lives on the RequestContext, never on the plugin: one instance serves every
    request on its route concurrently. The pipeline calls only the hooks a class overrides.

    Request hooks (`rewrite`, `access`, `before_proxy`) return None to go on, return a Reply to
    answer without calling the upstream, or raise GatewayError to refuse. Response hooks
    (`header_filter`, `body_filter`) change the ProxyResponse in place; they run for every answer,
    the upstream's, a Reply and a refusal alike. `log` runs after the answer was sent.
    """

    name: ClassVar[str]
    priority: ClassVar[int]
    Config: ClassVar[type[BaseModel]]
    ConsumerConfig: ClassVar[type[BaseModel] | None] = None
    # Set when body_filter must see the whole upstream body (the pipeline then buffers it).
    needs_response_body: ClassVar[bool] = False

    def __init__(self, config: ConfigT) -> None:
        self.config = config

    @classmethod
    def consumer_credential(cls, consumer_config: BaseModel) -> str | None:
        """The value a request presents that identifies a consumer (a key, a username)."""
        return None

    async def rewrite(self, ctx: RequestContext) -> Reply | None:
        """Change the request before it is authorised; authentication plugins identify the consumer here."""
        return None

    async def access(self, ctx: RequestContext) -> Reply | None:
        """Allow or refuse: limits, restrictions."""
        return None

    async def before_proxy(self, ctx: RequestContext) -> Reply | None:
        """Last look before the upstream is called; the request is final after this phase."""
        return None

    async def header_filter(self, ctx: RequestContext, response: ProxyResponse) -> None:
        """Change the status or headers of the answer."""

    async def body_filter(self, ctx: RequestContext, response: ProxyResponse) -> None:
        """Change the body of the answer (buffered when `needs_response_body`)."""

    async def log(self, ctx: RequestContext, response: ProxyResponse) -> None:
        """After the answer was sent: record it. Errors here are logged, never sent."""


class PluginMeta(PluginConfig):
    """APISIX's `_meta` block, allowed in every plugin's config; the pipeline reads it, plugins never do."""

    disable: bool = False
    priority: int | None = None  # overrides the plugin's own priority on this route


@dataclass(frozen=True)
class PluginSpec:
    """One configured plugin: its class, its validated config, and the priority it runs at."""

    plugin: type[Plugin]
    config: BaseModel
    priority: int
