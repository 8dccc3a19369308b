"""Hot reload cost and cluster convergence.

1. Requests/s through one gateway with no config changes vs with an Admin API write every ~100 ms
   (each write is a whole reload), alternating rounds in one run; failed requests are counted.
2. Two gateways on one etcd: time from an Admin API write on node A to the new route answering on
   node B (p50/p99 over --changes writes). Without etcd (`etcd` not on PATH, or --no-etcd) the same is
   measured on one node with the file store, and the output says so.

    .venv/bin/python bench/reload.py                         # ~40 s
    .venv/bin/python bench/reload.py --seconds 5 --rounds 3 --changes 200
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

BENCH = Path(__file__).resolve().parent
TESTS = BENCH.parent / "tests"
sys.path.insert(0, str(BENCH))  # bench/ is not a package: bench/common.py is found through sys.path
sys.path.insert(0, str(TESTS))  # the test harness starts the real processes

from admin_harness import KEY, AdminGateway, admin_section, start_admin_gateway, start_http_upstream, write_config  # noqa: E402
from common import LoadResult, closed_loop, http_call, percentile  # noqa: E402


async def load(url: str, seconds: float, concurrency: int) -> LoadResult:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        return await closed_loop(http_call(session, url), concurrency, seconds)


async def writer(gateway: AdminGateway, seconds: float, interval: float) -> int:
    admin = f"http://{gateway.admin_address}/protogate/admin"
    deadline, count = time.monotonic() + seconds, 0
    async with aiohttp.ClientSession(headers={"X-API-KEY": KEY}) as session:
        while time.monotonic() < deadline:
            route = {"uri": f"/churn/{count % 10}", "upstream_id": "echo"}
            async with session.put(f"{admin}/routes/churn{count % 10}", json=route) as response:
                if response.status >= 300:
                    raise RuntimeError(f"admin write failed: {response.status} {await response.text()}")
            count += 1
            await asyncio.sleep(interval)
    return count


async def throughput(gateway: AdminGateway, args: argparse.Namespace) -> None:
    url = f"{gateway.gateway.url}/echo/bench"
    await load(url, 1.0, args.concurrency)  # warm-up
    rates: dict[str, list[float]] = {"steady": [], "reloading": []}
    failures: Counter[str] = Counter()
    writes = 0
    for _ in range(args.rounds):
        for mode in ("steady", "reloading"):
            if mode == "steady":
                result = await load(url, args.seconds, args.concurrency)
            else:
                result, done = await asyncio.gather(
                    load(url, args.seconds, args.concurrency), writer(gateway, args.seconds, args.interval)
                )
                writes += done
            rates[mode].append(result.requests / result.seconds)
            failures.update(result.failures)
    steady, reloading = statistics.mean(rates["steady"]), statistics.mean(rates["reloading"])
    print(f"throughput: {args.concurrency} in flight, {args.rounds} x {args.seconds:g} s per mode, alternating")
    print(f"  no reloads:          {steady:8.0f} req/s  (rounds: {', '.join(f'{r:.0f}' for r in rates['steady'])})")
    print(
        f"  write every {args.interval * 1000:.0f} ms:  {reloading:8.0f} req/s  "
        f"(rounds: {', '.join(f'{r:.0f}' for r in rates['reloading'])}; {writes} reloads)"
    )
    failed = sum(failures.values())
    print(f"  ratio reloading/steady: {reloading / steady:.3f}; failed requests: {failed} {dict(failures)}")


async def propagation(writer_node: AdminGateway, reader_node: AdminGateway, changes: int) -> list[float]:
    admin = f"http://{writer_node.admin_address}/protogate/admin"
    latencies: list[float] = []
    async with aiohttp.ClientSession(headers={"X-API-KEY": KEY}) as session:
        for i in range(changes):
            path = f"/echo/p{i}"
            started = time.perf_counter()
            async with session.put(f"{admin}/routes/p{i}", json={"uri": path, "upstream_id": "echo"}) as response:
                if response.status != 201:
                    raise RuntimeError(f"admin write failed: {response.status} {await response.text()}")
            while True:
                async with session.get(reader_node.gateway.url + path) as response:
                    await response.read()
                    if response.status == 200:
                        break
                if time.perf_counter() - started > 10:
                    raise RuntimeError(f"route {path} did not appear within 10 s")
                await asyncio.sleep(0.002)
            latencies.append(time.perf_counter() - started)
    return latencies


async def main(args: argparse.Namespace) -> None:
    upstream, port = start_http_upstream()
    temp = Path(tempfile.mkdtemp(prefix="protogate-bench-reload-"))
    started: list[Any] = [upstream]
    try:
        echo = {"id": "echo", "nodes": {f"127.0.0.1:{port}": 1}}
        base = {"uri": "/echo/*", "upstream_id": "echo"}
        config = write_config(
            temp / "file.yaml", {"admin": admin_section(), "store": {"type": "file", "path": "data.yaml"}}
        )
        node = start_admin_gateway(config)
        started.append(node.process)
        node.admin("PUT", "/upstreams/echo", echo)
        node.admin("PUT", "/routes/base", base)
        await throughput(node, args)

        use_etcd = not args.no_etcd and shutil.which("etcd") is not None
        if use_etcd:
            from servers.etcd_server import EtcdServer

            etcd = EtcdServer(temp / "etcd")
            etcd.start()
            started.append(etcd)
            store = {"type": "etcd", "endpoints": [etcd.endpoint], "prefix": "/bench"}
            a = start_admin_gateway(write_config(temp / "a.yaml", {"admin": admin_section(), "store": store}))
            started.append(a.process)
            b = start_admin_gateway(write_config(temp / "b.yaml", {"admin": admin_section(), "store": store}))
            started.append(b.process)
            a.admin("PUT", "/upstreams/echo", echo)
            latencies = await propagation(a, b, args.changes)
            what = "Admin write on node A -> route answering on node B (etcd, two gateway processes)"
        else:
            latencies = await propagation(node, node, args.changes)
            what = "Admin write -> route answering on the SAME node (file store; no etcd here)"
        ms = sorted(x * 1000 for x in latencies)
        print(f"convergence: {what}, {len(ms)} changes")
        p50, p99 = percentile(ms, 0.5) or 0.0, percentile(ms, 0.99) or 0.0
        print(f"  p50 {p50:.1f} ms  p99 {p99:.1f} ms  max {max(ms):.1f} ms  mean {statistics.mean(ms):.1f} ms")
    finally:
        for item in reversed(started):
            item.stop()
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each load round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per mode (alternating)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between Admin writes while reloading")
    parser.add_argument("--changes", type=int, default=100, help="writes timed for convergence")
    parser.add_argument("--no-etcd", action="store_true", help="measure convergence on one node with the file store")
    asyncio.run(main(parser.parse_args()))
