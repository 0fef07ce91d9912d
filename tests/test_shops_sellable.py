"""Sellable units per shop and SKU: the pure arithmetic (no servers)."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, strategies as st

from oms.channels.sellable import SafetyRules, ShareKind, apply_share, compute, pool_nodes


def test_sixty_forty_over_seven_units_floors_to_four_and_two():
    assert apply_share(7, ShareKind.RATIO, "0.6") == 4
    assert apply_share(7, ShareKind.RATIO, "0.4") == 2


def test_ratio_never_rounds_half_up():
    assert apply_share(19, ShareKind.RATIO, "0.5") == 9  # 9.5 -> 9, never 10


def test_quota_is_capped_by_the_pool():
    assert apply_share(3, ShareKind.QUOTA, "10") == 3
    assert apply_share(30, ShareKind.QUOTA, "10") == 10


def test_most_specific_safety_rule_wins():
    rules = SafetyRules.of([(None, "tea", 5), ("wh", None, 1), ("wh", "tea", 2), ("s1", None, 3)])
    assert rules.units("wh", "tea") == (2, "sku_at_node")
    assert rules.units("s2", "tea") == (5, "sku")
    assert rules.units("s1", "coffee") == (3, "node")
    assert rules.units("s2", "coffee") == (0, "none")


def test_safety_is_held_back_per_node_and_never_goes_negative():
    s = compute("shop", "tea", {"a": 3, "b": 10}, ["a", "b"], SafetyRules.of([(None, "tea", 5)]), "all", "0")
    assert [(f.node_id, f.counted) for f in s.nodes] == [("a", 0), ("b", 5)]
    assert s.pool == 5 and s.sellable == 5
    assert "pool 5" in s.derivation


def test_pool_is_the_ship_capable_nodes_or_the_named_stores():
    caps = {"wh": ["ship"], "s1": ["delivery", "pickup"], "s2": ["delivery", "ship"]}
    assert pool_nodes(["ship"], None, caps) == ["s2", "wh"]
    assert pool_nodes(["delivery"], None, caps) == ["s1", "s2"]
    assert pool_nodes(["ship"], ["s1", "gone"], caps) == ["s1"]  # named stores; inactive ones dropped


@given(pool=st.integers(min_value=-5, max_value=10_000),
       ratios=st.lists(st.integers(min_value=0, max_value=100), min_size=1, max_size=5))
def test_shops_together_are_never_told_more_than_the_pool(pool, ratios):
    total = sum(ratios) or 1
    # ratios summing to at most 1: together they never exceed the pool
    shares = [apply_share(pool, ShareKind.RATIO, str(Decimal(r) / Decimal(total))) for r in ratios]
    assert all(0 <= s <= max(pool, 0) for s in shares)
    assert sum(shares) <= max(pool, 0)


@given(avail=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(min_value=-3, max_value=500)),
       safety=st.integers(min_value=0, max_value=50),
       kind=st.sampled_from(list(ShareKind)), value=st.sampled_from(["0", "0.33", "1", "7", "1000"]))
def test_sellable_never_exceeds_what_the_nodes_have(avail, safety, kind, value):
    if kind is ShareKind.RATIO and Decimal(value) > 1:
        value = "1"
    s = compute("shop", "x", avail, ["a", "b", "c"], SafetyRules.of([(None, "x", safety)]), kind, value)
    assert 0 <= s.sellable <= s.pool <= sum(max(v, 0) for v in avail.values())
