"""The built-in plugins, registered explicitly by name."""

from __future__ import annotations

from gateway.plugins.api_breaker import ApiBreaker
from gateway.plugins.base import Plugin
from gateway.plugins.basic_auth import BasicAuth
from gateway.plugins.consumer_restriction import ConsumerRestriction
from gateway.plugins.cors import Cors
from gateway.plugins.ext_plugin import ExtPluginPostReq, ExtPluginPostResp, ExtPluginPreReq
from gateway.plugins.fault_injection import FaultInjection
from gateway.plugins.grpc_transcode import GrpcTranscode
from gateway.plugins.http_logger import HttpLogger
from gateway.plugins.ip_restriction import IpRestriction
from gateway.plugins.jwt_auth import JwtAuth
from gateway.plugins.key_auth import KeyAuth
from gateway.plugins.limit_conn import LimitConn
from gateway.plugins.limit_count import LimitCount
from gateway.plugins.limit_req import LimitReq
from gateway.plugins.mtls_auth import MtlsAuth
from gateway.plugins.opentelemetry import OpenTelemetry
from gateway.plugins.prometheus import Prometheus
from gateway.plugins.proxy_cache import ProxyCache
from gateway.plugins.proxy_rewrite import ProxyRewrite
from gateway.plugins.real_ip import RealIp
from gateway.plugins.redirect import Redirect
from gateway.plugins.request_id import RequestId
from gateway.plugins.response_rewrite import ResponseRewrite
from gateway.plugins.traffic_split import TrafficSplit

BUILTIN_PLUGINS: tuple[type[Plugin], ...] = (
    GrpcTranscode,
    KeyAuth,
    MtlsAuth,
    IpRestriction,
    LimitConn,
    LimitCount,
    LimitReq,
    RealIp,
    BasicAuth,
    JwtAuth,
    ConsumerRestriction,
    ProxyRewrite,
    ResponseRewrite,
    Cors,
    RequestId,
    Redirect,
    FaultInjection,
    ProxyCache,
    ApiBreaker,
    TrafficSplit,
    OpenTelemetry,
    Prometheus,
    HttpLogger,
    ExtPluginPreReq,
    ExtPluginPostReq,
    ExtPluginPostResp,
)
REGISTRY: dict[str, type[Plugin]] = {plugin.name: plugin for plugin in BUILTIN_PLUGINS}

__all__ = ["BUILTIN_PLUGINS", "REGISTRY", "Plugin"]
