"""ext-plugin-pre-req / post-req / post-resp: run a route's external plugins in a plugin runner.

Thin classes over plugin_runner.client (token cache, re-prepare on TOKEN_UNKNOWN) and gateway.runner (the
supervised processes, the message glue). One runner round trip per phase; the failure policy is ours:
runner down or failing -> 503, too slow -> 504, or, with `allow_degradation`, the request goes on untouched
and the answer says `X-Protogate-Ext-Plugin: degraded`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Hashable
from typing import Any, ClassVar

import grpc
from pydantic import Field, field_validator

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.plugins.base import Plugin, PluginConfig
from gateway.responses import ProxyResponse, Reply

# A module import: gateway.runner.calls reads plugin variables, so it may be the one importing this package.
from gateway.runner import calls
from gateway.runner.pool import RUNNER_POOL, RunnerPool
from gateway.runner.supervisor import RunnerSupervisor
from gateway.telemetry import plugin_runner_span
from plugin_runner.client import PreparedConf, RunnerConfigError

DEGRADED_HEADER = "X-Protogate-Ext-Plugin"
_DEGRADED_VAR = "_ext_plugin_degraded"


class ExtPluginConf(PluginConfig):
    """One plugin of the runner's chain: its name in the runner, and its config object."""

    name: str = Field(min_length=1)
    # An object, or (as APISIX writes it) the object as JSON text.
    value: dict[str, Any] = Field(default_factory=dict)

    @field_validator("value", mode="before")
    @classmethod
    def _json_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except ValueError as exc:
                raise ValueError(f"value is not valid JSON: {exc}") from None
            if not isinstance(value, dict):
                raise ValueError("value must be a JSON object")
        return value


