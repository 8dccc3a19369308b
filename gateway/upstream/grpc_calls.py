"""Unary gRPC calls with the upstream's balancing, retries and passive health checks.

A failed attempt is retried on another node only for UNAVAILABLE, and only when repeating it cannot
repeat its effect: the call never reached a server (the channel could not connect), the caller says
the request is idempotent, or the upstream allows it (`retry_non_idempotent`). A repeatable call is
also retried after CANCELLED, which a server that is shutting down answers to calls it did not run. The payload is in
memory, so any node can be sent it again. One deadline covers every attempt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from gateway.telemetry import start_upstream_call
from gateway.tls import tls_failure
from transcoder.status import Code, http_status_from_code

if TYPE_CHECKING:
    from gateway.context import RequestContext
    from gateway.upstream.grpc import GrpcUpstream
    from gateway.upstream.node_state import NodeSet, NodeState

Metadata = Sequence[tuple[str, str | bytes]]

log = logging.getLogger("protogate.upstream.grpc")

# What grpc-core says when a channel could not connect: the request never left the gateway.
_NOT_SENT = ("failed to connect to all addresses", "failed to connect to remote host", "connections to all backends")


def never_sent(err: grpc.aio.AioRpcError) -> bool:
    if err.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    details = (err.details() or "").lower()
    return any(phrase in details for phrase in _NOT_SENT)


async def call_with_retries(
    upstream: GrpcUpstream,
    grpc_path: str,
    payload: bytes,
    *,
    ctx: RequestContext | None = None,
    timeout: float | None = None,
    metadata: Metadata | Callable[[], Metadata] | None = None,
    idempotent: bool = False,
) -> tuple[bytes, Any, Any]:
    """(reply, initial metadata, trailing metadata) of a unary call; raises the last AioRpcError.

    With `ctx`, each attempt is reported to telemetry (its own client span) and chash reads its key from it.
    `metadata` may be a function: it is then called for each attempt, once the attempt's span has started.
    """
    nodes = upstream.node_set
    retry_timeout = upstream.upstream.retry_timeout
    repeatable = idempotent or upstream.upstream.retry_non_idempotent
    first_try = time.monotonic()
    deadline = None if timeout is None else first_try + timeout
    tried: list[int] = []
    while True:
        state = nodes.pick(ctx, tried)
        tried.append(state.index)
        node = upstream.nodes[state.index]
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        started = nodes.acquire(state)
        upstream_call = start_upstream_call(ctx, "grpc", grpc_path, node.address) if ctx is not None else None
        # Built after the attempt's span started, so a trace context in it names that span.
        sent_metadata = metadata() if callable(metadata) else metadata
        call = node.unary(grpc_path)(payload, timeout=remaining, metadata=sent_metadata)
        try:
            reply = await call
            initial = await call.initial_metadata()
            trailing = await call.trailing_metadata()
        except grpc.aio.AioRpcError as err:
            if upstream_call is not None:
                upstream_call.grpc_status(err.code(), err)
            nodes.release(state, started, ok=http_status_from_code(Code(err.code().value[0])) < 500)
            sent = not never_sent(err)
            _report(nodes, state, err, sent)
            now = time.monotonic()
            retry_left = (
                len(tried) <= nodes.retries
                and (retry_timeout <= 0 or now - first_try < retry_timeout)
                and (deadline is None or now < deadline)
            )
            if retry_left and _retryable(err.code(), repeatable, sent):
                continue
            raise
        except BaseException as exc:
            if upstream_call is not None and isinstance(exc, Exception):
                upstream_call.failed(exc)
            nodes.release(state, started, ok=False)
            raise
        if upstream_call is not None:
            upstream_call.grpc_status(grpc.StatusCode.OK)
        nodes.release(state, started, ok=True)
        nodes.report_status(state, 200)
        return reply, initial, trailing


def _retryable(code: grpc.StatusCode, repeatable: bool, sent: bool) -> bool:
    if code == grpc.StatusCode.UNAVAILABLE:
        return repeatable or not sent
    # A server shutting down cancels the calls it has not run; we never cancel a call we still await.
    return code == grpc.StatusCode.CANCELLED and repeatable


def _report(nodes: NodeSet, state: NodeState, err: grpc.aio.AioRpcError, sent: bool) -> None:
    code = err.code()
    if not sent:
        if tls_failure(err.details() or ""):  # a certificate problem is a config problem: say which
            log.warning("upstream node %s: TLS handshake failed: %s", state.address, err.details())
        nodes.report_failure(state, "tcp")
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        nodes.report_failure(state, "timeout")
    else:
        nodes.report_status(state, http_status_from_code(Code(code.value[0])))
