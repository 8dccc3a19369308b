"""Runner plugins for the ext-plugin integration tests (Python SDK): who served, who is the consumer, slowness.

Load with `python -m plugin_runner --plugins tests/servers/ext_plugins/probes.py`.
"""

from __future__ import annotations

import asyncio
import os
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from plugin_runner import Plugin, Request, Response


class ReportPid(Plugin):
    """Adds the runner's pid (and the consumer it was told about) to the request and the response."""

    name: ClassVar[str] = "report-pid"

    async def on_request(self, request: Request, config: dict[str, object]) -> None:
        request.set_header("x-runner-pid", str(os.getpid()))
        request.set_header("x-runner-consumer", request.consumer_name or "-")
        request.set_header("x-runner-traceparent", request.traceparent or "-")

    async def on_response(self, response: Response, config: dict[str, object]) -> None:
        response.set_header("x-runner-pid", str(os.getpid()))


class Announce(Plugin):
    """Prints `ext-plugin call for <path>` (the gateway logs the runner's output): the runner has the request."""

    name: ClassVar[str] = "announce"

    async def on_request(self, request: Request, config: dict[str, object]) -> None:
        print(f"ext-plugin call for {request.path}", flush=True)


class SleepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(1.0, ge=0)


class Sleep(Plugin):
    """Sleeps before passing: slower than the gateway's per-call timeout."""

    name: ClassVar[str] = "sleep"
    Config = SleepConfig

    async def on_request(self, request: Request, config: SleepConfig) -> None:
        await asyncio.sleep(config.seconds)


class WrapBody(Plugin):
    """Replaces the upstream's response body (needs it) and its status; adds a header."""

    name: ClassVar[str] = "wrap-body"
    needs_body: ClassVar[bool] = True

    async def on_response(self, response: Response, config: dict[str, object]) -> None:
        response.set_status(202)
        response.set_header("x-wrapped", "yes")
        response.set_header("content-type", "text/plain")
        response.set_body(b"wrapped:" + (response.body or b""))


class SetArgsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    args: dict[str, str] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list)


class SetArgs(Plugin):
    """Sets and removes query arguments."""

    name: ClassVar[str] = "set-args"
    Config = SetArgsConfig

    async def on_request(self, request: Request, config: SetArgsConfig) -> None:
        for name in config.remove:
            request.remove_arg(name)
        for name, value in config.args.items():
            request.set_arg(name, value)
