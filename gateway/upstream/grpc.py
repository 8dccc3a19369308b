"""gRPC upstreams: one long-lived grpc.aio channel per node, raw-bytes unary calls."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from gateway import __version__
from gateway.config.models import Upstream
from gateway.upstream.balancer import WeightedRoundRobin

_CHANNEL_OPTIONS: tuple[tuple[str, object], ...] = (
    ("grpc.primary_user_agent", f"protogate/{__version__}"),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # Retries are the gateway's decision (per route policy), not the channel's.
    ("grpc.enable_retries", 0),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
)


@dataclass
class GrpcNode:
    address: str
    channel: grpc.aio.Channel
    # Multicallables are cheap but not free; keep one per method path for the channel's lifetime.
    calls: dict[str, grpc.aio.UnaryUnaryMultiCallable]

    def unary(self, grpc_path: str) -> grpc.aio.UnaryUnaryMultiCallable:
        call = self.calls.get(grpc_path)
        if call is None:
            # No serializers: bytes in, bytes out. Registered, as generated stubs are: cheaper per call.
            call = self.channel.unary_unary(grpc_path, _registered_method=True)
            self.calls[grpc_path] = call
        return call


class GrpcUpstream:
    """The nodes of one gRPC upstream; must be built inside the running event loop."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.nodes = [
            GrpcNode(
                address=f"{node.host}:{node.port}",
                channel=grpc.aio.insecure_channel(_target(node.host, node.port), options=_CHANNEL_OPTIONS),
                calls={},
            )
            for node in upstream.nodes
        ]
        weights = [(n, spec.weight) for n, spec in zip(self.nodes, upstream.nodes, strict=True)]
        self._balancer = WeightedRoundRobin(weights)

    @property
    def read_timeout(self) -> float:
        return self.upstream.timeout.read

    def pick(self) -> GrpcNode:
        return self._balancer.pick()

    async def close(self) -> None:
        for node in self.nodes:
            await node.channel.close()


def _target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
