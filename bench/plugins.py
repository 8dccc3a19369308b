"""Benchmark the plugin pipeline: requests/s and gateway CPU per request with plugins vs. without.

Starts the real HTTP upstream (tests/servers/http_upstream.py) and one protogate gateway in front of it
with two routes to the same upstream path (``/echo``):

- ``GET /echo``                 no plugins;
- ``GET /with-plugins/echo``    key-auth (a consumer's key in ``apikey``), limit-count (a count so large that
                                nothing is refused, quota headers on) and proxy-rewrite (regex_uri back to
                                ``/echo`` and one header set).

The two are measured in the same run, alternating (ABBA order per pair of rounds), with the same number
of requests in flight. The load comes from ``wrk`` when it is on PATH, else from an aiohttp client loop
(the same approach, and the same helpers, as bench/transcode.py). It prints the ratio plugins/no-plugins
of requests/s and the gateway's CPU microseconds per request for each route.

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
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

# bench/ is not a package: its sibling bench/transcode.py is found through sys.path.
from transcode import (
    BIN,
    REPO,
    RPC_TIMEOUT,
    Child,
    Children,
    CpuSnapshot,
    LoadResult,
    Sample,
    closed_loop,
    parse_wrk,
    start_gateway,
)

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


async def run_wrk(url: str, headers: dict[str, str], concurrency: int, seconds: int, threads: int) -> LoadResult:
    args = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds}s", "--latency", f"--timeout={RPC_TIMEOUT:g}s"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    proc = await asyncio.create_subprocess_exec(
        *args, url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=seconds + 30)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}:\n{text}")
    return parse_wrk(text)


class Bench:
    def __init__(self, args: argparse.Namespace, gateway: Child, url: str, upstream: Child, session: Any) -> None:
        self.args = args
        self.gateway = gateway
        self.url = url
        self.upstream = upstream
        self.session = session
        self.use_wrk = args.load_generator == "wrk" or (
            args.load_generator == "auto" and shutil.which("wrk") is not None
        )

    def http_call(self, target: Target) -> Callable[[], Awaitable[None]]:
        session, url, headers = self.session, self.url + target.path, target.headers

        async def call() -> None:
            async with session.get(url, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")

        return call

    async def load(self, target: Target, seconds: int) -> LoadResult:
        if self.use_wrk:
            return await run_wrk(
                self.url + target.path, target.headers, self.args.concurrency, seconds, self.args.wrk_threads
            )
        return await closed_loop(self.http_call(target), self.args.concurrency, seconds)

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
        return Sample(
            "echo",
            target.label,
            round_no,
            result.requests,
            result.errors,
            result.seconds,
            result.p50_ms,
            result.p99_ms,
            cores,
        )


def _ms(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _cpu_us(sample: Sample, party: str = "gateway") -> float:
    return sample.cores[party] * sample.seconds / sample.requests * 1e6 if sample.requests else 0.0


SAMPLE_HEADER = (
    f"{'target':<11} {'round':>5} {'rps':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'gw CPU us/req':>14}"
    f"   cores used: {'gateway':>7} {'upstream':>8} {'client':>7} {'other':>7}"
)


def format_sample(s: Sample) -> str:
    c = s.cores
    return (
        f"{s.target:<11} {s.round:>5} {s.rps:>9.0f} {_ms(s.p50_ms):>8} {_ms(s.p99_ms):>8} {s.errors:>6}"
        f" {_cpu_us(s):>14.0f}               {c.get('gateway', 0):>7.2f} {c.get('upstream', 0):>8.2f}"
        f" {c.get('client', 0):>7.2f} {c.get('other', 0):>7.2f}"
    )


def summary(samples: Sequence[Sample]) -> str:
    plain = sorted((s for s in samples if s.target == TARGETS[0].label), key=lambda s: s.round)
    plugins = sorted((s for s in samples if s.target == TARGETS[1].label), key=lambda s: s.round)
    lines = [f"{'target':<11} {'mean rps':>9} {'p50/p99 ms':>14} {'gateway CPU us/req':>19}"]
    for label, group in ((TARGETS[0].label, plain), (TARGETS[1].label, plugins)):
        latency = f"{_ms(_mean([s.p50_ms for s in group if s.p50_ms is not None]))}/"
        latency += _ms(_mean([s.p99_ms for s in group if s.p99_ms is not None]))
        rps, cpu = _mean([s.rps for s in group]), _mean([_cpu_us(s) for s in group])
        lines.append(f"{label:<11} {rps:>9.0f} {latency:>14} {cpu:>19.0f}")
    plain_rps, plugins_rps = _mean([s.rps for s in plain]), _mean([s.rps for s in plugins])
    plain_cpu, plugins_cpu = _mean([_cpu_us(s) for s in plain]), _mean([_cpu_us(s) for s in plugins])
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
        if bench.use_wrk and shutil.which("wrk") is None:
            raise RuntimeError("--load-generator wrk, but wrk is not on PATH")
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
    parser.add_argument("--seconds", type=int, default=5, help="measured seconds per run (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured seconds before each run (default 1)")
    parser.add_argument("--rounds", type=int, default=4, help="runs per route, alternating (default 4)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    parser.add_argument("--load-generator", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if min(args.seconds, args.rounds, args.concurrency, args.wrk_threads) < 1 or args.warmup < 0:
        print("--seconds, --rounds, --concurrency and --wrk-threads must be at least 1", file=sys.stderr)
        return 2
    started = time.monotonic()
    children = Children()
    try:
        with tempfile.TemporaryDirectory(prefix="protogate-bench-plugins-") as tmp:
            import yaml

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
            print(f"\ndone in {time.monotonic() - started:.0f}s")
            if any(s.errors or not s.requests for s in samples):
                print("some runs had errors or no requests; the numbers are not trustworthy", file=sys.stderr)
                return 1
            return 0
    except KeyboardInterrupt:
        print("\ninterrupted; stopping the upstream and gateway", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"bench/plugins.py: error: {exc}", file=sys.stderr)
        return 1
    finally:
        children.stop_all()


if __name__ == "__main__":
    sys.exit(main())
