"""What every benchmark script here shares: child processes, CPU accounting and the HTTP load generators.

The scripts import it as a sibling (bench/ is not a package): ``from common import ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import queue
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
READY_TIMEOUT = 30.0
RPC_TIMEOUT = 10.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CHILD_ENV = dict(os.environ)
# The scripts fork wrk and py-spy while a grpc.aio client may be alive; without this gRPC's fork
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
    """Every process a script started, stopped newest first however the script ends."""

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


_GATEWAY_READY = re.compile(r"listening on (http://\S+)")


def start_gateway(children: Children, config_path: Path, wrapper: Sequence[str] = ()) -> tuple[Child, str]:
    """`protogate run` on an OS-picked loopback port (under `wrapper`, e.g. a profiler); (child, base URL)."""
    command = [*wrapper, "-m", "gateway.cli"] if wrapper else [str(BIN / "protogate")]
    command += ["run", "-c", str(config_path), "--listen", "127.0.0.1:0", "--log-level", "warning"]
    gateway = children.start("gateway", command)
    return gateway, gateway.wait_for(_GATEWAY_READY).group(1)


# --- CPU accounting --------------------------------------------------------------------------------


def process_cpu_seconds(pid: int, tid: str = "") -> float:
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
            seconds[name] += process_cpu_seconds(pid, task.name)
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
        servers = {name: process_cpu_seconds(pid) for name, pid in pids.items()}
        return cls(time.perf_counter(), servers, client, _machine_busy_seconds())

    def cores_since(self, start: CpuSnapshot) -> dict[str, float]:
        """Cores used by each party between ``start`` and this snapshot; "other" is everything else."""
        wall = max(self.at - start.at, 1e-9)
        cores = {name: (self.servers[name] - start.servers[name]) / wall for name in self.servers}
        cores["client"] = (self.client - start.client) / wall
        cores["other"] = max(0.0, (self.machine - start.machine) / wall - sum(cores.values()))
        return cores


# --- load ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadResult:
    requests: int  # the ones that succeeded
    errors: int
    seconds: float
    p50_ms: float | None
    p99_ms: float | None
    failures: Counter[str] = field(default_factory=Counter)  # errors by kind ("HTTP 503", an exception's type)


@dataclass
class Sample:
    """One measured run: a load against one target, and the cores each party used meanwhile."""

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

    @classmethod
    def of(cls, case: str, target: str, round_no: int, result: LoadResult, cores: dict[str, float]) -> Sample:
        return cls(
            case, target, round_no, result.requests, result.errors, result.seconds, result.p50_ms, result.p99_ms, cores
        )


def percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


class Refused(Exception):
    """An answer, but not the one the load wanted (an HTTP status): counted under its message."""


async def closed_loop(call: Callable[[], Awaitable[None]], concurrency: int, seconds: float) -> LoadResult:
    """``concurrency`` workers each calling ``call`` back to back until ``seconds`` have passed."""
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    clock = time.perf_counter
    started = clock()
    stop_at = started + seconds

    async def worker() -> None:
        while True:
            begun = clock()
            if begun >= stop_at:
                return
            try:
                await call()
            except Refused as exc:
                failures[str(exc)] += 1
            except Exception as exc:
                failures[type(exc).__name__] += 1
            else:
                latencies.append(clock() - begun)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = clock() - started
    latencies.sort()
    p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
    return LoadResult(
        len(latencies),
        sum(failures.values()),
        elapsed,
        p50 * 1e3 if p50 is not None else None,
        p99 * 1e3 if p99 is not None else None,
        failures,
    )


def http_call(session: Any, url: str, headers: dict[str, str] | None = None) -> Callable[[], Awaitable[None]]:
    """One GET of ``url`` with an aiohttp session, body read; anything but a 200 is Refused("HTTP <status>")."""

    async def call() -> None:
        async with session.get(url, headers=headers) as response:
            await response.read()
            if response.status != 200:
                raise Refused(f"HTTP {response.status}")

    return call


_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_wrk(output: str) -> LoadResult:
    """Requests, errors and the 50th/99th latency percentiles from ``wrk --latency`` output."""
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", output)
    if total is None:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    requests = int(total.group(1))
    seconds = float(total.group(2)) * _WRK_UNITS[total.group(3)] / 1e3
    failures: Counter[str] = Counter()
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        failures["non-2xx"] = int(non_2xx.group(1))
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if sockets:
        for kind, count in zip(("connect", "read", "write", "timeout"), sockets.groups(), strict=True):
            if int(count):
                failures[kind] = int(count)
    percentiles: dict[str, float] = {}
    for pct, value, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE):
        percentiles[pct] = float(value) * _WRK_UNITS[unit]
    errors = sum(failures.values())
    return LoadResult(requests - errors, errors, seconds, percentiles.get("50"), percentiles.get("99"), failures)


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


# --- output and running ----------------------------------------------------------------------------


def ms(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def cpu_us(sample: Sample, party: str = "gateway") -> float:
    """CPU microseconds ``party`` spent per request of ``sample``."""
    return sample.cores[party] * sample.seconds / sample.requests * 1e6 if sample.requests else 0.0


def run_header(parties: Sequence[str]) -> str:
    """Column titles for run_columns(); a script puts its own (case, target) in front."""
    names = " ".join(f"{name:>8}" for name in (*parties, "client", "other"))
    return (
        f"{'round':>5} {'rps':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'gw CPU us/req':>14}   cores used: {names}"
    )


def run_columns(sample: Sample, parties: Sequence[str]) -> str:
    """One measured run: rate, latency, errors, the gateway's CPU per request and the cores each party used."""
    cores = " ".join(f"{sample.cores.get(name, 0):>8.2f}" for name in (*parties, "client", "other"))
    return (
        f"{sample.round:>5} {sample.rps:>9.0f} {ms(sample.p50_ms):>8} {ms(sample.p99_ms):>8} {sample.errors:>6}"
        f" {cpu_us(sample) if sample.cores.get('gateway') else 0:>14.0f}               {cores}"
    )


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP end the run like Ctrl-C does, so the finally blocks stop the children."""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def event_loop_runner() -> tuple[asyncio.Runner, str]:
    """An asyncio.Runner on uvloop when it is installed (as the gateway runs), and the loop's name."""
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner(), "asyncio"
    return asyncio.Runner(loop_factory=uvloop.new_event_loop), "uvloop"


