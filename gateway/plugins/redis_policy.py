"""The limiters' `redis` and `redis-cluster` policies: APISIX's fields, one shared client per Redis, outages."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

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

log = logging.getLogger("protogate.plugins.redis_policy")

T = TypeVar("T")
KEY_PREFIX = "protogate"
# How often a node says, while Redis is away, what a limiter does meanwhile (per limiter name and Redis).
DEGRADED_LOG_INTERVAL = 10.0
# Calls (so connections) one gateway process has open to one Redis at once. redis-py refuses a call past
# its pool's size rather than wait, which would read as "Redis is down": calls queue for a slot instead.
MAX_CONNECTIONS = 100


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
    """Where the state lives and how to reach it; limiters that agree on it share one client."""

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
            "max_connections": MAX_CONNECTIONS,
        }
        if self.cluster:
            nodes = [ClusterNode(host, port) for host, port in self.nodes]
            return RedisCluster(startup_nodes=nodes, **options)
        host, port = self.nodes[0]
        return Redis(host=host, port=port, db=self.database, **options)


class RedisUnavailable(Exception):
    """Redis did not answer within redis_timeout, refused the call, or failed moments ago.

    `sent` is False when the call was never sent (the fast failure right after another one), so it
    certainly changed nothing; when True, Redis may or may not have carried it out.
    """

    def __init__(self, reason: str, *, sent: bool) -> None:
        super().__init__(reason)
        self.sent = sent


class RedisConnection:
    """One client (with its pool) and its loaded scripts, for one target on one event loop."""

    def __init__(self, target: RedisTarget) -> None:
        self.target = target
        self.client = target.connect()
        self.slots = asyncio.Semaphore(MAX_CONNECTIONS)  # a call waits here, within its timeout, for a connection
        self._scripts: dict[str, AsyncScript] = {}
        # Set when a call failed: until then, calls fail at once instead of each waiting out the timeout.
        self.down_until = 0.0
        self.last_logged: dict[str, float] = {}  # limiter name -> when it last said Redis was away

    def script(self, source: str) -> AsyncScript:
        script = self._scripts.get(source)
        if script is None:
            # EVALSHA, loading the script on NOSCRIPT (a restarted or failed-over Redis).
            script = self._scripts[source] = self.client.register_script(source)
        return script


# Clients are made inside the running loop (redis-py's are bound to it) and shared by target, so
# reloading routes does not open new pools; close_connections() ends them (at shutdown, in tests).
_CONNECTIONS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[RedisTarget, RedisConnection]] = (
    weakref.WeakKeyDictionary()
)


def _connection(target: RedisTarget) -> RedisConnection:
    by_target = _CONNECTIONS.setdefault(asyncio.get_running_loop(), {})
    connection = by_target.get(target)
    if connection is None:
        connection = by_target[target] = RedisConnection(target)
    return connection


async def close_connections() -> None:
    """Close every Redis client this event loop opened for limiters."""
    by_target = _CONNECTIONS.pop(asyncio.get_running_loop(), {})
    for connection in by_target.values():
        await connection.client.aclose()


class RedisPolicy:
    """One limiter's way to its Redis: keys under one prefix, every call bounded by redis_timeout.

    A call that fails raises RedisUnavailable; `degrade` then lets the request through (None) under
    allow_degradation, or refuses it with 503. For redis_timeout after a failure (at most a second),
    calls to that Redis fail at once, so a dead Redis costs no wait per request. Each limiter says
    so in the log at most every DEGRADED_LOG_INTERVAL seconds, not once per request.
    """

    def __init__(self, limiter: str, config: RedisLimitConfig) -> None:
        self.limiter = limiter
        self.config = config
        self.target = RedisTarget.from_config(config)

    def key(self, *parts: str) -> str:
        return ":".join((KEY_PREFIX, self.limiter, *parts))

    async def call(self, command: Callable[[RedisConnection], Awaitable[T]], *, then: str | None = None) -> T:
        """`command`'s answer; RedisUnavailable when Redis cannot give it within redis_timeout.

        `then` says in the log what the caller does about a failure (default: what degrade does).
        """
        connection = _connection(self.target)
        now = time.monotonic()
        if now < connection.down_until:
            exc = RedisUnavailable("redis failed moments ago", sent=False)
            self._log(connection, exc, then)
            raise exc
        try:
            return await asyncio.wait_for(self._bounded(connection, command), self.target.timeout)
        except (RedisError, OSError, TimeoutError) as cause:
            connection.down_until = time.monotonic() + min(self.target.timeout, 1.0)
            exc = RedisUnavailable(str(cause) or type(cause).__name__, sent=True)
            self._log(connection, exc, then)
            raise exc from cause

    @staticmethod
    async def _bounded(connection: RedisConnection, command: Callable[[RedisConnection], Awaitable[T]]) -> T:
        async with connection.slots:
            return await command(connection)

    async def run_script(self, source: str, keys: Sequence[str], args: Sequence[str | int | float]) -> Any:
        """Run a Lua script (atomic on the server) through `call`."""
        return await self.call(lambda connection: connection.script(source)(keys=list(keys), args=list(args)))

    def degrade(self, exc: RedisUnavailable) -> None:
        """What a request gets when Redis is away: passed unlimited (allow_degradation), or refused with 503."""
        if not self.config.allow_degradation:
            raise GatewayError(503, Code.UNAVAILABLE, "rate limit counters unavailable") from exc

    def _log(self, connection: RedisConnection, exc: RedisUnavailable, then: str | None) -> None:
        now = time.monotonic()
        if now - connection.last_logged.get(self.limiter, -DEGRADED_LOG_INTERVAL) < DEGRADED_LOG_INTERVAL:
            return
        connection.last_logged[self.limiter] = now
        where = ", ".join(f"{host}:{port}" for host, port in self.target.nodes)
        if self.target.cluster and self.config.redis_cluster_name:
            where = f"cluster {self.config.redis_cluster_name} ({where})"
        if then is None:
            then = "letting requests through uncounted" if self.config.allow_degradation else "refusing with 503"
        log.warning("%s: redis at %s unavailable (%s); %s", self.limiter, where, exc, then)
