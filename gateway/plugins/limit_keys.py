"""What the three limiters share: the config of the key they count by, its resolution, and the refusal."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.plugins.base import PluginConfig
from gateway.plugins.variables import VAR_HELP, Template, check_template, is_known_var, resolve_var
from transcoder.status import Code

# Idle keys are swept as they expire; this caps what a flood of distinct keys can hold meanwhile.
MAX_KEYS = 100_000

KeyType = Literal["var", "var_combination", "constant"]
_VAR_NAME = re.compile(r"[A-Za-z0-9_]+")


class LimitConfig(PluginConfig):
    """Fields every limiter has, with APISIX's names and defaults."""

    key_type: KeyType = "var"
    # APISIX requires `key` for limit-req/limit-conn; remote_addr (its documented fallback) is the default here.
    key: str = Field(default="remote_addr", min_length=1, max_length=256)
    rejected_code: int = Field(default=503, ge=200, le=599)
    rejected_msg: str | None = Field(default=None, min_length=1, max_length=1024)
    policy: Literal["local", "redis", "redis-cluster"] = "local"
    # Only meaningful when the counters live elsewhere (redis); the local policy cannot fail.
    allow_degradation: bool = False
    # The policies a limiter has; one with redis ones also carries the redis fields (redis_policy).
    policies: ClassVar[frozenset[str]] = frozenset({"local"})

    @field_validator("policy", mode="before")
    @classmethod
    def _policy_available(cls, value: Any) -> Any:
        if value in ("redis", "redis-cluster") and value not in cls.policies:
            raise ValueError(f"policy {value!r} is not available for this limiter yet (limit-count has it)")
        return value

    @model_validator(mode="after")
    def _check_key(self) -> LimitConfig:
        if self.key_type == "var":
            if not _VAR_NAME.fullmatch(self.key) or not is_known_var(self.key):
                raise ValueError(f"key {self.key!r} is not a known variable ({VAR_HELP})")
        elif self.key_type == "var_combination":
            if Template.parse(self.key).is_literal:
                raise ValueError(
                    "a var_combination key needs at least one $variable, e.g. '$remote_addr $consumer_name'"
                )
            check_template(self.key)
        return self


class LimitKey:
    """The string a limiter counts a request under, from its key_type and key (parsed once).

    A key whose variables are all missing or empty falls back to the client address (APISIX's rule),
    so leaving a header out never escapes a limit.
    """

    def __init__(self, key_type: KeyType, key: str) -> None:
        self.key_type = key_type
        self.key = key
        self.template = Template.parse(key) if key_type == "var_combination" else None

    def __call__(self, ctx: RequestContext) -> str:
        if self.key_type == "constant":
            return self.key
        if self.template is None:
            return resolve_var(self.key, ctx) or ctx.client_ip
        out: list[str] = []
        resolved = 0
        for part in self.template.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = resolve_var(part[0], ctx)
            if value:
                resolved += 1
                out.append(value)
        return "".join(out) if resolved else ctx.client_ip


def refusal(
    config: LimitConfig, default_message: str, retry_after: float, headers: Mapping[str, str] | None = None
) -> GatewayError:
    """The answer to a request over a limit: `rejected_code`, `rejected_msg`, and Retry-After in whole seconds."""
    seconds = max(1, math.ceil(retry_after))
    return GatewayError(
        config.rejected_code,
        Code.RESOURCE_EXHAUSTED,
        config.rejected_msg or default_message,
        headers={**(headers or {}), "Retry-After": str(seconds)},
    )
