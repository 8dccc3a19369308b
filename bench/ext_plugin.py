"""Benchmark an external plugin: requests/s and added latency through a route with one pass-through runner plugin.

Starts the real HTTP upstream (tests/servers/http_upstream.py) and one protogate gateway with one Python plugin
runner (`python -m plugin_runner`, examples/plugins/python/rewrite.py) and two routes to the same upstream:

- ``GET /echo/plain``   no plugins;
- ``GET /echo/ext``     ext-plugin-pre-req with path-rewrite and an empty config: one HTTPReqCall round trip per
                        request to the runner, which answers "pass".

Both are measured in the same run, alternating (ABBA per pair of rounds), with the same number of requests in
flight; load from ``wrk`` when on PATH, else an aiohttp client loop (helpers from bench/transcode.py and
bench/plugins.py). Prints the ratio ext/plain of requests/s, the added latency per request (p50, p99) and the CPU
per request of the gateway and of the runner.

    .venv/bin/python bench/ext_plugin.py [--seconds 5] [--rounds 4] [--concurrency 32] [--load-generator python]
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

# bench/ is not a package: its siblings are found through sys.path.
from plugins import _cpu_us, _mean, _ms, run_wrk
from transcode import BIN, REPO, Child, Children, CpuSnapshot, LoadResult, Sample, closed_loop, start_gateway

UPSTREAM_SCRIPT = REPO / "tests" / "servers" / "http_upstream.py"
RUNNER_PLUGIN = REPO / "examples" / "plugins" / "python" / "rewrite.py"
TARGETS = (("plain", "/echo/plain"), ("ext-plugin", "/echo/ext"))
_UPSTREAM_READY = re.compile(r"http upstream listening on .*:(\d+)\s*$")


def gateway_config(upstream_port: int, timeout: float) -> dict[str, Any]:
    runner_cmd = [str(BIN / "python"), "-m", "plugin_runner", "--log-level", "WARNING", "--plugins", str(RUNNER_PLUGIN)]
    return {
        "plugin_runners": [{"name": "py", "cmd": runner_cmd}],
        "upstreams": [
            {"id": "echo", "nodes": {f"127.0.0.1:{upstream_port}": 1}, "timeout": {"connect": 2, "read": 10}}
        ],
        "routes": [
            {"id": "plain", "uri": TARGETS[0][1], "upstream_id": "echo"},
            {
                "id": "ext",
                "uri": TARGETS[1][1],
                "upstream_id": "echo",
                "plugins": {
                    "ext-plugin-pre-req": {"conf": [{"name": "path-rewrite", "value": {}}], "timeout": timeout}
                },
            },
        ],
    }


class Bench:
    def __init__(self, args: argparse.Namespace, url: str, pids: dict[str, int], session: Any) -> None:
        self.args = args
        self.url = url
        self.pids = pids
        self.session = session
        self.use_wrk = args.load_generator == "wrk" or (args.load_generator == "auto" and shutil.which("wrk"))

    async def load(self, path: str, seconds: int) -> LoadResult:
        if self.use_wrk:
            return await run_wrk(self.url + path, {}, self.args.concurrency, seconds, self.args.wrk_threads)
        session, url = self.session, self.url + path

        async def call() -> None:
            async with session.get(url) as response:
                await response.read()
                if response.status != 200 or "X-Protogate-Ext-Plugin" in response.headers:
                    raise RuntimeError(f"HTTP {response.status}")

        return await closed_loop(call, self.args.concurrency, seconds)

    async def check(self) -> None:
        for _, path in TARGETS:
            async with self.session.get(self.url + path) as response:
                body = await response.json(content_type=None)
                if response.status != 200 or body.get("path") != path or "X-Protogate-Ext-Plugin" in response.headers:
                    raise RuntimeError(f"GET {path}: HTTP {response.status} {dict(response.headers)}: {body}")

    async def measure(self, label: str, path: str, round_no: int) -> Sample:
        if self.args.warmup > 0:
            await self.load(path, self.args.warmup)
        before = CpuSnapshot.take(self.pids)
        result = await self.load(path, self.args.seconds)
        cores = CpuSnapshot.take(self.pids).cores_since(before)
        return Sample(
            "echo", label, round_no, result.requests, result.errors, result.seconds, result.p50_ms, result.p99_ms, cores
        )


def format_sample(s: Sample) -> str:
    return (
        f"{s.target:<11} {s.round:>5} {s.rps:>9.0f} {_ms(s.p50_ms):>8} {_ms(s.p99_ms):>8} {s.errors:>6}"
        f" {_cpu_us(s):>14.0f} {_cpu_us(s, 'runner'):>15.0f}"
    )


def summary(samples: Sequence[Sample]) -> str:
    groups = {label: sorted((s for s in samples if s.target == label), key=lambda s: s.round) for label, _ in TARGETS}
    plain, ext = groups["plain"], groups["ext-plugin"]
    lines = [f"{'target':<11} {'mean rps':>9} {'p50/p99 ms':>14} {'gw CPU us/req':>14} {'runner us/req':>14}"]
    for label, group in groups.items():
        latency = f"{_ms(_mean([s.p50_ms for s in group if s.p50_ms is not None]))}/"
        latency += _ms(_mean([s.p99_ms for s in group if s.p99_ms is not None]))
        runner = _mean([_cpu_us(s, "runner") for s in group])
        lines.append(
            f"{label:<11} {_mean([s.rps for s in group]):>9.0f} {latency:>14}"
            f" {_mean([_cpu_us(s) for s in group]):>14.0f} {runner:>14.0f}"
        )
    plain_rps, ext_rps = _mean([s.rps for s in plain]), _mean([s.rps for s in ext])
    per_round = [e.rps / p.rps for p, e in zip(plain, ext, strict=True) if p.rps]
    added_p50 = _mean([e.p50_ms - p.p50_ms for p, e in zip(plain, ext, strict=True) if e.p50_ms and p.p50_ms])
    added_p99 = _mean([e.p99_ms - p.p99_ms for p, e in zip(plain, ext, strict=True) if e.p99_ms and p.p99_ms])
    lines += [
        "",
        f"ratio ext-plugin/plain (rps): {ext_rps / plain_rps if plain_rps else 0:.3f}"
        f"  (per round: {', '.join(f'{r:.3f}' for r in per_round)})",
        f"added latency per request at this concurrency: p50 {added_p50:+.2f} ms, p99 {added_p99:+.2f} ms",
    ]
    return "\n".join(lines)


async def main_async(args: argparse.Namespace, url: str, pids: dict[str, int]) -> list[Sample]:
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency)) as session:
        bench = Bench(args, url, pids, session)
        await bench.check()
        generator = f"wrk ({args.wrk_threads} thread)" if bench.use_wrk else "aiohttp loop"
        print(f"gateway  : {url} (pid {pids['gateway']}), runner pid {pids['runner']}, upstream pid {pids['upstream']}")
        print(
            f"settings : {generator}, concurrency {args.concurrency}, {args.seconds}s per run after {args.warmup}s"
            f" warm-up, {args.rounds} rounds, {os.cpu_count()} CPUs\n"
        )
        print(
            f"{'target':<11} {'round':>5} {'rps':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
            f" {'gw CPU us/req':>14} {'runner us/req':>15}"
        )
        samples = []
        for round_no in range(1, args.rounds + 1):
            order = TARGETS if round_no % 2 else TARGETS[::-1]  # ABBA
            for label, path in order:
                sample = await bench.measure(label, path, round_no)
                samples.append(sample)
                print(format_sample(sample), flush=True)
        return samples


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="measured seconds per run (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured seconds before each run (default 1)")
    parser.add_argument("--rounds", type=int, default=4, help="runs per route, alternating (default 4)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    parser.add_argument("--timeout", type=float, default=2.0, help="the ext-plugin call timeout, seconds (default 2)")
    parser.add_argument("--load-generator", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    started = time.monotonic()
    children = Children()
    try:
        with tempfile.TemporaryDirectory(prefix="protogate-bench-ext-") as tmp:
            import yaml

            upstream = children.start("upstream", [str(BIN / "python"), str(UPSTREAM_SCRIPT), "--port", "0"])
            upstream_port = int(upstream.wait_for(_UPSTREAM_READY).group(1))
            config_path = Path(tmp) / "gateway.yaml"
            config_path.write_text(yaml.safe_dump(gateway_config(upstream_port, args.timeout), sort_keys=False))
            gateway, url = start_gateway(children, config_path)
            runner_pid = _runner_pid(gateway)
            pids = {"gateway": gateway.pid, "runner": runner_pid, "upstream": upstream.pid}
            samples = asyncio.run(main_async(args, url, pids))
            print()
            print(summary(samples))
            print(f"\ndone in {time.monotonic() - started:.0f}s")
            if any(s.errors or not s.requests for s in samples):
                print("some runs had errors or no requests; the numbers are not trustworthy", file=sys.stderr)
                return 1
            return 0
    except KeyboardInterrupt:
        return 130
    except RuntimeError as exc:
        print(f"bench/ext_plugin.py: error: {exc}", file=sys.stderr)
        return 1
    finally:
        children.stop_all()


def _runner_pid(gateway: Child) -> int:
    """The gateway's runner child (the gateway logs it at INFO, but runs quietly here): read from /proc."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{gateway.pid}/task").iterdir():
            children = (task / "children").read_text().split()
            if children:
                return int(children[0])
        time.sleep(0.05)
    raise RuntimeError("the gateway has no runner child process:\n" + "".join(gateway.output))


if __name__ == "__main__":
    sys.exit(main())
