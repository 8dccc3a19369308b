"""Every web.AppKey of the gateway, in one place."""

from __future__ import annotations

from aiohttp import web

from gateway.config.loader import LoadedConfig
from gateway.reload import ConfigManager
from gateway.runtime import Runtime
from gateway.telemetry.hub import Telemetry
from gateway.tls_edge import TlsEdge

LOADED_CONFIG = web.AppKey("loaded_config", LoadedConfig)
RUNTIME = web.AppKey("runtime", Runtime)  # the runtime built at start-up; CONFIG_MANAGER.runtime follows reloads
CONFIG_MANAGER = web.AppKey("config_manager", ConfigManager)
# The non-resource sections of the config file as written (kept across reloads); absent: taken from LOADED_CONFIG.
CONFIG_SETTINGS = web.AppKey("config_settings", dict)
TELEMETRY = web.AppKey("telemetry", Telemetry)
TLS_EDGE = web.AppKey("tls_edge", TlsEdge)  # set when the gateway serves HTTPS: SNI contexts, mTLS checks, HSTS
