"""Upstreams end to end: the real gateway in front of several real HTTP and gRPC backends on loopback.

Weights over 1,000 calls, chash stickiness and ~1/N movement when a node goes, least_conn, a node killed
mid-run (no failed request with retries; back after a restart), health checks over grpc.health.v1,
route timeouts, api-breaker and traffic-split.
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from gateway_harness import Gateway, bookstore_config, start_gateway
from processes import BIN, REPO, Process, start

HTTP_UPSTREAM = REPO / "tests" / "servers" / "http_upstream.py"
GRPC_BACKEND = REPO / "tests" / "servers" / "health_backend.py"
FAST_TCP_CHECKS = {
    "active": {
        "type": "tcp",
        "timeout": 0.5,
        "healthy": {"interval": 0.2, "successes": 1},
        "unhealthy": {"interval": 0.2, "tcp_failures": 1},
    },
    "passive": {"unhealthy": {"tcp_failures": 1}},
}


def start_http(name: str, port: int = 0) -> tuple[Process, int]:
    process = start([str(BIN / "python"), str(HTTP_UPSTREAM), "--port", str(port), "--name", name])
    try:
        line = process.wait_for("http upstream listening on")
    except BaseException:
        process.stop()
        raise
    return process, int(line.rsplit(":", 1)[1])


def start_grpc(name: str, port: int = 0) -> tuple[Process, int]:
    process = start([str(BIN / "python"), str(GRPC_BACKEND), "--port", str(port), "--name", name])
    try:
        line = process.wait_for("health backend listening on")
    except BaseException:
        process.stop()
        raise
    return process, int(line.rsplit(":", 1)[1])


class Client:
    """A keep-alive HTTP/1.1 connection to the gateway (reopened if the gateway closes it)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.conn: http.client.HTTPConnection | None = None

    def request(
        self, method: str, path: str, host: str, headers: dict[str, str] | None = None, body: bytes | None = None
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.gateway.host, self.gateway.port, timeout=10)
            try:
                self.conn.request(method, path, body=body, headers={"Host": host, **(headers or {})})
                response = self.conn.getresponse()
                data = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.close()
                return response.status, response.headers, data
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def served_by(self, host: str, path: str = "/echo", headers: dict[str, str] | None = None) -> str:
        status, response_headers, data = self.request("GET", path, host, headers)
        assert status == 200, (status, data)
        return str(response_headers["X-Served-By"])

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


Connect = Callable[[Gateway], Client]


@pytest.fixture
def connect() -> Iterator[Connect]:
    """Clients that are closed after the test, whatever happens in it."""
    made: list[Client] = []

    def make(gateway: Gateway) -> Client:
        made.append(Client(gateway))
        return made[-1]

    yield make
    for client in made:
        client.close()


def write_config(directory: Path, config: dict[str, Any]) -> Gateway:
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return start_gateway(path)


def http_upstream(id_: str, nodes: dict[int, int], **extra: Any) -> dict[str, Any]:
    timeout = {"connect": 0.5, "read": 5}
    return {
        "id": id_,
        "scheme": "http",
        "nodes": {f"127.0.0.1:{p}": w for p, w in nodes.items()},
        "timeout": timeout,
        **extra,
    }


def route(id_: str, upstream_id: str, host: str, **extra: Any) -> dict[str, Any]:
    return {"id": id_, "uri": "/*", "host": host, "upstream_id": upstream_id, **extra}


