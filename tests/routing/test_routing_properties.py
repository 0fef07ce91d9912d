"""Property tests on small random instances against a brute-force optimum."""

from __future__ import annotations

import itertools
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routing import CostWeights, Mode, Network, NodeKind, Plan, RouteLine, RouteNode, RouteRequest, Strategy, distance_m, plan
from routing.planner import delivery_base_cost, delivery_eta, load_cost, ship_base_cost, transfer_cost
from routing_testkit import CENTRE, allocated, served

W = CostWeights()
SKUS = ("A", "B", "C")
FULL = frozenset({"delivery", "pickup", "ship"})
# Mostly full-featured nodes, so that most instances have something to decide.
CAPS = [FULL, FULL, FULL, frozenset({"delivery", "pickup"}), frozenset({"pickup"}), frozenset({"ship"}), frozenset()]


@st.composite
def instances(draw: st.DrawFn, sparse: bool = False) -> tuple[list[RouteNode], dict[str, dict[str, int]], RouteRequest, frozenset[str]]:
    """A few nodes near the centre, a snapshot and one order. sparse: each node holds few SKUs (splits)."""
    n = draw(st.integers(2, 7))
    nodes = []
    for i in range(n):
        kind = draw(st.sampled_from([NodeKind.STORE, NodeKind.STORE, NodeKind.WAREHOUSE]))
        caps = draw(st.sampled_from(CAPS))
        nodes.append(
            RouteNode(
                f"N{i}", kind,
                CENTRE[0] + draw(st.floats(-0.025, 0.025)), CENTRE[1] + draw(st.floats(-0.025, 0.025)),
                caps, draw(st.sampled_from([1000, 3000, 6000])),
                draw(st.sampled_from([0, 10, 30, 30])), draw(st.integers(0, 10)),
            )
        )
    levels = [0, 1, 0, 0] if sparse else [1, 0, 2, 0, 3]  # hypothesis shrinks towards the first
    stock = {nd.id: {s: draw(st.sampled_from(levels)) for s in SKUS} for nd in nodes}
    mode = draw(st.sampled_from(list(Mode)))
    skus = SKUS if sparse else draw(st.lists(st.sampled_from(SKUS), min_size=1, max_size=3, unique=True))
    lines = tuple(RouteLine(s, 1 if sparse else draw(st.integers(1, 2))) for s in skus)
    req = RouteRequest(
        "r", mode, CENTRE[0] + draw(st.floats(-0.02, 0.02)), CENTRE[1] + draw(st.floats(-0.02, 0.02)), lines,
        pickup_node_id=draw(st.sampled_from([nd.id for nd in nodes] + ["nope"])) if mode == Mode.PICKUP else None,
        minutes_left=draw(st.sampled_from([None, None, 40.0, 60.0])),
    )
    exclude = frozenset(draw(st.lists(st.sampled_from([nd.id for nd in nodes]), max_size=1)))
    return nodes, stock, req, exclude


def _best_cover(costs: dict[str, float], holds: dict[str, dict[str, int]], demand: dict[str, int]) -> tuple[float, dict[str, int]]:
    """Brute force: serve the most units; one node if one can; else the cheapest set of nodes."""
    gives = {k: {s: min(holds[k].get(s, 0), q) for s, q in demand.items()} for k in costs}
    target = {s: min(q, sum(g[s] for g in gives.values())) for s, q in demand.items()}
    if not any(target.values()):
        return 0.0, target
    singles = [c for k, c in costs.items() if all(gives[k][s] >= t for s, t in target.items())]
    if singles:
        return min(singles), target
    best = math.inf
    for r in range(2, len(costs) + 1):
        for combo in itertools.combinations(costs, r):
            if all(sum(gives[k][s] for k in combo) >= t for s, t in target.items()):
                best = min(best, sum(costs[k] for k in combo))
    return best, target


