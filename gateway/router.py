"""RouteTable: routes compiled once per config into exact and prefix maps; match(host, method, path)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class RouteSpec(Generic[T]):
    """What the router needs of a route, and the target handed back on a match."""

    uris: Sequence[str]
    methods: Sequence[str] | None
    hosts: Sequence[str]
    priority: int
    target: T


@dataclass(frozen=True)
class _Entry(Generic[T]):
    methods: frozenset[str] | None
    exact_hosts: frozenset[str]
    host_suffixes: tuple[str, ...]  # "*.example.com" -> ".example.com"
    target: T

    def host_matches(self, host: str) -> bool:
        if not self.exact_hosts and not self.host_suffixes:
            return True
        return host in self.exact_hosts or any(host.endswith(suffix) for suffix in self.host_suffixes)

    def method_matches(self, method: str) -> bool:
        return self.methods is None or method in self.methods


class RouteTable(Generic[T]):
    """Exact uris beat prefix uris (`/api/*`); longer prefixes beat shorter; then priority, then order.

    Among routes on the same uri and priority, exact hosts are tried before wildcard hosts
    (`*.example.com`), and those before routes that name no host, so a host-specific route is never
    shadowed by a catch-all.
    """

    def __init__(self) -> None:
        self._exact: dict[str, list[_Entry[T]]] = {}
        self._prefix: dict[str, list[_Entry[T]]] = {}
        self._prefix_lengths: tuple[int, ...] = ()

    @classmethod
    def compile(cls, specs: Iterable[RouteSpec[T]]) -> RouteTable[T]:
        table: RouteTable[T] = cls()
        ranked: list[tuple[tuple[int, int, int], str, bool, _Entry[T]]] = []
        for order, spec in enumerate(specs):
            hosts = [h.lower() for h in spec.hosts]
            entry = _Entry(
                methods=frozenset(m.upper() for m in spec.methods) if spec.methods else None,
                exact_hosts=frozenset(h for h in hosts if not h.startswith("*.")),
                host_suffixes=tuple(h[1:] for h in hosts if h.startswith("*.")),
                target=spec.target,
            )
            host_rank = 2 if not hosts else (1 if all(h.startswith("*.") for h in hosts) else 0)
            rank = (-spec.priority, host_rank, order)
            for uri in spec.uris:
                is_prefix = uri.endswith("*")
                ranked.append((rank, uri[:-1] if is_prefix else uri, is_prefix, entry))
        ranked.sort(key=lambda item: item[0])
        for _, key, is_prefix, entry in ranked:
            (table._prefix if is_prefix else table._exact).setdefault(key, []).append(entry)
        table._prefix_lengths = tuple(sorted({len(key) for key in table._prefix}, reverse=True))
        return table

    def match(self, host: str, method: str, path: str) -> T | None:
        host = _host_only(host)
        for entry in self._candidates(path):
            if entry.method_matches(method) and entry.host_matches(host):
                return entry.target
        return None

    def allowed_methods(self, host: str, path: str) -> list[str] | None:
        """The methods some route takes on this host and path (for 405), or None if no route does."""
        host = _host_only(host)
        methods: set[str] = set()
        found = False
        for entry in self._candidates(path):
            if entry.host_matches(host):
                if entry.methods is None:
                    return None  # an any-method route that did not match is not a method problem
                found = True
                methods |= entry.methods
        return sorted(methods) if found else None

    def _candidates(self, path: str) -> Iterable[_Entry[T]]:
        exact = self._exact.get(path)
        if exact:
            yield from exact
        for length in self._prefix_lengths:
            if length <= len(path):
                entries = self._prefix.get(path[:length])
                if entries:
                    yield from entries


def _host_only(host: str) -> str:
    """Lower-case host without the port; IPv6 literals keep their brackets."""
    host = host.lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.partition(":")[0]
