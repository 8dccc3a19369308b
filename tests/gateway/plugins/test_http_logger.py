"""http-logger: config refusals, then batches posted to a real local HTTP server, retries and drops."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from transform_support import answer, issues, loads, make_ctx

from gateway.plugins.http_logger import BatchSender, custom_entry

AT = "routes[0].plugins.http-logger"


def test_config_refuses_bad_input_with_paths() -> None:
    assert issues("http-logger", {})[0].startswith(f"{AT}.uri: ")
    assert issues("http-logger", {"uri": "not a url"})[0].startswith(f"{AT}.uri: ")
    assert issues("http-logger", {"uri": "http://x", "batch_max_size": 0})[0].startswith(f"{AT}.batch_max_size: ")
    assert issues("http-logger", {"uri": "http://x", "concat_method": "csv"})[0].startswith(f"{AT}.concat_method: ")


def test_defaults_are_apisix_s() -> None:
    config = loads("http-logger", {"uri": "http://127.0.0.1/logs"})
    assert (config.batch_max_size, config.inactive_timeout, config.buffer_duration) == (1000, 5.0, 60.0)
    assert (config.max_retry_count, config.retry_delay, config.timeout, config.concat_method) == (0, 1.0, 3.0, "json")


async def receiver(aiohttp_server: Any, statuses: list[int]) -> tuple[str, list[bytes]]:
    bodies: list[bytes] = []

    async def take(request: web.Request) -> web.Response:
        status = statuses.pop(0) if statuses else 200
        if status == 200:
            bodies.append(await request.read())
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/logs", take)
    server = await aiohttp_server(app)
    return str(server.make_url("/logs")), bodies


async def until(check: Any) -> None:
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never happened")


async def test_a_full_batch_goes_at_once_and_the_rest_after_the_inactive_timeout(aiohttp_server: Any) -> None:
    url, bodies = await receiver(aiohttp_server, [])
    sender = BatchSender(loads("http-logger", {"uri": url, "batch_max_size": 2, "inactive_timeout": 0.05}))
    for n in range(3):
        sender.add({"n": n})
    await until(lambda: len(bodies) == 2)
    assert [json.loads(body) for body in bodies] == [[{"n": 0}, {"n": 1}], [{"n": 2}]]
    await sender.close()


async def test_a_failed_batch_is_retried_then_dropped_and_counted(aiohttp_server: Any) -> None:
    url, bodies = await receiver(aiohttp_server, [500, 500, 500])
    drops: list[int] = []
    config = {"uri": url, "inactive_timeout": 0.01, "max_retry_count": 1, "retry_delay": 0.01}
    sender = BatchSender(loads("http-logger", {**config, "concat_method": "new_line"}), drops.append)
    sender.add({"n": 0})
    await until(lambda: sender.dropped == 1)  # two tries, both 500
    sender.add({"n": 1})
    sender.add({"n": 2})
    await until(lambda: bodies)  # one more 500, then the retry goes through
    assert bodies == [b'{"n": 1}\n{"n": 2}'] and drops == [1]
    await sender.close()


async def test_entries_beyond_max_pending_are_dropped_and_close_flushes_the_rest(aiohttp_server: Any) -> None:
    url, bodies = await receiver(aiohttp_server, [])
    sender = BatchSender(loads("http-logger", {"uri": url, "max_pending_entries": 2, "inactive_timeout": 60}))
    for n in range(3):
        sender.add({"n": n})
    await sender.close()
    assert sender.dropped == 1
    assert [json.loads(body) for body in bodies] == [[{"n": 0}, {"n": 1}]]


def test_apisix_fields_load() -> None:
    config = loads("http-logger", {"uri": "https://logs.example/in", "name": "my logger", "ssl_verify": False})
    assert (config.name, config.ssl_verify) == ("my logger", False)
    assert loads("http-logger", {"uri": "https://logs.example/in"}).ssl_verify is True  # APISIX's default is false
    deep = {"a": {"b": {"c": {"d": {"e": {"f": "$host"}}}}}}
    assert "nests deeper" in issues("http-logger", {"uri": "http://x", "log_format": deep})[0]


async def test_batches_of_one_are_sent_as_one_object_and_3xx_is_success(aiohttp_server: Any) -> None:
    url, bodies = await receiver(aiohttp_server, [302])
    sender = BatchSender(loads("http-logger", {"uri": url, "batch_max_size": 1}))
    sender.add({"n": 0})
    await until(lambda: sender.sent == 1)  # a redirect answer is not a failure (APISIX: >= 400 is)
    sender.add({"n": 1})
    await until(lambda: bodies)
    assert json.loads(bodies[0]) == {"n": 1}
    await sender.close()


def test_log_format_builds_the_entry_from_variables() -> None:
    ctx = make_ctx("/books?id=7", headers=[("Host", "shop.example"), ("User-Agent", "curl")])
    measured = {"latency_ms": 1500.0, "upstream_status": "", "time": "2024-01-01T00:00:00.000Z"}
    log_format = {
        "host": "$host",
        "ua": "$http_user_agent",
        "id": "$arg_id",
        "took": "$request_time",
        "up": "$upstream_status",
        "nope": "$not_a_var",
        "fixed": "text",
        "n": 3,
        "nested": {"status": "$status", "when": "$time_iso8601"},
    }
    entry = custom_entry(log_format, ctx, answer(201), measured)
    assert entry == {
        "host": "shop.example",
        "ua": "curl",
        "id": "7",
        "took": 1.5,
        "up": None,
        "nope": None,
        "fixed": "text",
        "n": 3,
        "nested": {"status": "201", "when": "2024-01-01T00:00:00.000Z"},
    }
