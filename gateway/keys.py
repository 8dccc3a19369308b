"""Every web.AppKey of the gateway, in one place."""

from __future__ import annotations

from aiohttp import web

from gateway.config.loader import LoadedConfig
from gateway.runtime import Runtime
from gateway.telemetry.hub import Telemetry

LOADED_CONFIG = web.AppKey("loaded_config", LoadedConfig)
RUNTIME = web.AppKey("runtime", Runtime)
TELEMETRY = web.AppKey("telemetry", Telemetry)