def add_load_arguments(parser: argparse.ArgumentParser, rounds: int, rounds_help: str) -> None:
    """The options every load-driven script takes: run length, rounds, requests in flight, load generator."""
    parser.add_argument("--seconds", type=int, default=5, help="measured seconds per run (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured seconds before each run (default 1)")
    parser.add_argument("--rounds", type=int, default=rounds, help=f"{rounds_help} (default {rounds})")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    parser.add_argument(
        "--load-generator",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="HTTP load: wrk if on PATH (auto), or the aiohttp client loop (python)",
    )
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1)")


def load_argument_problem(args: argparse.Namespace, *more: str) -> str | None:
    """What is wrong with the options add_load_arguments added (and the counts named in ``more``), if anything."""
    for name in ("seconds", "rounds", "concurrency", "wrk_threads", *more):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be at least 1"
    if args.warmup < 0:
        return "--warmup must not be negative"
    args.wrk_threads = min(args.wrk_threads, args.concurrency)
    return None


def wrk_wanted(args: argparse.Namespace) -> bool:
    """Whether the HTTP load comes from wrk; RuntimeError when it was asked for and is not on PATH."""
    found = shutil.which("wrk") is not None
    if args.load_generator == "wrk" and not found:
        raise RuntimeError("--load-generator wrk, but wrk is not on PATH")
    return args.load_generator == "wrk" or (args.load_generator == "auto" and found)


def run_script(script: str, stopping: str, body: Callable[[Children], int]) -> int:
    """``body`` with the processes it starts; Ctrl-C, SIGTERM and a RuntimeError end it with those stopped."""
    started = time.monotonic()
    children = Children()
    try:
        with terminate_as_interrupt():
            code = body(children)
        print(f"\ndone in {time.monotonic() - started:.0f}s")
        return code
    except KeyboardInterrupt:
        print(f"\ninterrupted; stopping {stopping}", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"{script}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        children.stop_all()


def failed_runs(samples: Sequence[Sample]) -> int:
    """1 (printing why) when a run had errors or no requests, so the numbers are not to be trusted; else 0."""
    failed = [s for s in samples if s.errors or not s.requests]
    if failed:
        print(f"{len(failed)} run(s) had errors or no requests; the numbers are not trustworthy", file=sys.stderr)
        return 1
    return 0