class ExtPluginConfig(PluginConfig):
    runner: str | None = None  # a plugin_runners name; None: the only runner configured
    conf: list[ExtPluginConf] = Field(min_length=1)
    allow_degradation: bool = False
    timeout: float = Field(default=0.3, gt=0, le=60)  # seconds for the whole call, a re-prepare included

    @field_validator("conf")
    @classmethod
    def _unique_names(cls, conf: list[ExtPluginConf]) -> list[ExtPluginConf]:
        names = [c.name for c in conf]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"plugin {name!r} appears twice in one chain")
        return conf

    def specs(self) -> list[tuple[str, dict[str, Any]]]:
        return [(c.name, c.value) for c in self.conf]

    def version(self) -> str:
        """A digest of the chain: a changed config is a new PrepareConf key, never the old token."""
        text = json.dumps(self.specs(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def runner_issues(config: ExtPluginConfig, runner_names: list[str]) -> list[tuple[str, str]]:
    """(field, message) for a plugin that names no configured runner; the loader adds the path before it."""
    if config.runner is None:
        if len(runner_names) == 1:
            return []
        if not runner_names:
            return [("runner", "no plugin_runners are configured")]
        return [("runner", f"several plugin_runners are configured ({', '.join(runner_names)}): name one")]
    if config.runner not in runner_names:
        known = ", ".join(runner_names) or "none"
        return [("runner", f"no plugin runner is named {config.runner!r} (configured: {known})")]
    return []


def prepare_key(route_id: str, plugin: str, version: str) -> Hashable:
    """The key a route's chain is prepared under: one token per (route, phase plugin, config version)."""
    return (route_id, plugin, version)


class _ExtPlugin(Plugin[ExtPluginConfig]):
    Config = ExtPluginConfig
    phase: ClassVar[str]

    def __init__(self, config: ExtPluginConfig) -> None:
        super().__init__(config)
        self._specs = config.specs()
        self._version = config.version()
        # route id -> (the client it was prepared with, the chain): skips the client's per-call normalising.
        # A chain is updated in place when re-prepared; a new client (a restarted runner) prepares anew.
        self._chains: dict[str, tuple[object, PreparedConf]] = {}

    def _runner(self, ctx: RequestContext) -> tuple[RunnerPool | None, RunnerSupervisor | None]:
        app = getattr(ctx.request, "app", None)  # a native gRPC call's view carries the HTTP edge's app
        pool = app.get(RUNNER_POOL) if app is not None else None
        return pool, pool.get(self.config.runner) if pool is not None else None

    async def _prepared(self, ctx: RequestContext, pool: RunnerPool, supervisor: RunnerSupervisor) -> PreparedConf:
        client = supervisor.client
        assert client is not None
        cached = self._chains.get(ctx.route_id)
        if cached is not None and cached[0] is client:
            return cached[1]
        key = prepare_key(ctx.route_id, self.name, self._version)
        pool.prepared_keys.add((supervisor.name, key))
        prepared = await client.prepare(
            key, self._specs, route_id=ctx.route_id, conf_version=self._version, timeout=self.config.timeout
        )
        self._chains[ctx.route_id] = (client, prepared)
        return prepared

    def _down_message(self, pool: RunnerPool | None) -> str:
        if pool is None:
            return "no plugin runners here"
        name = self.config.runner
        return f"plugin runner {name!r} is not running" if name else "the plugin runner is not running"

    def _failed(
        self, ctx: RequestContext, pool: RunnerPool | None, supervisor: RunnerSupervisor | None, exc: BaseException
    ) -> None:
        """Apply the failure policy: return to go on degraded, or raise the refusal."""
        kind, err = _classify(exc)
        runner = supervisor.name if supervisor is not None else self.config.runner or "-"
        if pool is not None:
            pool.count_call(runner, self.phase, kind)
            pool.log_failure(runner, self.phase, kind, err.message, self.config.allow_degradation)
        if not self.config.allow_degradation:
            raise err from None
        ctx.vars[_DEGRADED_VAR] = True

    async def header_filter(self, ctx: RequestContext, response: ProxyResponse) -> None:
        if ctx.vars.get(_DEGRADED_VAR):
            response.headers[DEGRADED_HEADER] = "degraded"


class _ExtRequestPlugin(_ExtPlugin):
    async def _run(self, ctx: RequestContext) -> Reply | None:
        pool, supervisor = self._runner(ctx)
        try:
            if pool is None or supervisor is None or not supervisor.ready or supervisor.client is None:
                raise RunnerDown(self._down_message(pool))
            prepared = await self._prepared(ctx, pool, supervisor)
            if not prepared.request_phase:
                return None
            with plugin_runner_span(ctx, self.phase):
                message = await calls.build_request_call(ctx, prepared)
                answer = await supervisor.client.call_request(prepared, message, timeout=self.config.timeout)
            action = answer.WhichOneof("action")
            if action == "stop":
                reply = calls.stop_reply(answer.stop)
            elif action == "rewrite":
                calls.apply_rewrite(ctx, answer.rewrite)
                reply = None
            else:
                reply = None
        except GatewayError:
            raise  # the client's own fault (e.g. its body over the limit), not the runner's
        except Exception as exc:
            self._failed(ctx, pool, supervisor, exc)
            return None
        assert pool is not None
        pool.count_call(supervisor.name, self.phase)
        return reply


class ExtPluginPreReq(_ExtRequestPlugin):
    """Calls the runner before authentication (APISIX's ext-plugin-pre-req)."""

    name: ClassVar[str] = "ext-plugin-pre-req"
    priority: ClassVar[int] = 12000
    phase: ClassVar[str] = "pre-req"

    async def rewrite(self, ctx: RequestContext) -> Reply | None:
        return await self._run(ctx)


class ExtPluginPostReq(_ExtRequestPlugin):
    """Calls the runner after authentication, before the upstream: the consumer is known."""

    name: ClassVar[str] = "ext-plugin-post-req"
    priority: ClassVar[int] = -3000
    phase: ClassVar[str] = "post-req"

    async def access(self, ctx: RequestContext) -> Reply | None:
        return await self._run(ctx)


class ExtPluginPostResp(_ExtPlugin):
    """Calls the runner with the upstream's real response (never a second upstream request)."""

    name: ClassVar[str] = "ext-plugin-post-resp"
    priority: ClassVar[int] = -4000
    phase: ClassVar[str] = "post-resp"

    async def body_filter(self, ctx: RequestContext, response: ProxyResponse) -> None:
        if response.source != "upstream":
            return  # a refusal or a plugin's reply is the gateway's answer, not the upstream's
        pool, supervisor = self._runner(ctx)
        try:
            if pool is None or supervisor is None or not supervisor.ready or supervisor.client is None:
                raise RunnerDown(self._down_message(pool))
            prepared = await self._prepared(ctx, pool, supervisor)
            if not prepared.response_phase:
                return
            with plugin_runner_span(ctx, self.phase):
                message = calls.build_response_call(ctx, response, prepared)
                if prepared.needs_response_body:
                    message.body = await response.read_body()
                changes = await supervisor.client.call_response(prepared, message, timeout=self.config.timeout)
            await calls.apply_response_changes(response, changes)
        except Exception as exc:
            try:
                self._failed(ctx, pool, supervisor, exc)
            except GatewayError:
                await calls.drop_stream(response)  # the answer becomes the refusal: release the upstream body
                raise
            response.headers[DEGRADED_HEADER] = "degraded"
            return
        assert pool is not None
        pool.count_call(supervisor.name, self.phase)


class RunnerDown(RuntimeError):
    """No process to call: the runner is restarting, or none is configured here."""


def _classify(exc: BaseException) -> tuple[str, GatewayError]:
    """(failure kind for logs and metrics, the refusal the client gets without allow_degradation)."""
    if isinstance(exc, RunnerDown):
        return "unavailable", GatewayError.unavailable(f"external plugin unavailable: {exc}")
    if isinstance(exc, grpc.aio.AioRpcError):
        code = exc.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return "timeout", GatewayError.gateway_timeout("external plugin runner did not answer in time")
        if code == grpc.StatusCode.UNAVAILABLE:
            return "unavailable", GatewayError.unavailable("external plugin runner unavailable")
        if code == grpc.StatusCode.INTERNAL:
            return "plugin_error", GatewayError.unavailable(f"external plugin failed: {exc.details()}")
        return "error", GatewayError.unavailable(f"external plugin runner error: {code.name}")
    if isinstance(exc, TimeoutError):
        return "timeout", GatewayError.gateway_timeout("external plugin runner did not answer in time")
    if isinstance(exc, RunnerConfigError):
        return "config_refused", GatewayError.unavailable(f"external plugin config refused by the runner: {exc}")
    if isinstance(exc, calls.BadAnswer):
        return "bad_answer", GatewayError.unavailable(f"external plugin answered something unusable: {exc}")
    return "error", GatewayError.unavailable(f"external plugin call failed: {type(exc).__name__}")
