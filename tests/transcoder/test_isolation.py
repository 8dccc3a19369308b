"""The transcoder stays a pure library: no web framework, no gRPC runtime."""

from __future__ import annotations

import subprocess
import sys

import transcoder


def test_importing_transcoder_pulls_in_no_aiohttp_and_no_grpc() -> None:
    code = "import transcoder, sys; leaked = {'aiohttp', 'grpc'} & set(sys.modules); assert not leaked, leaked"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_exported_names_exist_and_are_sorted() -> None:
    assert transcoder.__all__ == sorted(transcoder.__all__)
    for name in transcoder.__all__:
        assert hasattr(transcoder, name), name