def _expected(nodes: list[RouteNode], stock: dict[str, dict[str, int]], req: RouteRequest, exclude: frozenset[str]) -> tuple[float, dict[str, int], bool]:
    """(optimal cost, units served per SKU, whether the plan must be 'alternatives')."""
    demand = {ln.sku: ln.quantity for ln in req.lines}
    if req.mode == Mode.DELIVERY:
        costs = {}
        for nd in nodes:
            d = distance_m(req.lat, req.lng, nd.lat, nd.lng)
            if "delivery" not in nd.capabilities or nd.id in exclude or d > nd.delivery_radius_m:
                continue
            if req.minutes_left is not None and delivery_eta(nd, d, W) > req.minutes_left:
                continue
            costs[nd.id] = delivery_base_cost(d, W) + load_cost(nd, W)
        cost, target = _best_cover(costs, stock, demand)
        return cost, target, False
    if req.mode == Mode.SHIP:
        costs = {
            nd.id: ship_base_cost(nd, distance_m(req.lat, req.lng, nd.lat, nd.lng), W) + load_cost(nd, W)
            for nd in nodes
            if "ship" in nd.capabilities and nd.id not in exclude
        }
        cost, target = _best_cover(costs, stock, demand)
        return cost, target, False
    named = next((nd for nd in nodes if nd.id == req.pickup_node_id), None)
    if named is None:
        return 0.0, {}, False
    whole = [
        nd for nd in nodes
        if nd.id != named.id and nd.kind == NodeKind.STORE and "pickup" in nd.capabilities and nd.id not in exclude
        and all(stock[nd.id][s] >= q for s, q in demand.items())
    ]
    if "pickup" not in named.capabilities:
        return 0.0, {}, bool(whole)
    own = {s: 0 if named.id in exclude else min(stock[named.id][s], q) for s, q in demand.items()}
    missing = {s: q - own[s] for s, q in demand.items() if q > own[s]}
    if not missing:
        return 0.0, own, False
    costs = {
        nd.id: transfer_cost(nd, distance_m(named.lat, named.lng, nd.lat, nd.lng), W)
        for nd in nodes
        if nd.id != named.id and "ship" in nd.capabilities and nd.id not in exclude
    }
    cost, target = _best_cover(costs, stock, missing)
    if any(target[s] < q for s, q in missing.items()) and whole:
        return 0.0, {}, True
    return cost, {s: own[s] + target.get(s, 0) for s in demand}, False


def _check_invariants(p: Plan, stock: dict[str, dict[str, int]], req: RouteRequest) -> None:
    for (node, sku), units in allocated(p).items():
        assert 0 < units <= stock.get(node, {}).get(sku, 0), "takes more than the snapshot holds"
    got = served(p)
    short: dict[str, int] = {}
    for u in p.unserved:
        assert u.quantity > 0 and u.reason
        short[u.sku] = short.get(u.sku, 0) + u.quantity
    for ln in req.lines:
        assert got.get(ln.sku, 0) + short.get(ln.sku, 0) == ln.quantity, f"{ln.sku} not fully accounted for"
    assert p.reason


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(instances(), instances(sparse=True)))
def test_plan_is_optimal_within_stock_and_accounts_for_every_unit(inst: tuple) -> None:
    nodes, stock, req, exclude = inst
    p = plan(Network(nodes), req, stock, exclude)
    _check_invariants(p, stock, req)
    cost, target, alternatives = _expected(nodes, stock, req, exclude)
    if alternatives:
        assert p.strategy == Strategy.ALTERNATIVES and p.alternatives and not p.allocations
        return
    assert p.strategy != Strategy.ALTERNATIVES
    assert served(p) == {s: q for s, q in target.items() if q > 0}
    assert math.isclose(p.cost, cost, abs_tol=0.01), (p.cost, cost, p.reason)
    if p.strategy == Strategy.SPLIT:  # split only when no single node could do it
        assert len(p.allocations) >= 2


@settings(max_examples=100, deadline=None)
@given(instances())
def test_plan_is_deterministic(inst: tuple) -> None:
    nodes, stock, req, exclude = inst
    a = plan(Network(nodes), req, stock, exclude)
    b = plan(Network(list(reversed(nodes))), req, stock, exclude)
    assert (a.allocations, a.unserved, a.strategy, a.reason, a.cost, a.alternatives) == (
        b.allocations, b.unserved, b.strategy, b.reason, b.cost, b.alternatives
    )
