"""The Calls stream's batch entries, written by hand around messages serialised once. Pure: no I/O, no gRPC.

A CallBatch is a run of `calls` fields, a ResultBatch a run of `results` fields, so a batch is the concatenation
of its entries: each side serialises its request or answer message once and wraps it in a few header bytes, and
the writer joins the entries. Reading uses the generated ResultBatch/CallBatch parsers.
"""

from __future__ import annotations

from dataclasses import dataclass

from plugin_runner.proto import runner_pb2 as pb

__all__ = ["REQUEST", "RESPONSE", "CallKind", "call_entry", "error_entry", "result_entry", "varint"]

_LENGTH_DELIMITED = 2


def _tag(message: type[pb.CallBatch | pb.Call | pb.ResultBatch | pb.Result], field: str, wire_type: int) -> bytes:
    return varint(message.DESCRIPTOR.fields_by_name[field].number << 3 | wire_type)


def varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    if value < 0x80:
        return _ONE_BYTE[value]
    if value < 0x4000:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    if value < 0x200000:
        return bytes(((value & 0x7F) | 0x80, ((value >> 7) & 0x7F) | 0x80, value >> 14))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_ONE_BYTE = [bytes((n,)) for n in range(0x80)]


@dataclass(frozen=True)
class CallKind:
    """One kind of call: its field in Call and in Result (the same name), and the unary RPC it replaces."""

    field: str
    rpc: str
    call_tag: bytes
    result_tag: bytes


def _kind(field: str, rpc: str) -> CallKind:
    return CallKind(field, rpc, _tag(pb.Call, field, _LENGTH_DELIMITED), _tag(pb.Result, field, _LENGTH_DELIMITED))


REQUEST = _kind("http_req", "HTTPReqCall")
RESPONSE = _kind("http_resp", "HTTPRespCall")

_CALLS = _tag(pb.CallBatch, "calls", _LENGTH_DELIMITED)
_CALL_ID = _tag(pb.Call, "id", 0)
_TIMEOUT_MS = _tag(pb.Call, "timeout_ms", 0)
_RESULTS = _tag(pb.ResultBatch, "results", _LENGTH_DELIMITED)
_RESULT_ID = _tag(pb.Result, "id", 0)
_ERROR = _tag(pb.Result, "error", _LENGTH_DELIMITED)


def _entry(batch_tag: bytes, head: bytes, payload: bytes) -> bytes:
    return b"".join((batch_tag, varint(len(head) + len(payload)), head, payload))


def call_entry(call_id: int, timeout_ms: int, kind: CallKind, payload: bytes) -> bytes:
    """One CallBatch entry: a Call with `payload` (a serialised HTTPReqCallRequest/HTTPRespCallRequest)."""
    head = b"".join((_CALL_ID, varint(call_id), _TIMEOUT_MS, varint(timeout_ms), kind.call_tag, varint(len(payload))))
    return _entry(_CALLS, head, payload)


def result_entry(call_id: int, kind: CallKind, payload: bytes) -> bytes:
    """One ResultBatch entry: the answer `payload` (a serialised HTTPReqCallResponse/HTTPRespCallResponse)."""
    return _entry(_RESULTS, b"".join((_RESULT_ID, varint(call_id), kind.result_tag, varint(len(payload)))), payload)


def error_entry(call_id: int, code: int, message: str) -> bytes:
    """One ResultBatch entry: the call failed with gRPC status `code` (its number)."""
    payload = pb.CallError(code=code, message=message).SerializeToString()
    return _entry(_RESULTS, b"".join((_RESULT_ID, varint(call_id), _ERROR, varint(len(payload)))), payload)
