"""opentelemetry: trace the route's requests (APISIX's sampler and attribute fields); export is set in `telemetry`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from gateway.plugins.base import Plugin, PluginConfig
from gateway.plugins.variables import is_known_var, resolve_var

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.sampling import Sampler

    from gateway.context import RequestContext


class RootSamplerOptions(PluginConfig):
    fraction: float = Field(default=0.0, ge=0.0, le=1.0)


class RootSampler(PluginConfig):
    name: Literal["always_on", "always_off", "trace_id_ratio"] = "always_off"
    options: RootSamplerOptions = Field(default_factory=RootSamplerOptions)


class SamplerOptions(PluginConfig):
    fraction: float = Field(default=0.0, ge=0.0, le=1.0)  # trace_id_ratio
    root: RootSampler | None = None  # parent_base: for requests that carry no sampled parent


class SamplerConfig(PluginConfig):
    name: Literal["always_on", "always_off", "trace_id_ratio", "parent_base"] = "always_off"
    options: SamplerOptions = Field(default_factory=SamplerOptions)


class OpenTelemetryConfig(PluginConfig):
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    # Variable names ($-less, as APISIX): each becomes a span attribute of that name.
    additional_attributes: list[str] = Field(default_factory=list)
    # Request headers whose names start with one of these become attributes (named by the header).
    additional_header_prefix_attributes: list[str] = Field(default_factory=list)

    @field_validator("additional_attributes")
    @classmethod
    def _known_vars(cls, value: list[str]) -> list[str]:
        for name in value:
            if not is_known_var(name.lstrip("$")):
                raise ValueError(f"unknown variable: {name!r}")
        return [name.lstrip("$") for name in value]

    @model_validator(mode="after")
    def _root_only_for_parent_base(self) -> OpenTelemetryConfig:
        if self.sampler.options.root is not None and self.sampler.name != "parent_base":
            raise ValueError("sampler.options.root only applies to parent_base")
        return self


class OpenTelemetry(Plugin[OpenTelemetryConfig]):
    """No hooks of its own: the gateway starts and ends the server span (gateway.telemetry) with this config."""

    name: ClassVar[str] = "opentelemetry"
    priority: ClassVar[int] = 12009
    Config = OpenTelemetryConfig

    def __init__(self, config: OpenTelemetryConfig) -> None:
        super().__init__(config)
        self._sampler: Sampler | None = None
        self._prefixes = tuple(prefix.lower() for prefix in config.additional_header_prefix_attributes)

    @property
    def sampler(self) -> Sampler:
        if self._sampler is None:  # built on first use: the SDK is imported only when tracing is on
            from gateway.telemetry.tracing import sampler_from_config

            sampler = self.config.sampler
            root = sampler.options.root
            root_sampler = sampler_from_config(root.name, root.options.fraction) if root is not None else None
            self._sampler = sampler_from_config(sampler.name, sampler.options.fraction, root_sampler)
        return self._sampler

    def attributes(self, ctx: RequestContext) -> dict[str, Any]:
        attributes: dict[str, Any] = {}
        for name in self.config.additional_attributes:
            value = resolve_var(name, ctx, ctx.response)
            if value is not None:
                attributes[name] = value
        if self._prefixes:
            for key, value in ctx.request.headers.items():
                if key.lower().startswith(self._prefixes):
                    attributes[key] = value
        return attributes
