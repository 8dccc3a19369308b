"""Seeded random mutations into the codecs: TranscodeError is the only exception allowed to escape."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from transcoder.descriptors import DescriptorIndex, HttpBinding
from transcoder.errors import TranscodeError
from transcoder.field_mask import field_mask_from_body
from transcoder.query import apply_query_params, load_json
from transcoder.query_string import parse_query_string
from transcoder.request import RequestOptions, build_request
from transcoder.response import JsonOptions, render_response, render_status_details

SERVICE = "protogate.test.v1.KitchenService"
SEED = 20240607
CASES = 750  # per target; six targets

BODIES = [
    b'{"stringValue": "s", "int64Value": "5", "nested": {"name": "n", "child": {"count": 2}}}',
    b'{"repeatedNested": [{"name": "a"}], "int64ToNested": {"1": {"labels": ["x"]}}, "stringToColor": {"k": 1}}',
    b'{"timestamp": "2020-01-01T00:00:00Z", "duration": "1.5s", "fieldMask": "a.bC", "structValue": {"k": [1, null]}}',
    b'{"any": {"@type": "type.googleapis.com/protogate.test.v1.Nested", "name": "x"}, "value": [1, "a", {}]}',
    b'{"wrappedInt64": "3", "wrappedBytes": "aGk=", "bytesValue": "AAE=", "floatValue": "NaN", "choiceId": "7"}',
    b'[{"name": "a"}, {"name": "b", "count": 3}]',
    b'{"kitchen": {"color": 2}, "name": "x", "items": []}',
]
TOKENS = [
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b'"',
    b"\\",
    b"null",
    b"1e999",
    b"-0",
    b"\xff",
    b"\\ud800",
    b'"@type"',
    b"NaN",
]
KEYS = [
    "string_value", "int32Value", "int64_value", "uint32_value", "uint64Value", "double_value", "float_value",
    "bool_value", "bytes_value", "color", "colors", "nested.name", "nested.child.count", "nested.child.child.color",
    "repeated_int32", "repeated_nested", "repeated_nested.name", "string_to_int32[k]", "int64_to_nested[1]",
    "bool_to_string[true]", "string_to_timestamp[t]", "choice_name", "choice_id", "choice_nested.name", "timestamp",
    "duration", "field_mask", "struct_value", "value", "list_value", "any", "empty", "wrapped_int32", "wrapped_bytes",
    "optional_int32", "kitchen.int64_value", "name", "update_mask", "items", "nope", "", "[", "a[b", "nested.",
]  # fmt: skip
VALUES = [
    "", "0", "-1", "1.5", "NaN", "Infinity", "1e400", "9223372036854775808", "true", "T", "COLOR_RED", "3",
    "aGk=", "_-8", "2020-01-01T00:00:00Z", "1h2m3.5s", "-300ms", "a,bC,", "{}", "[1]", "null", '{"a":', "\udc80",
    "x" * 300, "µs", "0x10", " 1",
]  # fmt: skip


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        action = rng.randrange(5)
        at = rng.randint(0, len(out))
        if action == 0 and out:
            del out[min(at, len(out) - 1)]
        elif action == 1:
            out[at:at] = rng.choice(TOKENS)
        elif action == 2 and out:
            out[min(at, len(out) - 1)] = rng.randrange(256)
        elif action == 3:
            start = rng.randint(0, len(out))
            out[at:at] = out[start : start + rng.randint(1, 16)]
        else:
            del out[at:]
    return bytes(out)


def _value(rng: random.Random) -> str:
    if rng.random() < 0.2:
        return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randint(0, 8)))
    return rng.choice(VALUES)


def _query(rng: random.Random) -> list[tuple[str, str]]:
    return [(rng.choice(KEYS), _value(rng)) for _ in range(rng.randint(0, 5))]


def _run(function: Callable[..., object], *args: Any, **kwargs: Any) -> bool:
    """True if the call succeeded, False if it refused with TranscodeError; anything else fails the test."""
    try:
        function(*args, **kwargs)
    except TranscodeError as exc:
        assert exc.message and exc.http_status >= 400
        return False
    return True


@pytest.fixture
def bindings(kitchen_index: DescriptorIndex) -> list[HttpBinding]:
    return [
        b for m in (kitchen_index.methods[k] for k in kitchen_index.methods if k.startswith("/")) for b in m.bindings
    ]


def test_build_request_fuzz(bindings: list[HttpBinding]) -> None:
    rng = random.Random(SEED)
    started = time.perf_counter()
    accepted = 0
    for _ in range(CASES):
        binding = rng.choice(bindings)
        body = _mutate(rng, rng.choice(BODIES)) if rng.random() < 0.8 else rng.randbytes(rng.randint(0, 40))
        variables = {".".join(v.field_path): _value(rng) for v in binding.template.variables}
        options = RequestOptions(strict_query=rng.random() < 0.3, strict_body=rng.random() < 0.3)
        accepted += _run(build_request, binding, variables, _query(rng), body, options)
    assert 0 < accepted < CASES  # the mutations reach both outcomes
    assert time.perf_counter() - started < 5


def test_apply_query_params_fuzz(kitchen_index: DescriptorIndex) -> None:
    rng = random.Random(SEED + 1)
    kitchen = kitchen_index.message_class("protogate.test.v1.Kitchen")
    accepted = 0
    for _ in range(CASES):
        message: Message = kitchen()
        params = _query(rng)
        if rng.random() < 0.3:
            params.append(("".join(rng.choice("ab.[]_xyz") for _ in range(rng.randint(0, 8))), _value(rng)))
        skip = rng.sample(["nested", "string_value", "kitchen", "choice_name"], rng.randint(0, 2))
        accepted += _run(apply_query_params, message, params, skip=skip, strict=rng.random() < 0.5)
    assert 0 < accepted < CASES


def test_render_response_fuzz(kitchen_index: DescriptorIndex) -> None:
    rng = random.Random(SEED + 2)
    methods = [m for key, m in kitchen_index.methods.items() if key.startswith("/")]
    seeds = []
    create = kitchen_index.method(f"{SERVICE}.CreateKitchen").bindings[0]
    for body in BODIES[:5]:
        seeds.append(build_request(create, {}, [], body).SerializeToString())
    accepted = 0
    for _ in range(CASES):
        method = rng.choice(methods)
        data = _mutate(rng, rng.choice(seeds)) if rng.random() < 0.7 else rng.randbytes(rng.randint(0, 64))
        fields = [""] + [f.name for f in method.output_descriptor.fields]
        options = JsonOptions(
            use_proto_names=rng.random() < 0.5, emit_unpopulated=rng.random() < 0.5, enums_as_ints=rng.random() < 0.5
        )
        accepted += _run(render_response, method, data, rng.choice(fields), options)
    assert 0 < accepted < CASES


def test_render_status_details_fuzz(kitchen_index: DescriptorIndex) -> None:
    rng = random.Random(SEED + 3)
    status = status_pb2.Status(code=3, message="bad")
    status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[{"field": "a", "description": "b"}]))
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason="r", metadata={"k": "v"}))
    status.details.add(type_url="type.googleapis.com/protogate.test.v1.Nested", value=b"\x0a\x01x")
    seed = status.SerializeToString()
    accepted = 0
    for _ in range(CASES):
        data = _mutate(rng, seed) if rng.random() < 0.7 else rng.randbytes(rng.randint(0, 64))
        pool = kitchen_index.pool if rng.random() < 0.5 else None
        accepted += _run(render_status_details, data, pool)
    assert 0 < accepted < CASES


def test_parse_query_string_fuzz() -> None:
    rng = random.Random(SEED + 4)
    seed = b"a=1&nested.name=x+y&m%5Bk%5D=%C3%A9&flag&tags=a,b"
    accepted = 0
    for _ in range(CASES):
        raw = _mutate(rng, seed).decode("latin-1") if rng.random() < 0.8 else rng.choice(TOKENS).decode("latin-1")
        accepted += _run(parse_query_string, raw)
    assert 0 < accepted < CASES


def test_field_mask_from_body_fuzz(kitchen_index: DescriptorIndex) -> None:
    rng = random.Random(SEED + 5)
    kitchen = kitchen_index.message_class("protogate.test.v1.Kitchen").DESCRIPTOR
    accepted = 0
    for _ in range(CASES):
        try:
            document = load_json(_mutate(rng, rng.choice(BODIES)), "body")
        except TranscodeError:
            continue  # the body parser refuses these before any mask is inferred
        accepted += _run(field_mask_from_body, kitchen, document)
    assert accepted > 0
