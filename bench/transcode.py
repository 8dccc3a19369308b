"""Benchmark REST->gRPC transcoding: requests/s through the gateway vs. a direct grpc.aio client.

Builds the quickstart example, starts the bookstore backend and a protogate gateway in front of it as
real subprocesses, then alternates closed-loop measurements with the same number of requests in
flight: direct gRPC (GetShelf, ListBooks) against the backend, and the equivalent REST calls
(``GET /v1/shelves/1``, ``GET /v1/shelves/1/books?page_size=10``) through the gateway. The HTTP load
comes from ``wrk`` when it is on PATH, otherwise from an aiohttp client loop in this process; the
direct gRPC load always comes from a grpc.aio client loop in this process.

Every load generator runs on the same (possibly small, shared) machine as the servers, so the CPU it
burns is taken from them; the table shows the CPU each party used so the numbers can be read with
that in mind. ``--profile py-spy`` or ``--profile cprofile`` adds a profiled load phase on the gateway
and prints its hotspots.

    .venv/bin/python bench/transcode.py [--seconds 5] [--rounds 2] [--concurrency 32] [--profile py-spy]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import pstats
import queue
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "examples" / "quickstart"
GENERATED = QUICKSTART / "generated"
BIN = Path(sys.executable).parent
READY_TIMEOUT = 30.0
RPC_TIMEOUT = 10.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CHILD_ENV = dict(os.environ)
# This process forks wrk and py-spy while its grpc.aio client is alive; without this gRPC's fork
# handlers print "Other threads are currently calling into gRPC, skipping fork() handlers" each time.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")


# --- child processes -------------------------------------------------------------------------------


@dataclass
class Child:
    """A child process whose output is drained by a thread, so it never blocks on a full pipe."""

    name: str
    popen: subprocess.Popen[str]
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    output: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_for(self, pattern: re.Pattern[str], timeout: float = READY_TIMEOUT) -> re.Match[str]:
        """The first output line matching ``pattern``; fails with everything printed so far."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"{self.name}: no {pattern.pattern!r} within {timeout:g}s:\n{self.printed()}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                code = self.popen.wait()
                raise RuntimeError(f"{self.name} exited ({code}) before {pattern.pattern!r}:\n{self.printed()}")
            found = pattern.search(line)
            if found:
                return found

    def printed(self) -> str:
        return "".join(self.output[-40:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


class Children:
    """Every process this script started, stopped newest first however the script ends."""

    def __init__(self) -> None:
        self._running: list[Child] = []

    def start(self, name: str, args: Sequence[str], env: dict[str, str] | None = None) -> Child:
        popen = subprocess.Popen(
            list(args),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
            env={**CHILD_ENV, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        child = Child(name, popen)
        self._running.append(child)

        def drain() -> None:
            assert popen.stdout is not None
            for line in popen.stdout:
                child.output.append(line)
                child.lines.put(line)
            child.lines.put(None)

        threading.Thread(target=drain, name=f"drain-{name}", daemon=True).start()
        return child

    def stop(self, child: Child, sig: int = signal.SIGTERM) -> int:
        code = child.stop(sig)
        with contextlib.suppress(ValueError):
            self._running.remove(child)
        return code

    def stop_all(self) -> None:
        while self._running:
            self.stop(self._running[-1])


# --- CPU accounting --------------------------------------------------------------------------------


def _process_cpu_seconds(pid: int, tid: str = "") -> float:
    """utime + stime (fields 14 and 15 of /proc/PID/stat) of all threads of ``pid``, or of thread ``tid``."""
    stat = _read(Path(f"/proc/{pid}/task/{tid}/stat") if tid else Path(f"/proc/{pid}/stat"))
    if not stat:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine spent busy (first line of /proc/stat)."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def thread_cpu_seconds(pid: int) -> Counter[str]:
    """CPU seconds per thread group of ``pid``: the main (event loop) thread, and others by thread name."""
    seconds: Counter[str] = Counter()
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            name = "main thread (event loop)" if task.name == str(pid) else f"{_read(task / 'comm').strip()} threads"
            seconds[name] += _process_cpu_seconds(pid, task.name)
    return seconds


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


@dataclass(frozen=True)
class CpuSnapshot:
    at: float
    servers: dict[str, float]
    client: float
    machine: float

    @classmethod
    def take(cls, pids: dict[str, int]) -> CpuSnapshot:
        own = resource.getrusage(resource.RUSAGE_SELF)
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once it has exited
        client = own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime
        servers = {name: _process_cpu_seconds(pid) for name, pid in pids.items()}
        return cls(time.perf_counter(), servers, client, _machine_busy_seconds())

    def cores_since(self, start: CpuSnapshot) -> dict[str, float]:
        """Cores used by each party between ``start`` and this snapshot; "other" is everything else."""
        wall = max(self.at - start.at, 1e-9)
        cores = {name: (self.servers[name] - start.servers[name]) / wall for name in self.servers}
        cores["client"] = (self.client - start.client) / wall
        cores["other"] = max(0.0, (self.machine - start.machine) / wall - sum(cores.values()))
        return cores


# --- measurements ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    label: str
    http_path: str
    rpc: str
    request: Any


@dataclass
class Sample:
    case: str
    target: str
    round: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float | None
    p99_ms: float | None
    cores: dict[str, float] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int
    seconds: float
    p50_ms: float | None
    p99_ms: float | None


def _percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


async def closed_loop(call: Callable[[], Awaitable[None]], concurrency: int, seconds: float) -> LoadResult:
    """``concurrency`` workers each calling ``call`` back to back until ``seconds`` have passed."""
    latencies: list[float] = []
    errors = 0
    clock = time.perf_counter
    started = clock()
    stop_at = started + seconds

    async def worker() -> None:
        nonlocal errors
        while True:
            begun = clock()
            if begun >= stop_at:
                return
            try:
                await call()
            except Exception:
                errors += 1
            else:
                latencies.append(clock() - begun)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = clock() - started
    latencies.sort()
    p50, p99 = _percentile(latencies, 0.50), _percentile(latencies, 0.99)
    return LoadResult(
        len(latencies), errors, elapsed, p50 * 1e3 if p50 is not None else None, p99 * 1e3 if p99 is not None else None
    )


_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_wrk(output: str) -> LoadResult:
    """Requests, errors and the 50th/99th latency percentiles from ``wrk --latency`` output."""
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", output)
    if total is None:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    requests = int(total.group(1))
    seconds = float(total.group(2)) * _WRK_UNITS[total.group(3)] / 1e3
    errors = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        errors += int(non_2xx.group(1))
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if sockets:
        errors += sum(int(n) for n in sockets.groups())
    percentiles: dict[str, float] = {}
    for pct, value, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE):
        percentiles[pct] = float(value) * _WRK_UNITS[unit]
    return LoadResult(requests - errors, errors, seconds, percentiles.get("50"), percentiles.get("99"))


async def run_wrk(url: str, concurrency: int, seconds: int, threads: int) -> LoadResult:
    args = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds}s", "--latency", f"--timeout={RPC_TIMEOUT:g}s", url]
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL
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


# --- the benchmark ---------------------------------------------------------------------------------


@dataclass
class Setup:
    args: argparse.Namespace
    children: Children
    backend: Child
    backend_port: int
    gateway: Child
    gateway_url: str
    pb: ModuleType
    pb_grpc: ModuleType
    descriptor_set: Path
    config_path: Path
    use_wrk: bool


def build_example() -> Path:
    spec = importlib.util.spec_from_file_location("bookstore_quickstart_build", QUICKSTART / "build.py")
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot import {QUICKSTART / 'build.py'}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Path(module.build())


def import_stubs() -> tuple[ModuleType, ModuleType]:
    if str(GENERATED) not in sys.path:
        sys.path.insert(0, str(GENERATED))
    from bookstore.v1 import bookstore_pb2, bookstore_pb2_grpc

    return bookstore_pb2, bookstore_pb2_grpc


def gateway_config(descriptor_set: Path, backend_port: int) -> dict[str, Any]:
    """examples/quickstart/config.yaml, pointed at the backend on ``backend_port``."""
    transcode = {"proto_id": "bookstore", "service": "bookstore.v1.Bookstore"}
    return {
        "protos": [{"id": "bookstore", "descriptor_set": str(descriptor_set)}],
        "upstreams": [
            {
                "id": "bookstore-grpc",
                "scheme": "grpc",
                "nodes": {f"127.0.0.1:{backend_port}": 1},
                "timeout": {"connect": 2, "read": 5},
            }
        ],
        "routes": [
            {
                "id": "bookstore-rest",
                "uri": "/v1/*",
                "upstream_id": "bookstore-grpc",
                "plugins": {"grpc-transcode": transcode},
            },
            {
                "id": "bookstore-auto",
                "uri": "/bookstore.v1.Bookstore/*",
                "methods": ["POST"],
                "upstream_id": "bookstore-grpc",
                "plugins": {"grpc-transcode": {**transcode, "auto_mapping": True}},
            },
        ],
    }


_BACKEND_READY = re.compile(r"bookstore listening on .*:(\d+)\s*$")
_GATEWAY_READY = re.compile(r"listening on (http://\S+)")


def start_gateway(children: Children, config_path: Path, wrapper: Sequence[str] = ()) -> tuple[Child, str]:
    command = [*wrapper, "-m", "gateway.cli"] if wrapper else [str(BIN / "protogate")]
    command += ["run", "-c", str(config_path), "--listen", "127.0.0.1:0", "--log-level", "warning"]
    gateway = children.start("gateway", command)
    return gateway, gateway.wait_for(_GATEWAY_READY).group(1)


def setup(args: argparse.Namespace, children: Children, workdir: Path) -> Setup:
    import yaml

    descriptor_set = build_example()
    pb, pb_grpc = import_stubs()
    backend = children.start("backend", [sys.executable, str(QUICKSTART / "server.py"), "--port", "0"])
    backend_port = int(backend.wait_for(_BACKEND_READY).group(1))
    config_path = workdir / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(gateway_config(descriptor_set, backend_port), sort_keys=False))
    gateway, url = start_gateway(children, config_path)
    use_wrk = args.load_generator == "wrk" or (args.load_generator == "auto" and shutil.which("wrk") is not None)
    if use_wrk and shutil.which("wrk") is None:
        raise RuntimeError("--load-generator wrk, but wrk is not on PATH")
    return Setup(args, children, backend, backend_port, gateway, url, pb, pb_grpc, descriptor_set, config_path, use_wrk)


def cases(pb: ModuleType) -> list[Case]:
    return [
        Case("GetShelf", "/v1/shelves/1", "GetShelf", pb.GetShelfRequest(shelf=1)),
        Case("ListBooks", "/v1/shelves/1/books?page_size=10", "ListBooks", pb.ListBooksRequest(shelf=1, page_size=10)),
    ]


class Bench:
    """The load loops, inside one event loop: one grpc.aio channel and one aiohttp session for the run."""

    def __init__(self, s: Setup, channel: Any, session: Any) -> None:
        self.s = s
        self.stub = s.pb_grpc.BookstoreStub(channel)
        self.session = session
        self.concurrency: int = s.args.concurrency

    def direct_call(self, case: Case) -> Callable[[], Awaitable[None]]:
        method = getattr(self.stub, case.rpc)
        request = case.request

        async def call() -> None:
            await method(request, timeout=RPC_TIMEOUT)

        return call

    def http_call(self, url: str) -> Callable[[], Awaitable[None]]:
        session = self.session

        async def call() -> None:
            async with session.get(url) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")

        return call

    async def load_gateway(self, url: str, seconds: int) -> LoadResult:
        if self.s.use_wrk:
            return await run_wrk(url, self.concurrency, seconds, self.s.args.wrk_threads)
        return await closed_loop(self.http_call(url), self.concurrency, seconds)

    async def check(self, case: Case) -> None:
        """One call each way, so a broken setup fails loudly instead of measuring error pages."""
        reply = await getattr(self.stub, case.rpc)(case.request, timeout=RPC_TIMEOUT)
        async with self.session.get(self.s.gateway_url + case.http_path) as response:
            body = await response.json(content_type=None)
            if response.status != 200:
                raise RuntimeError(
                    f"GET {case.http_path}: HTTP {response.status}: {body}\ngateway output:\n{self.s.gateway.printed()}"
                )
        if case.rpc == "GetShelf" and body.get("id") != str(reply.id):
            raise RuntimeError(f"GET {case.http_path} answered {body}, direct GetShelf {reply}")
        if case.rpc == "ListBooks" and len(body.get("books", [])) != len(reply.books):
            raise RuntimeError(f"GET {case.http_path} answered {body}, direct ListBooks {reply}")

    async def measure(self, case: Case, target: str, round_no: int) -> Sample:
        args = self.s.args
        url = self.s.gateway_url + case.http_path
        pids = {"gateway": self.s.gateway.pid, "backend": self.s.backend.pid}
        if args.warmup > 0:
            if target == "direct":
                await closed_loop(self.direct_call(case), self.concurrency, args.warmup)
            else:
                await self.load_gateway(url, args.warmup)
        before = CpuSnapshot.take(pids)
        if target == "direct":
            result = await closed_loop(self.direct_call(case), self.concurrency, args.seconds)
        else:
            result = await self.load_gateway(url, args.seconds)
        cores = CpuSnapshot.take(pids).cores_since(before)
        if target == "direct":
            cores["gateway"] = 0.0  # idle but for keepalives; not part of this path
        return Sample(
            case.label,
            target,
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


SAMPLE_HEADER = (
    f"{'case':<10} {'target':<8} {'round':>5} {'rps':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
    f"   cores used: {'gateway':>7} {'backend':>7} {'client':>7} {'other':>7}"
)


def format_sample(sample: Sample) -> str:
    c = sample.cores
    return (
        f"{sample.case:<10} {sample.target:<8} {sample.round:>5} {sample.rps:>9.0f} {_ms(sample.p50_ms):>8}"
        f" {_ms(sample.p99_ms):>8} {sample.errors:>6}               {c.get('gateway', 0):>7.2f}"
        f" {c.get('backend', 0):>7.2f} {c.get('client', 0):>7.2f} {c.get('other', 0):>7.2f}"
    )


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _mean_optional(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return _mean(present) if present else None


def _cpu_per_request(samples: Sequence[Sample], party: str) -> float:
    return _mean([s.cores[party] * s.seconds / s.requests * 1e6 for s in samples if s.requests])


def summary(samples: Sequence[Sample], case_list: Sequence[Case]) -> str:
    lines = [
        f"{'case':<10} {'request':<38} {'direct rps':>10} {'gateway rps':>11} {'gw/direct':>9}"
        f" {'direct p50/p99 ms':>18} {'gateway p50/p99 ms':>19} {'CPU us/req: gateway':>19} {'backend':>7}",
    ]
    for case in case_list:
        direct = sorted((s for s in samples if s.case == case.label and s.target == "direct"), key=lambda s: s.round)
        gateway = sorted((s for s in samples if s.case == case.label and s.target == "gateway"), key=lambda s: s.round)
        d_rps, g_rps = _mean([s.rps for s in direct]), _mean([s.rps for s in gateway])
        ratio = g_rps / d_rps if d_rps else 0.0
        d_lat = f"{_ms(_mean_optional([s.p50_ms for s in direct]))}/{_ms(_mean_optional([s.p99_ms for s in direct]))}"
        g_lat = f"{_ms(_mean_optional([s.p50_ms for s in gateway]))}/{_ms(_mean_optional([s.p99_ms for s in gateway]))}"
        # CPU per request is far less sensitive to a noisy neighbour than requests/s.
        gw_cpu = _cpu_per_request(gateway, "gateway")
        be_cpu = _cpu_per_request([*direct, *gateway], "backend")
        lines.append(
            f"{case.label:<10} {'GET ' + case.http_path:<38} {d_rps:>10.0f} {g_rps:>11.0f} {ratio:>9.2f}"
            f" {d_lat:>18} {g_lat:>19} {gw_cpu:>19.0f} {be_cpu:>7.0f}"
        )
        per_round = [g.rps / d.rps for d, g in zip(direct, gateway, strict=True) if d.rps]
        lines.append(f"{'':<10} ratio per round: {', '.join(f'{r:.2f}' for r in per_round)}")
    return "\n".join(lines)


async def run_measurements(s: Setup, on_sample: Callable[[Sample], None]) -> list[Sample]:
    import aiohttp
    import grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{s.backend_port}") as channel:
        connector = aiohttp.TCPConnector(limit=s.args.concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            bench = Bench(s, channel, session)
            case_list = cases(s.pb)
            for case in case_list:
                await bench.check(case)
            print(SAMPLE_HEADER, flush=True)
            samples: list[Sample] = []
            for round_no in range(1, s.args.rounds + 1):
                for case in case_list:
                    for target in ("direct", "gateway"):
                        sample = await bench.measure(case, target, round_no)
                        samples.append(sample)
                        on_sample(sample)
            return samples


# --- profiling -------------------------------------------------------------------------------------


@dataclass
class Hotspots:
    """Self and inclusive shares of the gateway's time, per function, from one profiler."""

    tool: str
    total: float
    self_time: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)
    by_package: Counter[str] = field(default_factory=Counter)


_SITE = re.compile(r"/(?:site|dist)-packages/([^/]+)/")
_STDLIB = re.compile(r"/lib/python3\.\d+/")


def package_of(path: str) -> str:
    if path.startswith(str(REPO / "gateway")):
        return "gateway"
    if path.startswith(str(REPO / "transcoder")):
        return "transcoder"
    site = _SITE.search(path)
    if site:
        name = site.group(1)
        return "protobuf" if name == "google" else name.split(".")[0]
    stdlib = _STDLIB.search(path)
    if stdlib:
        module, slash, _ = path[stdlib.end() :].partition("/")
        return module if slash else "stdlib"
    return "other"


def short_path(path: str) -> str:
    site = _SITE.search(path)  # before the repository: the venv may live inside it
    if site:
        return path[site.start(1) :]
    if path.startswith(f"{REPO}/"):
        return path[len(f"{REPO}/") :]
    stdlib = _STDLIB.search(path)
    return path[stdlib.end() :] if stdlib else path


_FRAME = re.compile(r"^(.*) \((.*)\)$")


def parse_py_spy(raw: str) -> Hotspots:
    """py-spy's raw (collapsed) output: ``frame;frame;... count`` with frames ``func (file)``."""
    spots = Hotspots("py-spy", 0)
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        spots.total += count
        names: list[str] = []
        packages: list[str] = []
        for frame in stack.split(";"):
            found = _FRAME.match(frame)
            func, path = (found.group(1), found.group(2)) if found else (frame, "")
            names.append(f"{func} ({short_path(path)})")
            packages.append(package_of(path))
        if not names:
            continue
        spots.self_time[names[-1]] += count
        spots.by_package[packages[-1]] += count
        for name in set(names):
            spots.inclusive[name] += count
    return spots


def parse_cprofile(path: Path) -> Hotspots:
    stats = pstats.Stats(str(path))
    table: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    spots = Hotspots("cProfile", 0.0)
    for (filename, _line, func), (_cc, _nc, tottime, cumtime, _callers) in table.items():
        name = f"{func} ({short_path(filename)})"
        spots.total += tottime
        spots.self_time[name] += tottime
        spots.inclusive[name] += cumtime
        spots.by_package[package_of(filename) if filename != "~" else "builtins"] += tottime
    return spots


def format_hotspots(spots: Hotspots, top: int) -> str:
    if not spots.total:
        return f"{spots.tool}: no samples"
    unit = "samples" if spots.tool == "py-spy" else "s"
    lines = [f"{spots.tool}: {spots.total:.0f} {unit} of gateway time (self = in the function itself)"]
    if spots.tool == "cProfile":
        lines.append("(cProfile covers the gateway's whole life, start-up and imports included)")
    lines.append("")
    lines.append("self time by package (leaf frame):")
    for package, amount in spots.by_package.most_common(12):
        lines.append(f"  {100 * amount / spots.total:5.1f}%  {package}")
    lines.append("")
    lines.append(f"top {top} functions by self time:")
    for name, amount in spots.self_time.most_common(top):
        lines.append(f"  {100 * amount / spots.total:5.1f}%  {name}")
    lines.append("")
    lines.append(f"top {top} gateway/ and transcoder/ functions by inclusive time:")
    ours = [(n, a) for n, a in spots.inclusive.items() if re.search(r"\((gateway|transcoder)/", n)]
    for name, amount in sorted(ours, key=lambda item: -item[1])[:top]:
        lines.append(f"  {100 * amount / spots.total:5.1f}%  {name}")
    return "\n".join(lines)


async def _profile_load(s: Setup, url: str, seconds: int) -> LoadResult:
    import aiohttp
    import grpc

    connector = aiohttp.TCPConnector(limit=s.args.concurrency)
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{s.backend_port}") as channel,
        aiohttp.ClientSession(connector=connector) as session,
    ):
        return await Bench(s, channel, session).load_gateway(url, seconds)


def profiled_load(s: Setup, runner: asyncio.Runner, gateway_pid: int, url: str, tool: str) -> None:
    """Load the gateway for --profile-seconds; print its rate and where its CPU went, thread by thread."""
    before = thread_cpu_seconds(gateway_pid)
    result = runner.run(_profile_load(s, url + s.args.profile_path, s.args.profile_seconds))
    used = thread_cpu_seconds(gateway_pid)
    used.subtract(before)
    rps = result.requests / result.seconds if result.seconds else 0.0
    print(f"profiled load: {rps:.0f} rps under {tool}, {result.errors} errors")
    total = sum(used.values())
    if total > 0 and result.requests:
        print("gateway CPU by thread (the profiler below sees Python threads only):")
        for name, amount in used.most_common():
            if amount > 0:
                per_request = amount / result.requests * 1e6
                print(f"  {100 * amount / total:5.1f}%  {per_request:6.0f} us/req  {name}")
    print()


def profile_py_spy(s: Setup, runner: asyncio.Runner, workdir: Path) -> Hotspots:
    py_spy = str(BIN / "py-spy") if (BIN / "py-spy").exists() else shutil.which("py-spy")
    if py_spy is None:
        raise RuntimeError("py-spy is not installed (.venv/bin/pip install py-spy), or use --profile cprofile")
    out = workdir / "py-spy.txt"
    command = [py_spy, "record", "--pid", str(s.gateway.pid), "--format", "raw", "--output", str(out)]
    command += ["--rate", "200", "--nolineno", "--full-filenames"]
    spy = s.children.start("py-spy", command)
    spy.wait_for(re.compile(r"Sampling process"))
    profiled_load(s, runner, s.gateway.pid, s.gateway_url, "py-spy")
    s.children.stop(spy, signal.SIGINT)  # py-spy writes its output when interrupted
    if not out.is_file():
        raise RuntimeError(f"py-spy wrote no profile:\n{spy.printed()}")
    if s.args.profile_output:
        shutil.copyfile(out, s.args.profile_output)
    return parse_py_spy(out.read_text())


def profile_cprofile(s: Setup, runner: asyncio.Runner, workdir: Path) -> Hotspots:
    # A second gateway on the same config, run as `python -m cProfile -o FILE -m gateway.cli run ...`;
    # cProfile writes FILE when the gateway exits after SIGTERM.
    out = workdir / "gateway.pstats"
    gateway, url = start_gateway(s.children, s.config_path, [sys.executable, "-m", "cProfile", "-o", str(out)])
    try:
        profiled_load(s, runner, gateway.pid, url, "cProfile")
    finally:
        s.children.stop(gateway)
    if not out.is_file():
        raise RuntimeError(f"cProfile wrote no profile:\n{gateway.printed()}")
    if s.args.profile_output:
        shutil.copyfile(out, s.args.profile_output)
    return parse_cprofile(out)


# --- main ------------------------------------------------------------------------------------------


NOTES = """\
notes: the load generators run on this machine and take CPU from the servers ('client' column);
       'other' is CPU used by every other process on the machine (a noisy neighbour shows there).
       The direct client is Python grpc.aio and the backend is Python too, so with few cores every
       run is bounded by the machine as a whole: read the cores columns before the ratio. CPU per
       request ('CPU us/req') is the least noisy number to compare across runs. wrk reports its own
       latency percentiles; the Python loops time each call, client-side queueing included."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=5, help="measured seconds per run (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured seconds before each run (default 1)")
    parser.add_argument("--rounds", type=int, default=2, help="direct/gateway alternations per case (default 2)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    parser.add_argument(
        "--load-generator",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="HTTP load: wrk if on PATH (auto), or the aiohttp client loop (python)",
    )
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument(
        "--profile",
        choices=["none", "py-spy", "cprofile"],
        default="none",
        help="after measuring, profile the gateway under load and print its hotspots",
    )
    parser.add_argument("--profile-seconds", type=int, default=5, help="seconds of profiled load (default 5)")
    parser.add_argument("--profile-path", default="/v1/shelves/1", help="request path loaded while profiling")
    parser.add_argument(
        "--profile-output", type=Path, help="also keep the raw profile (py-spy collapsed or pstats) here"
    )
    parser.add_argument("--top", type=int, default=15, help="functions listed per profile table (default 15)")
    return parser


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP end the run like Ctrl-C does, so the finally blocks stop the children."""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _event_loop_runner() -> tuple[asyncio.Runner, str]:
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner(), "asyncio"
    return asyncio.Runner(loop_factory=uvloop.new_event_loop), "uvloop"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for name in ("seconds", "rounds", "concurrency", "wrk_threads", "profile_seconds"):
        if getattr(args, name) < 1:
            print(f"--{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    if args.warmup < 0:
        print("--warmup must not be negative", file=sys.stderr)
        return 2
    args.wrk_threads = min(args.wrk_threads, args.concurrency)
    started = time.monotonic()
    children = Children()
    try:
        with _terminate_as_interrupt(), tempfile.TemporaryDirectory(prefix="protogate-bench-") as tmp:
            workdir = Path(tmp)
            s = setup(args, children, workdir)
            runner, loop_name = _event_loop_runner()
            with runner:
                generator = (
                    f"wrk ({shutil.which('wrk')}, {args.wrk_threads} thread)"
                    if s.use_wrk
                    else f"python aiohttp client loop ({loop_name})"
                )
                print(f"backend  : 127.0.0.1:{s.backend_port} (pid {s.backend.pid})")
                print(f"gateway  : {s.gateway_url} (pid {s.gateway.pid})")
                print(f"HTTP load: {generator}")
                print(f"gRPC load: python grpc.aio client loop ({loop_name}), in this process")
                print(
                    f"settings : concurrency {args.concurrency}, {args.seconds}s per run after {args.warmup}s warm-up,"
                    f" {args.rounds} rounds, {os.cpu_count()} CPUs"
                )
                print()
                samples = runner.run(run_measurements(s, lambda sample: print(format_sample(sample), flush=True)))
                print()
                print(summary(samples, cases(s.pb)))
                print()
                print(NOTES)
                spots: Hotspots | None = None
                if args.profile == "py-spy":
                    print(f"\nprofiling the gateway with py-spy: GET {args.profile_path} for {args.profile_seconds}s")
                    spots = profile_py_spy(s, runner, workdir)
                elif args.profile == "cprofile":
                    print(f"\nprofiling a cProfile'd gateway: GET {args.profile_path} for {args.profile_seconds}s")
                    spots = profile_cprofile(s, runner, workdir)
                if spots is not None:
                    print(format_hotspots(spots, args.top))
            failed = [x for x in samples if x.errors or not x.requests]
            print(f"\ndone in {time.monotonic() - started:.0f}s")
            if failed:
                print(
                    f"{len(failed)} run(s) had errors or no requests; the ratios are not trustworthy", file=sys.stderr
                )
                return 1
            return 0
    except KeyboardInterrupt:
        print("\ninterrupted; stopping the backend and gateway", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"bench/transcode.py: error: {exc}", file=sys.stderr)
        return 1
    finally:
        children.stop_all()


if __name__ == "__main__":
    sys.exit(main())
