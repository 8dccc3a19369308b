"""plugin_runner.wire: hand-made batch entries parse as the generated CallBatch / ResultBatch messages."""

from __future__ import annotations

import random

import grpc
from google.protobuf.internal.encoder import _VarintBytes

from plugin_runner import wire
from plugin_runner.proto import runner_pb2 as pb


def test_varint_matches_protobuf() -> None:
    rng = random.Random(7)
    values = [*range(300), 0x3FFF, 0x4000, 0x1FFFFF, 0x200000, 2**32, 2**63 - 1, 2**64 - 1]
    values += [rng.randrange(2**64) for _ in range(1000)]
    for value in values:
        assert wire.varint(value) == _VarintBytes(value), value


def test_call_entries_join_into_a_call_batch() -> None:
    request = pb.HTTPReqCallRequest(token="t", method="GET", path="/a", headers=[pb.Header(name="h", value="v")])
    response = pb.HTTPRespCallRequest(token="t", status=200, body=b"x" * 20000)  # a length over two varint bytes
    data = b"".join(
        [
            wire.call_entry(1, 300, wire.REQUEST, request.SerializeToString()),
            wire.call_entry(2**40, 0, wire.RESPONSE, response.SerializeToString()),
            wire.call_entry(3, 1, wire.REQUEST, b""),  # an empty request message is still a request
        ]
    )
    batch = pb.CallBatch.FromString(data)
    assert [(c.id, c.timeout_ms, c.WhichOneof("call")) for c in batch.calls] == [
        (1, 300, "http_req"),
        (2**40, 0, "http_resp"),
        (3, 1, "http_req"),
    ]
    assert batch.calls[0].http_req == request and batch.calls[1].http_resp == response


def test_result_entries_join_into_a_result_batch() -> None:
    answer = pb.HTTPReqCallResponse(stop=pb.Stop(status=401, body=b"no"))
    changes = pb.HTTPRespCallResponse(status=201)
    data = b"".join(
        [
            wire.result_entry(9, wire.REQUEST, answer.SerializeToString()),
            wire.error_entry(7, grpc.StatusCode.FAILED_PRECONDITION.value[0], "TOKEN_UNKNOWN: token 't'"),
            wire.result_entry(8, wire.RESPONSE, changes.SerializeToString()),
        ]
    )
    results = pb.ResultBatch.FromString(data).results
    assert [(r.id, r.WhichOneof("result")) for r in results] == [(9, "http_req"), (7, "error"), (8, "http_resp")]
    assert results[0].http_req == answer and results[2].http_resp == changes
    assert (results[1].error.code, results[1].error.message) == (9, "TOKEN_UNKNOWN: token 't'")
