"""Benchmark the plugin pipeline: requests/s and gateway CPU per request with plugins vs. without.

Starts the real HTTP upstream (tests/servers/http_upstream.py) and one protogate gateway in front of it
with two routes to the same upstream path (``/echo``):

- ``GET /echo``                 no plugins;
- ``GET /with-plugins/echo``    key-auth (a consumer's key in ``apikey``), limit-count (a count so large that
                                nothing is refused, quota headers on) and proxy-rewrite (regex_uri back to
                                ``/echo`` and one header set).

The two are measured in the same run, alternating (ABBA order per pair of rounds), with the same number
of requests in flight. The load comes from ``wrk`` when it is on PATH, else from an aiohttp client loop
(as in bench/transcode.py; both use bench/common.py). It prints the ratio plugins/no-plugins of requests/s
and the gateway's CPU microseconds per request for each route.

    .venv/bin/python bench/plugins.py [--seconds 5] [--rounds 4] [--concurrency 32] [--load-generator python]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

# bench/ is not a package: its sibling bench/common.py is found through sys.path.
from common import (
    BIN,
    REPO,
    Child,
    Children,
    CpuSnapshot,
    LoadResult,
    Sample,
    add_load_arguments,
    closed_loop,
    cpu_us,
    failed_runs,
    http_call,
    load_argument_problem,
    mean,
    ms,
    run_columns,
    run_header,
    run_script,
    run_wrk,
    start_gateway,
    wrk_wanted,
)

# bench/ext_plugin.py imports these (and run_wrk) from this module under these names.
_cpu_us, _mean, _ms = cpu_us, mean, ms

UPSTREAM_SCRIPT = REPO / "tests" / "servers" / "http_upstream.py"
API_KEY = "bench-key"
PLAIN_PATH = "/echo"
PLUGINS_PATH = "/with-plugins/echo"
_UPSTREAM_READY = re.compile(r"http upstream listening on .*:(\d+)\s*$")


def gateway_config(upstream_port: int) -> dict[str, Any]:
    return {
        "upstreams": [
            {
                "id": "echo",
                "scheme": "http",
                "nodes": {f"127.0.0.1:{upstream_port}": 1},
                "timeout": {"connect": 2, "read": 10},
            }
        ],
        "consumers": [{"username": "bench", "plugins": {"key-auth": {"key": API_KEY}}}],
        "routes": [
            {"id": "plain", "uri": PLAIN_PATH, "upstream_id": "echo"},
            {
                "id": "plugins",
                "uri": "/with-plugins/*",
                "upstream_id": "echo",
                "plugins": {
                    "key-auth": {},
                    "limit-count": {"count": 1_000_000_000, "time_window": 3600, "key": "consumer_name"},
                    "proxy-rewrite": {"regex_uri": ["^/with-plugins/(.*)", "/$1"], "headers": {"set": {"X-Via": "gw"}}},
                },
            },
        ],
    }


@dataclass(frozen=True)
class Target:
    label: str
    path: str
    headers: dict[str, str]


TARGETS = (Target("no plugins", PLAIN_PATH, {}), Target("plugins", PLUGINS_PATH, {"apikey": API_KEY}))


class Bench:
    def __init__(self, args: argparse.Namespace, gateway: Child, url: str, upstream: Child, session: Any) -> None:
        self.args = args
        self.gateway = gateway
        self.url = url
        self.upstream = upstream
        self.session = session
        self.use_wrk = wrk_wanted(args)

    async def load(self, target: Target, seconds: int) -> LoadResult:
        url = self.url + target.path
        if self.use_wrk:
            return await run_wrk(url, target.headers, self.args.concurrency, seconds, self.args.wrk_threads)
        return await closed_loop(http_call(self.session, url, target.headers), self.args.concurrency, seconds)

    async def check(self) -> None:
        """Both routes answer as meant (and the plugins are really on), or the run stops before measuring."""
        for target in TARGETS:
            async with self.session.get(self.url + target.path, headers=target.headers) as response:
                body = await response.json(content_type=None)
                if response.status != 200 or body.get("path") != PLAIN_PATH:
                    raise RuntimeError(f"GET {target.path}: HTTP {response.status}: {body}\n{self.gateway.printed()}")
            if target.headers:
                sent = {name.lower(): value for name, value in body["headers"]}
                if sent.get("x-consumer-username") != "bench" or "X-RateLimit-Limit" not in response.headers:
                    raise RuntimeError(f"GET {target.path}: plugins did not run: {body}")
                async with self.session.get(self.url + target.path) as response:
                    if response.status != 401:
                        raise RuntimeError(f"GET {target.path} without a key: HTTP {response.status}, not 401")

    async def measure(self, target: Target, round_no: int) -> Sample:
        if self.args.warmup > 0:
            await self.load(target, self.args.warmup)
        pids = {"gateway": self.gateway.pid, "upstream": self.upstream.pid}
        before = CpuSnapshot.take(pids)
        result = await self.load(target, self.args.seconds)
        cores = CpuSnapshot.take(pids).cores_since(before)
        return Sample.of("echo", target.label, round_no, result, cores)


PARTIES = ("gateway", "upstream")
SAMPLE_HEADER = f"{'target':<11} {run_header(PARTIES)}"


def format_sample(s: Sample) -> str:
    return f"{s.target:<11} {run_columns(s, PARTIES)}"


def summary(samples: Sequence[Sample]) -> str:
    plain = sorted((s for s in samples if s.target == TARGETS[0].label), key=lambda s: s.round)
    plugins = sorted((s for s in samples if s.target == TARGETS[1].label), key=lambda s: s.round)
    lines = [f"{'target':<11} {'mean rps':>9} {'p50/p99 ms':>14} {'gateway CPU us/req':>19}"]
    for label, group in ((TARGETS[0].label, plain), (TARGETS[1].label, plugins)):
        latency = f"{ms(mean([s.p50_ms for s in group if s.p50_ms is not None]))}/"
        latency += ms(mean([s.p99_ms for s in group if s.p99_ms is not None]))
        rps, cpu = mean([s.rps for s in group]), mean([cpu_us(s) for s in group])
        lines.append(f"{label:<11} {rps:>9.0f} {latency:>14} {cpu:>19.0f}")
    plain_rps, plugins_rps = mean([s.rps for s in plain]), mean([s.rps for s in plugins])
    plain_cpu, plugins_cpu = mean([cpu_us(s) for s in plain]), mean([cpu_us(s) for s in plugins])
    per_round = [p.rps / n.rps for n, p in zip(plain, plugins, strict=True) if n.rps]
    lines.append("")
    lines.append(f"ratio plugins/no-plugins (rps): {plugins_rps / plain_rps if plain_rps else 0:.3f}")
    lines.append(f"  per round: {', '.join(f'{r:.3f}' for r in per_round)}")
    lines.append(
        f"gateway CPU per request: {plain_cpu:.0f} us without plugins, {plugins_cpu:.0f} us with"
        f" ({plugins_cpu - plain_cpu:+.0f} us, x{plugins_cpu / plain_cpu if plain_cpu else 0:.3f})"
    )
    return "\n".join(lines)


async def run(bench: Bench, on_sample: Callable[[Sample], None]) -> list[Sample]:
    await bench.check()
    print(SAMPLE_HEADER, flush=True)
    samples: list[Sample] = []
    for round_no in range(1, bench.args.rounds + 1):
        # ABBA: neither target always runs first (a warming machine or a drifting neighbour favours one).
        order = TARGETS if round_no % 2 else TARGETS[::-1]
        for target in order:
            sample = await bench.measure(target, round_no)
            samples.append(sample)
            on_sample(sample)
    return samples


async def main_async(args: argparse.Namespace, gateway: Child, url: str, upstream: Child) -> list[Sample]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        bench = Bench(args, gateway, url, upstream, session)
        generator = f"wrk ({shutil.which('wrk')}, {args.wrk_threads} thread)" if bench.use_wrk else "aiohttp loop"
        print(f"upstream : pid {upstream.pid}")
        print(f"gateway  : {url} (pid {gateway.pid})")
        print(f"load     : {generator}")
        print(
            f"settings : concurrency {args.concurrency}, {args.seconds}s per run after {args.warmup}s warm-up,"
            f" {args.rounds} rounds, {os.cpu_count()} CPUs"
        )
        print()
        return await run(bench, lambda sample: print(format_sample(sample), flush=True))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_arguments(parser, 4, "runs per route, alternating")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    problem = load_argument_problem(args)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    return run_script("bench/plugins.py", "the upstream and gateway", lambda children: _run(args, children))


def _run(args: argparse.Namespace, children: Children) -> int:
    import yaml

    with tempfile.TemporaryDirectory(prefix="protogate-bench-plugins-") as tmp:
        upstream = children.start("upstream", [str(BIN / "python"), str(UPSTREAM_SCRIPT), "--port", "0"])
        upstream_port = int(upstream.wait_for(_UPSTREAM_READY).group(1))
        config_path = Path(tmp) / "gateway.yaml"
        config_path.write_text(yaml.safe_dump(gateway_config(upstream_port), sort_keys=False))
        gateway, url = start_gateway(children, config_path)
        samples = asyncio.run(main_async(args, gateway, url, upstream))
    print()
    print(summary(samples))
    print(
        "\nnotes: the load generator and the upstream share this machine with the gateway; 'gw CPU us/req'"
        "\n       (the gateway process's own CPU) is the steadier number to compare across runs."
    )
    return failed_runs(samples)


if __name__ == "__main__":
    sys.exit(main())
