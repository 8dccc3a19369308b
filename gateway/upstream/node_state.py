"""NodeSet: one upstream's nodes with their health and load, and the balancer that picks among them.

Shared by the HTTP and the gRPC upstream clients: they ask `pick` for a node, `acquire` it for the
length of a call, `release` it with the latency and outcome, and report what passive checks count.
Health follows lua-resty-healthcheck (as APISIX): every node starts healthy; consecutive failures of
one kind (HTTP statuses, TCP errors, timeouts) past a threshold take it out, consecutive successes
bring it back. An unhealthy node gets no traffic unless every node is unhealthy: then all are tried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from gateway.config.models import ActiveCheck, Node, PassiveCheck, Upstream
from gateway.upstream.balancer import HashRing, LeastConnections, PeakEwma, WeightedRoundRobin

if TYPE_CHECKING:
    from gateway.context import RequestContext
    from gateway.plugins.variables import Template
    from gateway.tls import ClientTls

log = logging.getLogger("protogate.upstream.health")

FailureKind = Literal["http", "tcp", "timeout"]
Source = Literal["active", "passive"]


@dataclass
class NodeState:
    index: int
    node: Node
    healthy: bool = True
    successes: int = 0
    http_failures: int = 0
    tcp_failures: int = 0
    timeouts: int = 0
    active: int = 0  # calls in flight
    requests: int = 0  # calls started, for the status report
    failures: int = 0  # calls that failed (any kind), for the status report

    @property
    def address(self) -> str:
        host = f"[{self.node.host}]" if ":" in self.node.host else self.node.host
        return f"{host}:{self.node.port}"

    def _reset_failures(self) -> None:
        self.http_failures = self.tcp_failures = self.timeouts = 0


class NodeSet:
    """Must be built inside the running event loop when the upstream has active checks (they start here).

    `channels` (gRPC upstreams): each node's grpc.aio channel, which grpc health probes then go through.
    `tls` (https and grpcs upstreams): the client TLS of the upstream's calls, which active probes use too.
    """

    def __init__(
        self,
        upstream: Upstream,
        *,
        start_checks: bool = True,
        channels: Sequence[Any] | None = None,
        tls: ClientTls | None = None,
    ) -> None:
        self.upstream = upstream
        self.states = [NodeState(i, node) for i, node in enumerate(upstream.nodes)]
        weights = [node.weight for node in upstream.nodes]
        self._weighted = [i for i, w in enumerate(weights) if w > 0]
        self._position = {index: pos for pos, index in enumerate(self._weighted)}
        self._rr = WeightedRoundRobin([(i, weights[i]) for i in self._weighted])
        names = [state.address for state in self.states]
        self._ring = HashRing(weights, names) if upstream.type == "chash" else None
        self._least = LeastConnections(weights) if upstream.type == "least_conn" else None
        self._ewma = PeakEwma(weights) if upstream.type == "ewma" else None
        self._template: Template | None = None
        if upstream.type == "chash" and upstream.hash_on == "vars_combinations":
            from gateway.plugins.variables import Template

            self._template = Template.parse(upstream.key)
        checks = upstream.checks
        self.active_check: ActiveCheck | None = checks.active if checks is not None else None
        self.passive_check: PassiveCheck | None = checks.passive if checks is not None else None
        self.retries = upstream.retries if upstream.retries is not None else max(len(self._weighted) - 1, 0)
        # A one-node upstream has one answer whatever is excluded (every node out means all are tried).
        self._only = self.states[0] if len(self.states) == 1 and self._weighted else None
        self._checker = None
        if self.active_check is not None and start_checks:
            from gateway.upstream.health import ActiveChecker

            self._checker = ActiveChecker(self, self.active_check, channels, tls)
            self._checker.start()

    async def close(self) -> None:
        if self._checker is not None:
            await self._checker.stop()
            self._checker = None

    # -- picking ---------------------------------------------------------------------------------------------

    def pick(self, ctx: RequestContext | None = None, tried: Collection[int] = ()) -> NodeState:
        """The next node for this request; never one in `tried` while an untried one with a weight is left."""
        if self._only is not None:
            return self._only
        unhealthy = [s.index for s in self.states if not s.healthy]
        exclude: set[int] = {*unhealthy, *tried}
        if all(i in exclude for i in self._weighted):
            exclude = set(tried)  # every node is out: try them anyway (APISIX) rather than fail
            if all(i in exclude for i in self._weighted):
                exclude = set()
        return self.states[self._pick_index(ctx, exclude)]

    def _pick_index(self, ctx: RequestContext | None, exclude: set[int]) -> int:
        exclude |= {i for i, s in enumerate(self.states) if s.node.weight <= 0}
        if self._ring is not None and ctx is not None:
            return self._ring.lookup(self.hash_key(ctx), exclude)
        if self._least is not None:
            return self._least.pick(exclude)
        if self._ewma is not None:
            return self._ewma.pick(exclude)
        positions = {self._position[i] for i in exclude if i in self._position}
        return self._weighted[self._rr.pick_index(positions)]

    def hash_key(self, ctx: RequestContext) -> str:
        from gateway.plugins.variables import resolve_var

        upstream = self.upstream
        key: str | None
        if upstream.hash_on == "consumer":
            key = ctx.consumer.username if ctx.consumer is not None else None
        elif upstream.hash_on == "header":
            key = ctx.headers.get(upstream.key)
        elif upstream.hash_on == "cookie":
            key = ctx.request.cookies.get(upstream.key)
        elif self._template is not None:
            key = self._template.render(ctx)
        else:
            key = resolve_var(upstream.key, ctx)
        # APISIX falls back to the client's address when the key has no value.
        return key or ctx.client_ip

    # -- accounting ------------------------------------------------------------------------------------------

    def acquire(self, state: NodeState) -> float:
        """A call starts on `state`; returns the start time to give back to `release`."""
        state.active += 1
        state.requests += 1
        if self._least is not None:
            self._least.active[state.index] += 1
        elif self._ewma is not None:
            self._ewma.active[state.index] += 1
        return time.monotonic()

    def release(self, state: NodeState, started: float, ok: bool) -> None:
        state.active -= 1
        if not ok:
            state.failures += 1
        if self._least is not None:
            self._least.active[state.index] -= 1
        elif self._ewma is not None:
            self._ewma.active[state.index] -= 1
            self._ewma.observe(state.index, time.monotonic() - started)

    # -- passive checks --------------------------------------------------------------------------------------

    def report_status(self, state: NodeState, status: int) -> None:
        """An answer with this HTTP status came back from the node (a real request's)."""
        passive = self.passive_check
        if passive is None:
            return
        if status in passive.unhealthy.http_statuses:
            self.failure(state, "http", "passive")
        elif status in passive.healthy.http_statuses:
            self.success(state, "passive")

    def report_failure(self, state: NodeState, kind: FailureKind) -> None:
        """A real request failed: no connection ("tcp"), no answer in time ("timeout")."""
        if self.passive_check is not None:
            self.failure(state, kind, "passive")

    # -- health transitions (active probes and passive reports) ------------------------------------------------

    def success(self, state: NodeState, source: Source) -> None:
        state._reset_failures()
        if state.healthy:
            return
        needed = self._healthy_threshold(source)
        if needed <= 0:
            return
        state.successes += 1
        if state.successes >= needed:
            state.healthy = True
            state.successes = 0
            log.warning("upstream node %s is healthy again (%s checks)", state.address, source)

    def failure(self, state: NodeState, kind: FailureKind, source: Source) -> None:
        state.successes = 0
        if not state.healthy:
            return
        threshold = self._unhealthy_threshold(kind, source)
        if threshold <= 0:
            return
        count = {"http": state.http_failures, "tcp": state.tcp_failures, "timeout": state.timeouts}[kind] + 1
        if kind == "http":
            state.http_failures = count
        elif kind == "tcp":
            state.tcp_failures = count
        else:
            state.timeouts = count
        if count >= threshold:
            state.healthy = False
            state._reset_failures()
            log.warning("upstream node %s is unhealthy: %d %s failure(s) (%s)", state.address, count, kind, source)

    def _healthy_threshold(self, source: Source) -> int:
        if source == "active":
            return self.active_check.healthy.successes if self.active_check is not None else 0
        return self.passive_check.healthy.successes if self.passive_check is not None else 0

    def _unhealthy_threshold(self, kind: FailureKind, source: Source) -> int:
        checks = self.active_check if source == "active" else self.passive_check
        if checks is None:
            return 0
        unhealthy = checks.unhealthy
        if kind == "http":
            return unhealthy.http_failures
        if kind == "tcp":
            return unhealthy.tcp_failures
        return unhealthy.timeouts

    # -- reporting -------------------------------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, object]]:
        """Per node: address, weight, health, calls in flight and counts (for a status endpoint or metrics)."""
        return [
            {
                "node": s.address,
                "weight": s.node.weight,
                "healthy": s.healthy,
                "checked": self.active_check is not None,
                "active": s.active,
                "requests": s.requests,
                "failures": s.failures,
            }
            for s in self.states
        ]