def wait_until(condition: Callable[[], bool], timeout: float = 5.0, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(every)


# -- one gateway, three HTTP upstreams that stay up -------------------------------------------------------------


@dataclass
class Shared:
    gateway: Gateway
    ports: dict[str, int]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    started = {name: start_http(name) for name in ("a", "b", "c")}
    ports = {name: port for name, (_, port) in started.items()}
    a, b, c = ports["a"], ports["b"], ports["c"]
    config = {
        "upstreams": [
            http_upstream("weighted", {a: 5, b: 3, c: 2}),
            http_upstream("sticky", {a: 1, b: 1, c: 1}, type="chash", hash_on="header", key="X-User"),
            http_upstream("idle", {a: 1, b: 1}, type="least_conn"),
            http_upstream("fast", {a: 1}, timeout={"connect": 0.5, "read": 3}),
            http_upstream("canary", {c: 1}),
        ],
        "routes": [
            route("weighted", "weighted", "weighted.test"),
            route("sticky", "sticky", "sticky.test"),
            route("idle", "idle", "idle.test"),
            route("timeout", "fast", "timeout.test", timeout={"connect": 0.5, "read": 0.3}),
            route("no-timeout", "fast", "slow-ok.test"),
            route(
                "breaker",
                "fast",
                "breaker.test",
                plugins={
                    "api-breaker": {
                        "break_response_code": 502,
                        "break_response_body": "breaker open",
                        "unhealthy": {"http_statuses": [500], "failures": 2},
                        "healthy": {"http_statuses": [200], "successes": 1},
                    }
                },
            ),
            route(
                "split",
                "fast",
                "split.test",
                plugins={
                    "traffic-split": {
                        "rules": [
                            {
                                "match": [{"vars": [["http_x_canary", "==", "always"]]}],
                                "weighted_upstreams": [{"upstream_id": "canary"}],
                            },
                            {
                                "weighted_upstreams": [
                                    {"upstream_id": "canary", "weight": 1},
                                    {"upstream": {"nodes": {f"127.0.0.1:{b}": 1}}, "weight": 1},
                                    {"weight": 2},
                                ]
                            },
                        ]
                    }
                },
            ),
        ],
    }
    try:
        gateway = write_config(tmp_path_factory.mktemp("upstreams"), config)
    except BaseException:
        for process, _ in started.values():
            process.stop()
        raise
    yield Shared(gateway, ports)
    gateway.process.stop()
    for process, _ in started.values():
        process.stop()


@pytest.fixture
def client(shared: Shared) -> Iterator[Client]:
    c = Client(shared.gateway)
    yield c
    c.close()


def test_weights_hold_over_a_thousand_calls(client: Client) -> None:
    counts = Counter(client.served_by("weighted.test") for _ in range(1000))
    for name, share in (("a", 0.5), ("b", 0.3), ("c", 0.2)):
        assert counts[name] == pytest.approx(1000 * share, abs=30), counts


def test_chash_keeps_each_key_on_one_node_and_spreads_keys(client: Client) -> None:
    owners = {}
    for i in range(60):
        seen = {client.served_by("sticky.test", headers={"X-User": f"user-{i}"}) for _ in range(3)}
        assert len(seen) == 1, seen
        owners[i] = seen.pop()
    assert set(owners.values()) == {"a", "b", "c"}


def test_least_conn_favours_the_idle_node(client: Client, shared: Shared) -> None:
    busy: list[str] = []

    def slow_call() -> None:
        other = Client(shared.gateway)
        try:
            busy.append(other.served_by("idle.test", "/slow?ms=1500").strip() or "?")
        finally:
            other.close()

    threads = [threading.Thread(target=slow_call) for _ in range(2)]
    threads[0].start()
    time.sleep(0.3)  # the first slow call is on one node now
    fast = [client.served_by("idle.test") for _ in range(10)]
    threads[1].start()
    for thread in threads:
        thread.join()
    # Every quick call went to the node without the slow one in flight.
    assert len(set(fast)) == 1, fast


def test_route_timeout_overrides_the_upstream_one(client: Client) -> None:
    status, _, body = client.request("GET", "/slow?ms=1000", "timeout.test")
    assert status == 504, body
    status, _, body = client.request("GET", "/slow?ms=1000", "slow-ok.test")
    assert status == 200, body


def test_api_breaker_opens_and_closes(client: Client) -> None:
    for _ in range(2):
        status, _, _ = client.request("GET", "/status/500", "breaker.test")
        assert status == 500
    status, _, body = client.request("GET", "/status/200", "breaker.test")
    assert (status, body) == (502, b"breaker open")  # open: the upstream is not called
    time.sleep(2.1)  # 2^1 seconds for the first opening
    status, _, _ = client.request("GET", "/status/200", "breaker.test")
    assert status == 200  # half-open: this one went through and, healthy, closed the breaker
    for _ in range(3):
        assert client.request("GET", "/status/200", "breaker.test")[0] == 200


def test_traffic_split_sends_the_configured_share(client: Client) -> None:
    counts = Counter(client.served_by("split.test") for _ in range(400))
    assert counts == {"c": 100, "b": 100, "a": 200}  # canary 1 : inline 1 : the route's own 2
    assert {client.served_by("split.test", headers={"X-Canary": "always"}) for _ in range(5)} == {"c"}


# -- nodes that go away ---------------------------------------------------------------------------------------------


def test_a_killed_http_node_costs_no_request_and_gets_traffic_again(tmp_path: Path, connect: Connect) -> None:
    (a, port_a), (b, port_b) = start_http("a"), start_http("b")
    gateway = None
    try:
        config = {
            "upstreams": [http_upstream("pair", {port_a: 1, port_b: 1}, checks=FAST_TCP_CHECKS)],
            "routes": [route("pair", "pair", "pair.test")],
        }
        gateway = write_config(tmp_path, config)
        client = connect(gateway)
        assert Counter(client.served_by("pair.test") for _ in range(20)) == {"a": 10, "b": 10}
        b.stop()
        killed_at = time.monotonic()
        after = Counter(client.served_by("pair.test") for _ in range(50))  # every one answered 200
        assert after == {"a": 50}
        b, _ = start_http("b", port_b)
        wait_until(lambda: client.served_by("pair.test") == "b", timeout=5)
        assert time.monotonic() - killed_at < 10
        assert Counter(client.served_by("pair.test") for _ in range(20))["b"] >= 8
    finally:
        if gateway is not None:
            gateway.process.stop()
        a.stop()
        b.stop()


def test_chash_moves_only_the_keys_of_a_node_that_went(tmp_path: Path, connect: Connect) -> None:
    started = [start_http(name) for name in ("a", "b", "c", "d")]
    ports = [port for _, port in started]
    gateway = None
    try:
        upstream = http_upstream(
            "ring", dict.fromkeys(ports, 1), type="chash", hash_on="header", key="X-User", checks=FAST_TCP_CHECKS
        )
        gateway = write_config(tmp_path, {"upstreams": [upstream], "routes": [route("ring", "ring", "ring.test")]})
        client = connect(gateway)
        keys = [f"user-{i}" for i in range(200)]
        before = {key: client.served_by("ring.test", headers={"X-User": key}) for key in keys}
        started[3][0].stop()  # d goes
        after = {key: client.served_by("ring.test", headers={"X-User": key}) for key in keys}
        moved = [key for key in keys if after[key] != before[key]]
        assert all(before[key] == "d" for key in moved)
        assert all(after[key] != "d" for key in keys)
        assert len(moved) == Counter(before.values())["d"]
        assert len(moved) == pytest.approx(len(keys) / 4, abs=25)
    finally:
        if gateway is not None:
            gateway.process.stop()
        for process, _ in started:
            process.stop()


# -- gRPC backends --------------------------------------------------------------------------------------------------


def grpc_config(descriptor_set: Path, nodes: dict[int, int], **upstream: Any) -> dict[str, Any]:
    config = bookstore_config(descriptor_set, 1)
    config["upstreams"][0]["nodes"] = {f"127.0.0.1:{port}": weight for port, weight in nodes.items()}
    config["upstreams"][0].update(upstream)
    return config


def grpc_served_by(client: Client) -> str:
    status, _, data = client.request("POST", "/bookstore.v1.Bookstore/GetStats", "any", body=b"{}")
    assert status == 200, data
    return str(json.loads(data)["servedBy"])


def test_grpc_weights_and_health_checks(tmp_path: Path, bookstore_descriptor_set: Path, connect: Connect) -> None:
    (g1, port1), (g2, port2) = start_grpc("g1"), start_grpc("g2")
    gateway = None
    try:
        checks = {
            "active": {
                "type": "grpc",
                "grpc_service": "bookstore.v1.Bookstore",
                "timeout": 0.5,
                "healthy": {"interval": 0.1, "successes": 1},
                "unhealthy": {"interval": 0.1, "http_failures": 1},
            }
        }
        gateway = write_config(tmp_path, grpc_config(bookstore_descriptor_set, {port1: 3, port2: 1}, checks=checks))
        client = connect(gateway)
        counts = Counter(grpc_served_by(client) for _ in range(1000))
        assert counts["g1"] == pytest.approx(750, abs=30), counts
        assert counts["g2"] == pytest.approx(250, abs=30), counts
        g2.popen.send_signal(signal.SIGUSR1)  # its health answer turns NOT_SERVING
        time.sleep(0.5)
        assert Counter(grpc_served_by(client) for _ in range(40)) == {"g1": 40}
        g2.popen.send_signal(signal.SIGUSR2)
        wait_until(lambda: grpc_served_by(client) == "g2")
    finally:
        if gateway is not None:
            gateway.process.stop()
        g1.stop()
        g2.stop()


# -- retries on an answer -------------------------------------------------------------------------------------------


class _Unavailable(BaseHTTPRequestHandler):
    hits: ClassVar[Counter[str]] = Counter()

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        type(self).hits[self.command] += 1
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.send_header("X-Served-By", "unavailable")
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def unavailable() -> Iterator[tuple[int, Counter[str]]]:
    """A node that answers every request with 503 (a real server in this process, on its own thread)."""
    _Unavailable.hits = Counter()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], _Unavailable.hits
    server.shutdown()
    server.server_close()


