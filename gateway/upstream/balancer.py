"""Node pickers: pure, no I/O; the upstream clients ask them which node to call next."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


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
        if len(self._items) == 1:
            return self._items[0]
        best = 0
        current = self._current
        for i, weight in enumerate(self._weights):
            current[i] += weight
            if current[i] > current[best]:
                best = i
        current[best] -= self._total
        return self._items[best]
