"""Shared fixtures: descriptor sets compiled from the test protos."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# tests/ is not a package: put it on sys.path so test modules can `from protoc import compile_descriptor_set`.
TESTS_DIR = Path(__file__).parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from protoc import compile_descriptor_set  # noqa: E402

from transcoder.descriptors import DescriptorIndex  # noqa: E402

TEST_PROTOS = TESTS_DIR / "protos"


@pytest.fixture(scope="session")
def kitchen_descriptor_set() -> bytes:
    return compile_descriptor_set([TEST_PROTOS / "protogate/test/v1/kitchen.proto"], [TEST_PROTOS])


@pytest.fixture(scope="session")
def kitchen_index(kitchen_descriptor_set: bytes) -> DescriptorIndex:
    return DescriptorIndex.from_bytes(kitchen_descriptor_set)