def test_a_503_is_retried_on_another_node_only_when_safe(
    tmp_path: Path, connect: Connect, unavailable: tuple[int, Counter[str]]
) -> None:
    port_bad, hits = unavailable
    a, port_a = start_http("a")
    gateway = None
    try:
        config = {
            "upstreams": [
                http_upstream("mixed", {port_bad: 1, port_a: 1}),
                http_upstream("mixed-any", {port_bad: 1, port_a: 1}, retry_non_idempotent=True),
                http_upstream("mixed-none", {port_bad: 1, port_a: 1}, retries=0),
            ],
            "routes": [
                route("mixed", "mixed", "mixed.test"),
                route("mixed-any", "mixed-any", "any.test"),
                route("mixed-none", "mixed-none", "none.test"),
            ],
        }
        gateway = write_config(tmp_path, config)
        client = connect(gateway)
        assert [client.served_by("mixed.test") for _ in range(6)] == ["a"] * 6
        assert hits["GET"] == 3  # half the first tries went to the 503 node, then to a
        posts = Counter(client.request("POST", "/echo", "mixed.test", body=b"x")[0] for _ in range(6))
        assert posts == {200: 3, 503: 3}  # not idempotent: the 503 is the answer
        posts = Counter(client.request("POST", "/echo", "any.test", body=b"x")[0] for _ in range(6))
        assert posts == {200: 6}
        gets = Counter(client.request("GET", "/echo", "none.test")[0] for _ in range(6))
        assert gets == {200: 3, 503: 3}  # retries: 0
    finally:
        if gateway is not None:
            gateway.process.stop()
        a.stop()


