"""Pickers: weighted round robin, the consistent-hash ring, least connections, peak EWMA."""

from __future__ import annotations

from collections import Counter

import pytest

from gateway.upstream.balancer import HashRing, LeastConnections, PeakEwma, WeightedRoundRobin


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


def test_excluded_items_are_skipped_and_their_share_goes_to_the_others() -> None:
    picker = WeightedRoundRobin([("a", 2), ("b", 1), ("c", 1)])
    picks = Counter(picker.pick_index(exclude={0}) for _ in range(100))
    assert picks == {1: 50, 2: 50}
    with pytest.raises(ValueError):
        picker.pick_index(exclude={0, 1, 2})


def test_ring_keeps_a_key_on_one_node() -> None:
    ring = HashRing([1, 1, 1])
    assert len({ring.lookup("user-42") for _ in range(20)}) == 1


def test_ring_spreads_keys_by_weight() -> None:
    ring = HashRing([1, 1, 2])
    counts = Counter(ring.lookup(f"key-{i}") for i in range(20_000))
    assert counts[2] == pytest.approx(10_000, rel=0.1)
    assert counts[0] == pytest.approx(5_000, rel=0.15)


def test_removing_a_node_moves_only_its_keys() -> None:
    keys = [f"key-{i}" for i in range(10_000)]
    before = HashRing([1, 1, 1, 1])
    owners = {key: before.lookup(key) for key in keys}
    # Excluding node 3 is what a ring without node 3 looks like: its keys move, nobody else's.
    moved = [key for key in keys if before.lookup(key, exclude={3}) != owners[key]]
    assert all(owners[key] == 3 for key in moved)
    assert len(moved) == pytest.approx(len(keys) / 4, rel=0.15)
    # A ring built without the node agrees for the keys that stayed.
    after = HashRing([1, 1, 1, 0])
    changed = [key for key in keys if after.lookup(key) != owners[key]]
    assert set(changed) == set(moved)


def test_ring_refuses_when_everything_is_excluded() -> None:
    with pytest.raises(ValueError):
        HashRing([1, 1]).lookup("k", exclude={0, 1})


def test_least_connections_prefers_the_idle_node_then_rotates_ties() -> None:
    picker = LeastConnections([1, 1, 1])
    picker.active[:] = [3, 0, 1]
    assert picker.pick() == 1
    picker.active[:] = [0, 0, 0]
    assert [picker.pick() for _ in range(6)] == [2, 0, 1, 2, 0, 1]


def test_least_connections_weighs_connections() -> None:
    picker = LeastConnections([4, 1])
    picker.active[:] = [4, 0]  # (4+1)/4 > (0+1)/1
    assert picker.pick() == 1
    assert picker.pick(exclude={1}) == 0


def test_ewma_prefers_the_faster_node_and_forgets_slowly() -> None:
    now = [100.0]
    picker = PeakEwma([1, 1], decay=10.0, clock=lambda: now[0])
    picker.observe(0, 0.5)
    picker.observe(1, 0.05)
    assert [picker.pick() for _ in range(5)] == [1] * 5
    picker.active[1] = 20  # a fast node that is swamped loses to the slower idle one
    assert picker.pick() == 0
    picker.active[1] = 0
    now[0] += 60  # long unused: the old average has decayed away, a fresh sample counts almost alone
    assert picker.latency(0) < 0.002
    picker.observe(0, 0.01)
    assert picker.latency(0) == pytest.approx(0.01, rel=0.2)


def test_ring_places_nodes_by_name_so_list_order_does_not_matter() -> None:
    names = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
    ring = HashRing([1, 1, 1], names)
    reordered = HashRing([1, 1, 1], list(reversed(names)))
    for i in range(500):
        assert names[ring.lookup(f"k{i}")] == list(reversed(names))[reordered.lookup(f"k{i}")]


def test_similar_keys_spread_evenly() -> None:
    ring = HashRing([1, 1, 1, 1], [f"127.0.0.1:{port}" for port in (40001, 40002, 40003, 40004)])
    counts = Counter(ring.lookup(f"user-{i}") for i in range(2000))
    assert all(350 <= count <= 650 for count in counts.values()), counts
