"""Plugins that exercise the runner's edges (failures, slowness, bodies and vars); loaded by file path."""

from __future__ import annotations

import asyncio
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from plugin_runner import Plugin, Request, Response


class Boom(Plugin):
    """Always raises."""

    name: ClassVar[str] = "boom"

    async def on_request(self, request: Request, config: dict[str, object]) -> None:
        raise RuntimeError("kaput")


class SlowConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = 5.0


class Slow(Plugin):
    """Sleeps before passing."""

    name: ClassVar[str] = "slow"
    Config = SlowConfig

    async def on_request(self, request: Request, config: SlowConfig) -> None:
        await asyncio.sleep(config.seconds)


class OwnTimeout(Plugin):
    """Gives up a slow step of its own with asyncio.timeout, then tags the request (it runs in a task of its own)."""

    name: ClassVar[str] = "own-timeout"

    async def on_request(self, request: Request, config: dict[str, object]) -> None:
        try:
            async with asyncio.timeout(0.05):
                await asyncio.sleep(5)
        except TimeoutError:
            request.set_header("x-own-timeout", "fired")


class EchoBody(Plugin):
    """Reports the body and vars it was given, and rewrites both bodies."""

    name: ClassVar[str] = "echo-body"
    needs_body: ClassVar[bool] = True
    vars: ClassVar[tuple[str, ...]] = ("remote_addr", "route_id")

    async def on_request(self, request: Request, config: dict[str, object]) -> None:
        request.set_header("x-body-present", str(request.body is not None).lower())
        request.set_header("x-remote-addr", request.vars.get("remote_addr", "-"))
        request.set_arg("seen", "1")
        if request.body is not None:
            request.set_body(request.body.upper())

    async def on_response(self, response: Response, config: dict[str, object]) -> None:
        response.set_status(201)
        response.add_header("set-cookie", "a=1")
        response.add_header("set-cookie", "b=2")
        response.set_body(b"[" + (response.body or b"") + b"]")
