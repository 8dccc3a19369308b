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
import importlib.util
import os
import pstats
import re
import shutil
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

# bench/ is not a package: its sibling bench/common.py is found through sys.path. The names bench/ext_plugin.py
# imports from this module (BIN, REPO, Child, Children, CpuSnapshot, LoadResult, Sample, closed_loop,
# start_gateway) come from there too.
from common import (
    BIN,
    REPO,
    RPC_TIMEOUT,
    Child,
    Children,
    CpuSnapshot,
    LoadResult,
    Sample,
    add_load_arguments,
    closed_loop,
    cpu_us,
    event_loop_runner,
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
    thread_cpu_seconds,
    wrk_wanted,
)

QUICKSTART = REPO / "examples" / "quickstart"
GENERATED = QUICKSTART / "generated"


# --- measurements ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    label: str
    http_path: str
    rpc: str
    request: Any


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


def setup(args: argparse.Namespace, children: Children, workdir: Path) -> Setup:
    import yaml

    descriptor_set = build_example()
    pb, pb_grpc = import_stubs()
    backend = children.start("backend", [sys.executable, str(QUICKSTART / "server.py"), "--port", "0"])
    backend_port = int(backend.wait_for(_BACKEND_READY).group(1))
    config_path = workdir / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(gateway_config(descriptor_set, backend_port), sort_keys=False))
    gateway, url = start_gateway(children, config_path)
    use_wrk = wrk_wanted(args)
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

    async def load_gateway(self, url: str, seconds: int) -> LoadResult:
        if self.s.use_wrk:
            return await run_wrk(url, {}, self.concurrency, seconds, self.s.args.wrk_threads)
        return await closed_loop(http_call(self.session, url), self.concurrency, seconds)

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
        return Sample.of(case.label, target, round_no, result, cores)


PARTIES = ("gateway", "backend")
SAMPLE_HEADER = f"{'case':<10} {'target':<8} {run_header(PARTIES)}"


def format_sample(sample: Sample) -> str:
    return f"{sample.case:<10} {sample.target:<8} {run_columns(sample, PARTIES)}"


def _mean_optional(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return mean(present) if present else None


def _cpu_per_request(samples: Sequence[Sample], party: str) -> float:
    return mean([cpu_us(s, party) for s in samples if s.requests])


def summary(samples: Sequence[Sample], case_list: Sequence[Case]) -> str:
    lines = [
        f"{'case':<10} {'request':<38} {'direct rps':>10} {'gateway rps':>11} {'gw/direct':>9}"
        f" {'direct p50/p99 ms':>18} {'gateway p50/p99 ms':>19} {'CPU us/req: gateway':>19} {'backend':>7}",
    ]
    for case in case_list:
        direct = sorted((s for s in samples if s.case == case.label and s.target == "direct"), key=lambda s: s.round)
        gateway = sorted((s for s in samples if s.case == case.label and s.target == "gateway"), key=lambda s: s.round)
        d_rps, g_rps = mean([s.rps for s in direct]), mean([s.rps for s in gateway])
        ratio = g_rps / d_rps if d_rps else 0.0
        d_lat = f"{ms(_mean_optional([s.p50_ms for s in direct]))}/{ms(_mean_optional([s.p99_ms for s in direct]))}"
        g_lat = f"{ms(_mean_optional([s.p50_ms for s in gateway]))}/{ms(_mean_optional([s.p99_ms for s in gateway]))}"
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
    add_load_arguments(parser, 2, "direct/gateway alternations per case")
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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    problem = load_argument_problem(args, "profile_seconds")
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    return run_script("bench/transcode.py", "the backend and gateway", lambda children: _run(args, children))


def _run(args: argparse.Namespace, children: Children) -> int:
    with tempfile.TemporaryDirectory(prefix="protogate-bench-") as tmp:
        workdir = Path(tmp)
        s = setup(args, children, workdir)
        runner, loop_name = event_loop_runner()
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
    return failed_runs(samples)


if __name__ == "__main__":
    sys.exit(main())
