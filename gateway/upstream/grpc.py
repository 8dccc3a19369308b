"""gRPC upstreams: one long-lived grpc.aio channel per node, raw-bytes calls of every kind."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from gateway import __version__
from gateway.config.models import Upstream
from gateway.tls import ClientTls, client_tls_of
from gateway.upstream.node_state import NodeSet

if TYPE_CHECKING:
    from collections.abc import Collection

    from gateway.context import RequestContext
_CHANNEL_OPTIONS: tuple[tuple[str, object], ...] = (
    ("grpc.primary_user_agent", f"protogate/{__version__}"),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # Retries are the gateway's decision (per route policy), not the channel's.
    ("grpc.enable_retries", 0),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # A node back after an outage takes traffic within a second, not after grpc's 120 s backoff ceiling.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    # A fixed per-stream window instead of a BDP-grown one (which reached ~5 MB per stream on loopback): a
    # streamed answer that the client reads slowly holds at most about this much before the upstream waits.
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 256 * 1024),
)


@dataclass
class GrpcNode:
    address: str
    channel: grpc.aio.Channel
    # Multicallables are cheap but not free; keep one per method path for the channel's lifetime.
    calls: dict[str, grpc.aio.UnaryUnaryMultiCallable]
    # The streaming kinds, by (kind, method path).
    stream_calls: dict[tuple[str, str], Any] = field(default_factory=dict)

    def unary(self, grpc_path: str) -> grpc.aio.UnaryUnaryMultiCallable:
        call = self.calls.get(grpc_path)
        if call is None:
            # No serializers: bytes in, bytes out. Registered, as generated stubs are: cheaper per call.
            call = self.channel.unary_unary(grpc_path, _registered_method=True)
            self.calls[grpc_path] = call
        return call

    def unary_stream(self, grpc_path: str) -> grpc.aio.UnaryStreamMultiCallable:
        return self._stream_call("unary_stream", grpc_path)

    def stream_unary(self, grpc_path: str) -> grpc.aio.StreamUnaryMultiCallable:
        return self._stream_call("stream_unary", grpc_path)

    def stream_stream(self, grpc_path: str) -> grpc.aio.StreamStreamMultiCallable:
        return self._stream_call("stream_stream", grpc_path)

    def _stream_call(self, kind: str, grpc_path: str) -> Any:
        call = self.stream_calls.get((kind, grpc_path))
        if call is None:
            call = getattr(self.channel, kind)(grpc_path, _registered_method=True)
            self.stream_calls[(kind, grpc_path)] = call
        return call


class GrpcUpstream:
    """The nodes of one gRPC upstream; must be built inside the running event loop."""

    def __init__(self, upstream: Upstream, *, base_dir: Path = Path()) -> None:
        self.upstream = upstream
        # grpcs: read and checked at load already; read again here so a reload picks up renewed files.
        tls = client_tls_of(upstream.tls, base_dir) if upstream.scheme == "grpcs" else None
        self.nodes = [
            GrpcNode(address=f"{node.host}:{node.port}", channel=_channel(node.host, node.port, tls), calls={})
            for node in upstream.nodes
        ]
        # Balancing and health (shared with HTTP upstreams); node_set.states[i] is self.nodes[i].
        self.node_set = NodeSet(upstream, channels=[node.channel for node in self.nodes], tls=tls)

    @property
    def read_timeout(self) -> float:
        return self.upstream.timeout.read

    def pick(self, ctx: RequestContext | None = None, tried: Collection[int] = ()) -> GrpcNode:
        return self.nodes[self.node_set.pick(ctx, tried).index]

    async def close(self) -> None:
        await self.node_set.close()
        for node in self.nodes:
            await node.channel.close()


def _channel(host: str, port: int, tls: ClientTls | None) -> grpc.aio.Channel:
    if tls is None:
        return grpc.aio.insecure_channel(_target(host, port), options=_CHANNEL_OPTIONS)
    options = _CHANNEL_OPTIONS + tls.grpc_options()
    return grpc.aio.secure_channel(_target(host, port), tls.grpc_credentials(), options=options)


def _target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
