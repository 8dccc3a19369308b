"""Weighted round robin: proportions and smooth interleaving."""

from __future__ import annotations

from collections import Counter

import pytest

from gateway.upstream.balancer import WeightedRoundRobin


def test_smooth_interleaving_matches_nginx() -> None:
    picker = WeightedRoundRobin([("a", 5), ("b", 1), ("c", 1)])
    assert [picker.pick() for _ in range(7)] == ["a", "a", "b", "a", "c", "a", "a"]


def test_proportions_follow_weights() -> None:
    picker = WeightedRoundRobin([("a", 3), ("b", 2), ("z", 0)])
    counts = Counter(picker.pick() for _ in range(500))
    assert counts == {"a": 300, "b": 200}


def test_single_node() -> None:
    picker = WeightedRoundRobin([("only", 1)])
    assert {picker.pick() for _ in range(3)} == {"only"}


def test_no_weighted_node_is_refused() -> None:
    with pytest.raises(ValueError):
        WeightedRoundRobin([("a", 0)])
