"""traffic-split: config, rule matching, weighted choice, the override the target reads."""

from __future__ import annotations

from collections import Counter

import pytest
from traffic_support import config_issues, make_ctx

from gateway.config.models import Upstream
from gateway.plugins.traffic_split import TrafficSplit, TrafficSplitConfig, referenced_upstream_ids

CANARY = {"nodes": {"127.0.0.1:2": 1}}


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"rules": [{"weighted_upstreams": []}]}, "rules[0].weighted_upstreams"),
        ({"rules": [{"weighted_upstreams": [{"weight": -1}]}]}, "rules[0].weighted_upstreams[0].weight"),
        ({"rules": [{"weighted_upstreams": [{"weight": 0}]}]}, "rules[0]"),
        ({"rules": [{"weighted_upstreams": [{"upstream": {"nodes": {}}}]}]}, "rules[0].weighted_upstreams[0].upstream"),
        (
            {"rules": [{"weighted_upstreams": [{"upstream_id": "u", "upstream": CANARY}]}]},
            "rules[0].weighted_upstreams[0]",
        ),
        ({"rules": [{"match": [{"vars": [["nope", "==", 1]]}], "weighted_upstreams": [{}]}]}, "rules[0].match[0].vars"),
    ],
)
def test_config_refuses_bad_input(config: dict[str, object], path: str) -> None:
    issues = config_issues("traffic-split", config)
    assert any(key.startswith(f"routes[0].plugins.traffic-split.{path}") for key in issues), issues


def test_config_accepts_apisix_example() -> None:
    config = {
        "rules": [
            {
                "match": [{"vars": [["arg_name", "==", "jack"], ["http_user-id", ">", "23"]]}],
                "weighted_upstreams": [{"upstream": {"name": "canary", "type": "roundrobin", **CANARY}, "weight": 3}],
            },
            {"weighted_upstreams": [{"upstream_id": "u", "weight": 1}, {"weight": 1}]},
        ]
    }
    assert config_issues("traffic-split", config) == {}
    assert referenced_upstream_ids(TrafficSplitConfig.model_validate(config)) == ["u"]


async def test_weights_split_the_traffic() -> None:
    plugin = TrafficSplit(
        TrafficSplitConfig.model_validate(
            {"rules": [{"weighted_upstreams": [{"upstream": CANARY, "weight": 1}, {"upstream_id": "b", "weight": 3}]}]}
        )
    )
    picks: Counter[object] = Counter()
    for _ in range(400):
        ctx = make_ctx()
        assert await plugin.access(ctx) is None
        override = ctx.upstream_override
        picks["canary" if isinstance(override, Upstream) else override] += 1
    assert picks == {"canary": 100, "b": 300}


async def test_the_first_matching_rule_decides_and_no_match_keeps_the_route_upstream() -> None:
    plugin = TrafficSplit(
        TrafficSplitConfig.model_validate(
            {
                "rules": [
                    {
                        "match": [{"vars": [["http_x_canary", "==", "1"]]}, {"vars": [["arg_beta", "==", "yes"]]}],
                        "weighted_upstreams": [{"upstream_id": "canary"}],
                    },
                    {"match": [{"vars": [["arg_beta", "==", "no"]]}], "weighted_upstreams": [{"upstream_id": "other"}]},
                ]
            }
        )
    )

    async def chosen(**kwargs: object) -> object:
        ctx = make_ctx(**kwargs)  # type: ignore[arg-type]
        await plugin.access(ctx)
        return ctx.upstream_override

    assert await chosen(headers=[("X-Canary", "1")]) == "canary"
    assert await chosen(query="beta=yes") == "canary"
    assert await chosen(query="beta=no") == "other"
    assert await chosen() is None


async def test_an_entry_without_upstream_is_the_route_own() -> None:
    plugin = TrafficSplit(
        TrafficSplitConfig.model_validate({"rules": [{"weighted_upstreams": [{"weight": 1}, {"upstream_id": "x"}]}]})
    )
    seen = []
    for _ in range(4):
        ctx = make_ctx()
        await plugin.access(ctx)
        seen.append(ctx.upstream_override)
    assert Counter(seen) == {None: 2, "x": 2}


def test_a_rule_without_weighted_upstreams_means_the_route_s_upstream() -> None:
    # APISIX's default: [{weight: 1}], the route's own upstream.
    assert config_issues("traffic-split", {"rules": [{"match": [{"vars": [["arg_x", "==", "1"]]}]}]}) == {}
    many = [{"weight": 1}] * 21
    assert any(
        "weighted_upstreams" in key for key in config_issues("traffic-split", {"rules": [{"weighted_upstreams": many}]})
    )
