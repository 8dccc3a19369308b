"""Runners in the app's life: started before the runtime, every ext-plugin config prepared (refused configs stop the
start-up with their field paths), released and stopped when the app stops."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Hashable, Iterator
from typing import Any

import grpc
from aiohttp import web

from gateway.config.loader import ConfigError, ConfigIssue, LoadedConfig
from gateway.config.models import Config
from gateway.plugins.ext_plugin import ExtPluginConfig, prepare_key
from gateway.runner.pool import RUNNER_POOL, RunnerPool
from plugin_runner.client import RunnerConfigError

log = logging.getLogger("protogate.runner")

EXT_PLUGINS = ("ext-plugin-pre-req", "ext-plugin-post-req", "ext-plugin-post-resp")
# A runner's path inside PrepareConf: `plugins[0](hmac-auth).config.secret`, `plugins[1].name`, ...
_RUNNER_PATH = re.compile(r"^plugins\[(\d+)\](?:\([^)]*\))?(?:\.(name|config_json|config_struct|config))?(.*)$")


def config_path(at: str, runner_path: str) -> str:
    """A runner's field path as a path in the gateway's config: `<at>.conf[0].value.secret`."""
    match = _RUNNER_PATH.match(runner_path)
    if match is None:
        return f"{at}.conf" + (f" ({runner_path})" if runner_path else "")
    index, part, rest = match.groups()
    field = "name" if part == "name" else "value"
    return f"{at}.conf[{index}].{field}{rest if field == 'value' else ''}"


def ext_plugin_sites(config: Config) -> Iterator[tuple[str, str | None, str, ExtPluginConfig]]:
    """Every ext-plugin config in the document: (path, route id when a route's own, plugin name, config)."""
    kinds: list[tuple[str, list[Any]]] = [
        ("routes", config.routes),
        ("services", config.services),
        ("plugin_configs", config.plugin_configs),
        ("global_rules", config.global_rules),
        ("consumer_groups", config.consumer_groups),
        ("consumers", config.consumers),
    ]
    for kind, items in kinds:
        for index, item in enumerate(items):
            for name in EXT_PLUGINS:
                raw = item.plugins.get(name)
                if name not in item.plugins:
                    continue
                values = {k: v for k, v in (raw or {}).items() if k != "_meta"}
                route_id = item.id if kind == "routes" else None
                yield f"{kind}[{index}].plugins.{name}", route_id, name, ExtPluginConfig.model_validate(values)


async def prepare_all(pool: RunnerPool, config: Config) -> tuple[list[ConfigIssue], list[tuple[str, Hashable]]]:
    """PrepareConf every ext-plugin config: the issues found, and the (runner, key) of each token kept.

    A route's own chain stays prepared under the key its requests use; chains defined elsewhere (services,
    global rules, ...) are released once checked and prepared per route on first use.
    """
    issues: list[ConfigIssue] = []
    kept: list[tuple[str, Hashable]] = []
    for at, route_id, name, ext in ext_plugin_sites(config):
        supervisor = pool.get(ext.runner)
        if supervisor is None or supervisor.client is None:
            continue  # the loader already reported the runner name
        version = ext.version()
        key: Hashable = prepare_key(route_id, name, version) if route_id is not None else ("check", at)
        try:
            await supervisor.client.prepare(
                key, ext.specs(), route_id=route_id or at, conf_version=version, timeout=supervisor.config.start_timeout
            )
        except RunnerConfigError as exc:
            if exc.violations:
                issues.extend(ConfigIssue(config_path(at, path), message) for path, message in exc.violations)
            else:
                issues.append(ConfigIssue(f"{at}.conf", f"runner {supervisor.name!r} refused it: {exc}"))
            continue
        except grpc.aio.AioRpcError as exc:
            message = f"runner {supervisor.name!r} could not prepare it: {exc.code().name} {exc.details()}"
            issues.append(ConfigIssue(f"{at}.conf", message))
            continue
        if route_id is None:
            await supervisor.client.release(key)
        else:
            kept.append((supervisor.name, key))
    return issues, kept


async def check_with_runners(loaded: LoadedConfig) -> list[ConfigIssue]:
    """Start the runners, prepare every ext-plugin config, stop them: what `protogate validate --with-runners` does."""
    pool = RunnerPool(loaded.config.plugin_runners, base_dir=loaded.base_dir)
    await pool.start()
    try:
        issues, _ = await prepare_all(pool, loaded.config)
    finally:
        await pool.close()
    return issues


async def runner_pool_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: runners up and every ext-plugin config accepted before the runtime serves a request."""
    from gateway.keys import LOADED_CONFIG, TELEMETRY

    loaded = app[LOADED_CONFIG]
    telemetry = app.get(TELEMETRY)
    pool = RunnerPool(
        loaded.config.plugin_runners,
        base_dir=loaded.base_dir,
        metrics=telemetry.metrics if telemetry is not None else None,
    )
    kept: list[tuple[str, Hashable]] = []
    if pool:
        await pool.start()  # stops what it started if one fails
        try:
            issues, kept = await prepare_all(pool, loaded.config)
        except BaseException:
            await pool.close()
            raise
        if issues:
            await pool.close()
            raise ConfigError(issues, "plugin runners")
    app[RUNNER_POOL] = pool
    yield
    # The runtime closed before us (cleanup runs in reverse): its tokens are released, then the runners stop.
    pool.prepared_keys.update(kept)
    await pool.release_all()
    await pool.close()
