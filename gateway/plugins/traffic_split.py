"""traffic-split: send a weighted share of a route's requests, picked by rules on vars, to other upstreams.

APISIX's shape: the first rule whose `match` holds (any of its `vars` expressions; no match means every
request) picks one of its `weighted_upstreams` by smooth weighted round robin. An entry with neither
`upstream_id` nor `upstream` is the route's own upstream. The choice goes on `ctx.upstream_override`,
which the route's target honours.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from gateway.context import RequestContext
from gateway.plugins.base import Plugin, PluginConfig
from gateway.plugins.variables import Expression, compile_expression
from gateway.responses import Reply
from gateway.upstream.balancer import WeightedRoundRobin


class WeightedUpstream(PluginConfig):
    upstream_id: str | None = Field(default=None, min_length=1)
    upstream: Any = None  # an inline upstream object, validated as one
    weight: int = Field(default=1, ge=0)

    @field_validator("upstream")
    @classmethod
    def _inline_upstream(cls, value: Any) -> Any:
        if value is None:
            return None
        # Imported here: the config package imports the plugin registry.
        from gateway.config.models import Upstream

        return Upstream.model_validate(value)

    @model_validator(mode="after")
    def _one_upstream(self) -> WeightedUpstream:
        if self.upstream is not None and self.upstream_id is not None:
            raise ValueError("give at most one of upstream and upstream_id")
        return self


class MatchItem(PluginConfig):
    vars: list[Any] | None = None

    @field_validator("vars")
    @classmethod
    def _check_vars(cls, value: list[Any] | None) -> list[Any] | None:
        if value is not None:
            compile_expression(value)
        return value


class Rule(PluginConfig):
    match: list[MatchItem] = Field(default_factory=list)
    # APISIX's default: the route's own upstream; at most 20 entries, as in APISIX.
    weighted_upstreams: list[WeightedUpstream] = Field(
        default_factory=lambda: [WeightedUpstream()], min_length=1, max_length=20
    )

    @model_validator(mode="after")
    def _some_weight(self) -> Rule:
        if not any(entry.weight > 0 for entry in self.weighted_upstreams):
            raise ValueError("at least one of weighted_upstreams needs a weight above 0")
        return self


class TrafficSplitConfig(PluginConfig):
    rules: list[Rule] = Field(default_factory=list)


class _CompiledRule:
    def __init__(self, rule: Rule) -> None:
        self.match: list[Expression] | None = None
        expressions = [item.vars for item in rule.match if item.vars is not None]
        if rule.match:
            # A match item without vars always holds (APISIX).
            self.match = None if len(expressions) < len(rule.match) else [compile_expression(e) for e in expressions]
        self.picker = WeightedRoundRobin([(entry, entry.weight) for entry in rule.weighted_upstreams])

    def matches(self, ctx: RequestContext) -> bool:
        return self.match is None or any(expression.matches(ctx) for expression in self.match)


def target_of(entry: WeightedUpstream) -> Any:
    """What goes on ctx.upstream_override for this entry: an inline Upstream, an upstream id, or None."""
    return entry.upstream if entry.upstream is not None else entry.upstream_id


def referenced_upstream_ids(config: TrafficSplitConfig) -> list[str]:
    return [e.upstream_id for rule in config.rules for e in rule.weighted_upstreams if e.upstream_id is not None]


class TrafficSplit(Plugin[TrafficSplitConfig]):
    name: ClassVar[str] = "traffic-split"
    priority: ClassVar[int] = 966
    Config = TrafficSplitConfig

    def __init__(self, config: TrafficSplitConfig) -> None:
        super().__init__(config)
        self.rules = [_CompiledRule(rule) for rule in config.rules]

    async def access(self, ctx: RequestContext) -> Reply | None:
        for rule in self.rules:
            if rule.matches(ctx):
                ctx.upstream_override = target_of(rule.picker.pick())
                break
        return None
