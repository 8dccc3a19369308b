"""Node pickers: pure, no I/O; the upstream clients ask them which node to call next.

Every picker takes the set of node indexes it must not return (unhealthy, or tried already by this
request) and never returns one of them while another is left; `NodeSet` decides what to exclude.
"""

from __future__ import annotations

import bisect
import math
import time
import zlib
from collections.abc import Callable, Collection, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

NO_EXCLUSIONS: frozenset[int] = frozenset()


class WeightedRoundRobin(Generic[T]):
    """nginx's smooth weighted round robin: weights 5,1,1 give a,a,b,a,c,a,a rather than bursts."""

    def __init__(self, items: Sequence[tuple[T, int]]) -> None:
        self._items = [item for item, weight in items if weight > 0]
        self._weights = [weight for _, weight in items if weight > 0]
        self._total = sum(self._weights)
        self._current = [0] * len(self._items)
        if not self._items:
            raise ValueError("a balancer needs at least one item with a weight above 0")

    def pick(self) -> T:
        return self._items[self.pick_index()]

    def pick_index(self, exclude: Collection[int] = NO_EXCLUSIONS) -> int:
        """The position (among items with a weight) of the next pick; excluded positions are
        skipped as nginx skips down peers: their share goes to the others for as long as they are out."""
        if len(self._items) == 1:
            return 0
        best = -1
        total = 0
        current = self._current
        for i, weight in enumerate(self._weights):
            if i in exclude:
                continue
            current[i] += weight
            total += weight
            if best < 0 or current[i] > current[best]:
                best = i
        if best < 0:
            raise ValueError("every item is excluded")
        current[best] -= total
        return best


class HashRing:
    """Consistent hashing with virtual points (ketama-like): removing a node moves only the keys it had.

    Each node gets `points_per_weight * weight` points on a 32-bit ring; a key belongs to the first
    point clockwise from its hash.
    """

    def __init__(
        self, weights: Sequence[int], names: Sequence[str] | None = None, points_per_weight: int = 160
    ) -> None:
        # Points are placed by node name (its address), so a node keeps its keys whatever its place in the list.
        labels = names if names is not None else [str(index) for index in range(len(weights))]
        points: list[tuple[int, int]] = []
        for index, weight in enumerate(weights):
            for replica in range(points_per_weight * weight):
                points.append((_hash32(f"{labels[index]}-{replica}"), index))
        if not points:
            raise ValueError("a hash ring needs at least one node with a weight above 0")
        points.sort()
        self._hashes = [h for h, _ in points]
        self._owners = [owner for _, owner in points]
        self._distinct = len(set(self._owners))

    def lookup(self, key: str, exclude: Collection[int] = NO_EXCLUSIONS) -> int:
        """The node owning `key`; if it is excluded, the next distinct node clockwise (so a key's fallback
        is stable too)."""
        start = bisect.bisect(self._hashes, _hash32(key)) % len(self._hashes)
        if not exclude:
            return self._owners[start]
        seen: set[int] = set()
        size = len(self._owners)
        for step in range(size):
            owner = self._owners[(start + step) % size]
            if owner not in exclude:
                return owner
            seen.add(owner)
            if len(seen) == self._distinct:
                break
        raise ValueError("every node is excluded")


def _hash32(text: str) -> int:
    # CRC32 alone is linear: similar keys ("user-1", "user-2") land close together. MurmurHash3's
    # finaliser mixes every bit into every other.
    h = zlib.crc32(text.encode("utf-8", "surrogateescape"))
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


class LeastConnections:
    """The node with the fewest requests in flight relative to its weight; ties go round the nodes."""

    def __init__(self, weights: Sequence[int]) -> None:
        self._weights = list(weights)
        self.active = [0] * len(weights)
        self._next = 0

    def pick(self, exclude: Collection[int] = NO_EXCLUSIONS) -> int:
        size = len(self._weights)
        best = -1
        best_score = math.inf
        for step in range(size):
            i = (self._next + step) % size
            if i in exclude or self._weights[i] <= 0:
                continue
            score = (self.active[i] + 1) / self._weights[i]
            if score < best_score:
                best, best_score = i, score
        if best < 0:
            raise ValueError("every node is excluded")
        self._next = (best + 1) % size
        return best


class PeakEwma:
    """Lowest decaying average latency times requests in flight (APISIX's ewma, Finagle's peak EWMA).

    The average decays toward zero while a node is not used, so a node that was slow once is tried
    again later rather than starved forever.
    """

    def __init__(
        self, weights: Sequence[int], decay: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._weights = list(weights)
        self.decay = decay
        self.clock = clock
        self.active = [0] * len(weights)
        self._ewma = [0.0] * len(weights)
        self._stamp = [clock()] * len(weights)
        self._next = 0

    def latency(self, index: int) -> float:
        elapsed = max(self.clock() - self._stamp[index], 0.0)
        return self._ewma[index] * math.exp(-elapsed / self.decay)

    def observe(self, index: int, latency: float) -> None:
        now = self.clock()
        elapsed = max(now - self._stamp[index], 0.0)
        keep = math.exp(-elapsed / self.decay)
        previous = self._ewma[index]
        # "Peak": a sample above the average replaces it at once; lower ones are blended in.
        self._ewma[index] = latency if latency > previous else previous * keep + latency * (1 - keep)
        self._stamp[index] = now

    def pick(self, exclude: Collection[int] = NO_EXCLUSIONS) -> int:
        size = len(self._weights)
        best = -1
        best_score = math.inf
        for step in range(size):
            i = (self._next + step) % size
            if i in exclude or self._weights[i] <= 0:
                continue
            score = self.latency(i) * (self.active[i] + 1) / self._weights[i]
            if score < best_score:
                best, best_score = i, score
        if best < 0:
            raise ValueError("every node is excluded")
        self._next = (best + 1) % size
        return best
