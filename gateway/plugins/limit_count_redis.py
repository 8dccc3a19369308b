"""limit-count's `redis` and `redis-cluster` policies: fixed windows counted in Redis, shared by every node."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import Field, ValidationInfo, field_validator
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from gateway.errors import GatewayError
from gateway.plugins.limit_keys import LimitConfig
from transcoder.status import Code

log = logging.getLogger("protogate.plugins.limit_count")

# One request in a fixed window: the first hit opens the window (sets its expiry), every hit counts.
# A key found without an expiry (never left by this script) gets one too, so no counter lives forever.
# Returns {used, milliseconds until the window closes}; one script call is atomic on the server.
WINDOW_SCRIPT = """
local used = redis.call('INCRBY', KEYS[1], 1)
local ttl = redis.call('PTTL', KEYS[1])
if used == 1 or ttl < 0 then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
    ttl = tonumber(ARGV[1])
end
return {used, ttl}
"""
KEY_PREFIX = "protogate:limit-count"
# How often a node says, while Redis is away, what it does with requests meanwhile.
DEGRADED_LOG_INTERVAL = 10.0


def _cluster_node(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"cluster node {value!r} is not HOST:PORT")
    return value


class RedisLimitConfig(LimitConfig):
    """APISIX's redis fields for a limiter (names, defaults and units: redis_timeout is milliseconds)."""

    policies: ClassVar[frozenset[str]] = frozenset({"local", "redis", "redis-cluster"})

    # validate_default: the "required with this policy" check must run when the field is left out.
    redis_host: str | None = Field(default=None, min_length=1, max_length=253, validate_default=True)
    redis_port: int = Field(default=6379, ge=1, le=65535)
    redis_username: str | None = Field(default=None, min_length=1)
    redis_password: str | None = Field(default=None, min_length=1)
    redis_database: int = Field(default=0, ge=0)
    redis_timeout: int = Field(default=1000, ge=1, le=60_000)  # milliseconds, for each call to Redis
    redis_ssl: bool = False
    redis_ssl_verify: bool = False
    redis_cluster_nodes: list[str] | None = Field(default=None, validate_default=True)
    redis_cluster_name: str | None = Field(default=None, min_length=1, max_length=256, validate_default=True)
    redis_cluster_ssl: bool = False
    redis_cluster_ssl_verify: bool = False

    @field_validator("redis_host")
    @classmethod
    def _host_for_redis(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("policy") == "redis":
            raise ValueError("policy 'redis' needs redis_host")
        return value

    @field_validator("redis_cluster_nodes")
    @classmethod
    def _nodes_for_cluster(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is None:
            if info.data.get("policy") == "redis-cluster":
                raise ValueError("policy 'redis-cluster' needs redis_cluster_nodes (HOST:PORT, at least one)")
            return value
        if not value:
            raise ValueError("redis_cluster_nodes needs at least one HOST:PORT")
        return [_cluster_node(node) for node in value]

    @field_validator("redis_cluster_name")
    @classmethod
    def _name_for_cluster(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("policy") == "redis-cluster":
            raise ValueError("policy 'redis-cluster' needs redis_cluster_name")
        return value


@dataclass(frozen=True)
class RedisTarget:
    """Where the counters live and how to reach them; plugins that agree on it share one client."""

    cluster: bool
    nodes: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    database: int
    timeout: float  # seconds
    ssl: bool
    ssl_verify: bool

    @classmethod
    def from_config(cls, config: RedisLimitConfig) -> RedisTarget:
        cluster = config.policy == "redis-cluster"
        if cluster:
            split = (node.rpartition(":") for node in config.redis_cluster_nodes or ())
            nodes = tuple((host.strip("[]"), int(port)) for host, _, port in split)
        else:
            assert config.redis_host is not None
            nodes = ((config.redis_host, config.redis_port),)
        return cls(
            cluster=cluster,
            nodes=nodes,
            username=config.redis_username,
            password=config.redis_password,
            database=0 if cluster else config.redis_database,
            timeout=config.redis_timeout / 1000,
            ssl=config.redis_cluster_ssl if cluster else config.redis_ssl,
            ssl_verify=config.redis_cluster_ssl_verify if cluster else config.redis_ssl_verify,
        )

    def connect(self) -> Redis | RedisCluster:
        options: dict[str, Any] = {
            "username": self.username,
            "password": self.password,
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            # The caller bounds every call by the timeout and decides what an error means: no retries here.
            "retry": Retry(NoBackoff(), 0),
            "ssl": self.ssl,
            "ssl_cert_reqs": "required" if self.ssl_verify else "none",
            "ssl_check_hostname": self.ssl_verify,
        }
        if self.cluster:
            nodes = [ClusterNode(host, port) for host, port in self.nodes]
            return RedisCluster(startup_nodes=nodes, **options)
        host, port = self.nodes[0]
        return Redis(host=host, port=port, db=self.database, **options)


class _Connection:
    """One client (with its pool) and the window script, for one target on one event loop."""

    def __init__(self, target: RedisTarget) -> None:
        self.target = target
        self.client = target.connect()
        self.script: AsyncScript = self.client.register_script(WINDOW_SCRIPT)
        # Set when a call failed: until then, calls fail at once instead of each waiting out the timeout.
        self.down_until = 0.0
        self.last_degraded_log = -DEGRADED_LOG_INTERVAL


# Clients are made inside the running loop (redis-py's are bound to it) and shared by target, so
# reloading routes does not open new pools; close_connections() ends them (at shutdown, in tests).
_CONNECTIONS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[RedisTarget, _Connection]] = (
    weakref.WeakKeyDictionary()
)


def _connection(target: RedisTarget) -> _Connection:
    by_target = _CONNECTIONS.setdefault(asyncio.get_running_loop(), {})
    connection = by_target.get(target)
    if connection is None:
        connection = by_target[target] = _Connection(target)
    return connection


async def close_connections() -> None:
    """Close every Redis client this event loop opened for limiters."""
    by_target = _CONNECTIONS.pop(asyncio.get_running_loop(), {})
    for connection in by_target.values():
        await connection.client.aclose()


class RedisWindowCounter:
    """Fixed windows per key in Redis: N gateway nodes together allow exactly `count` per window.

    When Redis cannot answer within redis_timeout, `take` lets the request through uncounted
    (returns None) under allow_degradation, and otherwise refuses it with 503. For redis_timeout
    after a failure (at most a second), calls fail at once, so a dead Redis costs no wait per request.
    """

    def __init__(self, config: RedisLimitConfig, count: int, window: int, scope: str | None) -> None:
        self.config = config
        self.target = RedisTarget.from_config(config)
        self.count = count
        self.window_ms = window * 1000
        self.scope = scope  # the group's name, shared by every route naming it; None: the route's own

    def redis_key(self, route_id: str, key: str) -> str:
        scope = f"group:{self.scope}:{self.count}:{self.window_ms}" if self.scope else f"route:{route_id}"
        return f"{KEY_PREFIX}:{scope}:{key}"

    async def take(self, route_id: str, key: str) -> tuple[bool, int, float] | None:
        """(allowed, remaining, seconds until the window resets), or None: passed uncounted (degraded)."""
        connection = _connection(self.target)
        now = time.monotonic()
        try:
            if now < connection.down_until:
                raise ConnectionError("redis failed moments ago")
            used, ttl_ms = await asyncio.wait_for(
                connection.script(keys=[self.redis_key(route_id, key)], args=[self.window_ms]), self.target.timeout
            )
        except (RedisError, OSError, TimeoutError) as exc:
            if now >= connection.down_until:
                connection.down_until = time.monotonic() + min(self.target.timeout, 1.0)
            return self._unavailable(connection, exc)
        used, reset = int(used), max(int(ttl_ms), 0) / 1000
        return used <= self.count, max(self.count - used, 0), reset

    def _unavailable(self, connection: _Connection, exc: BaseException) -> None:
        now = time.monotonic()
        if now - connection.last_degraded_log >= DEGRADED_LOG_INTERVAL:
            connection.last_degraded_log = now
            where = ", ".join(f"{host}:{port}" for host, port in self.target.nodes)
            if self.config.redis_cluster_name and self.target.cluster:
                where = f"cluster {self.config.redis_cluster_name} ({where})"
            then = "letting requests through uncounted" if self.config.allow_degradation else "refusing with 503"
            log.warning("limit-count: redis at %s unavailable (%s); %s", where, str(exc) or type(exc).__name__, then)
        if not self.config.allow_degradation:
            raise GatewayError(503, Code.UNAVAILABLE, "rate limit counters unavailable")
        return None