GRPC_CHECKS = {
    "active": {
        "type": "grpc",
        "grpc_service": "bookstore.v1.Bookstore",
        "timeout": 0.5,
        "healthy": {"interval": 0.1, "successes": 1},
        "unhealthy": {"interval": 0.1, "tcp_failures": 1, "http_failures": 1},
    },
    "passive": {"unhealthy": {"tcp_failures": 1}},
}


def shelves_served_by(client: Client) -> str:
    status, headers, data = client.request("GET", "/v1/shelves", "any")
    assert status == 200, data
    return str(headers["Grpc-Metadata-X-Bookstore-Served-By"])


def test_a_killed_grpc_node_costs_no_request_and_gets_traffic_again(
    tmp_path: Path, bookstore_descriptor_set: Path, connect: Connect
) -> None:
    (g1, port1), (g2, port2) = start_grpc("g1"), start_grpc("g2")
    gateway = None
    try:
        config = grpc_config(bookstore_descriptor_set, {port1: 1, port2: 1}, checks=GRPC_CHECKS)
        gateway = write_config(tmp_path, config)
        client = connect(gateway)
        assert Counter(shelves_served_by(client) for _ in range(20)) == {"g1": 10, "g2": 10}
        stop = threading.Event()
        failures: list[str] = []
        served: Counter[str] = Counter()

        def load() -> None:
            other = connect(gateway)
            while not stop.is_set():
                try:
                    served[shelves_served_by(other)] += 1
                except AssertionError as exc:
                    failures.append(str(exc))

        worker = threading.Thread(target=load)
        worker.start()
        try:
            time.sleep(0.3)
            g2.popen.kill()  # mid-run, while requests keep coming
            g2.stop()
            time.sleep(0.5)
            before_restart = served.copy()
            time.sleep(0.3)
            assert served["g2"] == before_restart["g2"]  # no traffic to the dead node
            g2, _ = start_grpc("g2", port2)
            wait_until(lambda: served["g2"] > before_restart["g2"] + 5, timeout=5)
        finally:
            stop.set()
            worker.join()
        assert failures == []
    finally:
        if gateway is not None:
            gateway.process.stop()
        g1.stop()
        g2.stop()


def test_traffic_split_and_chash_on_a_transcoded_route(
    tmp_path: Path, bookstore_descriptor_set: Path, connect: Connect
) -> None:
    (g1, port1), (g2, port2), (g3, port3) = start_grpc("g1"), start_grpc("g2"), start_grpc("g3")
    gateway = None
    try:
        config = grpc_config(
            bookstore_descriptor_set, {port1: 1, port2: 1}, type="chash", hash_on="header", key="X-User"
        )
        config["upstreams"].append({"id": "canary", "scheme": "grpc", "nodes": {f"127.0.0.1:{port3}": 1}})
        config["routes"][0]["plugins"]["traffic-split"] = {
            "rules": [
                {
                    "match": [{"vars": [["http_x_user", "==", "tester"]]}],
                    "weighted_upstreams": [{"upstream_id": "canary"}],
                }
            ]
        }
        gateway = write_config(tmp_path, config)
        client = connect(gateway)

        def served(user: str) -> str:
            status, headers, data = client.request("GET", "/v1/shelves", "any", headers={"X-User": user})
            assert status == 200, data
            return str(headers["Grpc-Metadata-X-Bookstore-Served-By"])

        assert {served("tester") for _ in range(5)} == {"g3"}
        owners = {user: {served(user) for _ in range(3)} for user in (f"user-{i}" for i in range(30))}
        assert all(len(seen) == 1 for seen in owners.values())
        assert set().union(*owners.values()) == {"g1", "g2"}
    finally:
        if gateway is not None:
            gateway.process.stop()
        for process in (g1, g2, g3):
            process.stop()
