"""Route many pending orders together within each node's picking capacity."""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from ortools.graph.python import min_cost_flow

from routing.geo import Near, Network
from routing.model import (
    Allocation,
    CostWeights,
    Mode,
    Plan,
    Role,
    RouteLine,
    RouteRequest,
    Strategy,
    Unserved,
    WavePlan,
)
from routing.planner import (
    SCALE,
    Stock,
    _demand,
    delivery_base_cost,
    plan_with,
    queue_minutes,
    ship_base_cost,
)

MAX_BUCKETS = 24  # slot groups per node in the flow: keeps big warehouses from adding 1000s of nodes
UNSERVED_COST = 10**9  # milli-points; above any served assignment, so the flow serves all it can


class _Single(NamedTuple):
    """One node that can serve a whole order in this wave."""

    node: int
    distance_m: float
    base: float  # cost without load; load depends on the slot the order gets
    deadline: int  # last slot (0 = first new order at the node) that still meets the promise


class _Wave:
    """Mutable state of one wave: stock left, slots used per node, plans so far."""

    def __init__(self, network: Network, requests: Sequence[RouteRequest], stock: Stock, capacity: Mapping[str, int] | None, w: CostWeights) -> None:
        self.net = network
        self.nodes = network.nodes
        self.requests = requests
        self.w = w
        # By default a wave is the next hour: what a node picks per hour minus what is queued.
        default = [max(0, n.capacity_per_hour - n.open_picks) for n in self.nodes]
        self.cap = [max(0, int(capacity.get(n.id, d))) if capacity is not None else d for n, d in zip(self.nodes, default, strict=True)]
        self.used = [0] * len(self.nodes)
        self.full: set[str] = {n.id for n, c in zip(self.nodes, self.cap, strict=True) if c <= 0}
        self.left: dict[str, dict[str, int]] = {k: {s: int(u) for s, u in v.items() if u > 0} for k, v in stock.items()}
        self.demand = [_demand(r.lines) for r in requests]
        self.near: list[list[Near] | None] = [None] * len(requests)
        self.plans: list[Plan | None] = [None] * len(requests)
        self.cost = 0.0

    # -- slots and costs ------------------------------------------------------------------

    def wait(self, i: int, slot: int) -> float:
        """Minutes before the order in this slot (0 = first new one) starts being picked."""
        return queue_minutes(self.nodes[i], slot)

    def slot_load(self, i: int, slot: float) -> float:
        return self.w.per_queue_minute * min(queue_minutes(self.nodes[i]) + slot * 60.0 / max(1, self.nodes[i].capacity_per_hour), self.w.max_queue_minutes)

    def _ride(self, d: float) -> float:
        return d / 1000.0 / self.w.courier_kmh * 60.0 if self.w.courier_kmh > 0 else 0.0

    # -- single-node options --------------------------------------------------------------

    def singles(self, r: int) -> list[_Single]:
        """Nodes that can serve request r whole, now: stock left, a free slot, the promise."""
        req, demand, w = self.requests[r], self.demand[r], self.w
        if not demand:
            return []
        near = self.near[r]
        if near is None:
            if req.mode == Mode.DELIVERY:
                near = self.net.delivery_near(req.lat, req.lng, req.approximate)
            elif req.mode == Mode.SHIP:
                near = self.net.ship_near(req.lat, req.lng)
            else:
                si = self.net.index_of(req.pickup_node_id or "")
                ok = si is not None and "pickup" in self.nodes[si].capabilities
                near = [Near(si, 0.0)] if ok and si is not None else []
            self.near[r] = near
        out = []
        for n in near:
            i, node = n.index, self.nodes[n.index]
            if node.id in self.full:
                continue
            s = self.left.get(node.id)
            if not s or any(s.get(sku, 0) < q for sku, q in demand.items()):
                continue
            deadline = self.cap[i] - 1
            if req.mode == Mode.DELIVERY:
                base = delivery_base_cost(n.distance_m, w)
                if req.minutes_left is not None:
                    if node.capacity_per_hour <= 0:
                        continue
                    slack = req.minutes_left - w.courier_minutes - self._ride(n.distance_m)
                    deadline = min(deadline, math.floor(slack * node.capacity_per_hour / 60.0 + 1e-9) - node.open_picks)
            elif req.mode == Mode.SHIP:
                base = ship_base_cost(node, n.distance_m, w)
            else:
                base = 0.0
            if deadline >= self.used[i]:
                out.append(_Single(i, n.distance_m, base, deadline))
        return out

    def commit_single(self, r: int, opt: _Single) -> None:
        """Give request r to one node at its next free slot."""
        i, node, req, demand = opt.node, self.nodes[opt.node], self.requests[r], self.demand[r]
        slot = self.used[i]
        self._take(i, demand)
        wait = self.wait(i, slot)
        ready = wait + self.w.courier_minutes + self._ride(opt.distance_m) if req.mode == Mode.DELIVERY else wait
        cost = opt.base + self.slot_load(i, slot)
        lines = tuple(RouteLine(s, q) for s, q in demand.items())
        alloc = Allocation(node.id, lines, round(opt.distance_m, 1), Role.SERVE, round(ready, 1), round(cost, 3))
        self.cost += cost
        self.plans[r] = Plan((alloc,), (), Strategy.SINGLE, f"wave: {node.kind} {node.id}, {opt.distance_m / 1000:.1f} km, slot {slot + 1}", round(cost, 3))

    def _take(self, i: int, demand: Mapping[str, int]) -> None:
        node_id = self.nodes[i].id
        s = self.left[node_id]
        for sku, q in demand.items():
            s[sku] -= q
        self.used[i] += 1
        if self.used[i] >= self.cap[i]:
            self.full.add(node_id)

    def fits(self, i: int, demand: Mapping[str, int]) -> bool:
        s = self.left.get(self.nodes[i].id)
        return bool(s) and all(s.get(sku, 0) >= q for sku, q in demand.items())

    # -- orders no single node can take ---------------------------------------------------

    def route_rest(self, r: int) -> None:
        """Split / transfer / nothing, planned against what is left, committed only if complete."""
        req, demand = self.requests[r], self.demand[r]
        p = plan_with(self.net, req, self.left, frozenset(self.full), self.w, self.used)
        if p.allocations and not p.unserved:
            for a in p.allocations:
                i = self.net.index_of(a.node_id)
                assert i is not None
                self._take(i, {ln.sku: ln.quantity for ln in a.lines})
            self.cost += p.cost
            self.plans[r] = p
            return
        # A partial plan would spend scarce slots on an order that still cannot go out: report it.
        reasons = {u.sku: u.reason for u in p.unserved}
        why = p.reason if p.strategy != Strategy.NONE or not p.unserved else p.unserved[0].reason
        unserved = tuple(Unserved(s, q, reasons.get(s, f"wave: {why}")) for s, q in demand.items())
        strategy = Strategy.ALTERNATIVES if p.alternatives and p.strategy == Strategy.ALTERNATIVES else Strategy.NONE
        self.plans[r] = Plan((), unserved, strategy, f"wave: {why}", 0.0, p.alternatives)

    def result(self, method: str, t0: float, rounds: int) -> WavePlan:
        plans = tuple(p if p is not None else Plan((), (), Strategy.NONE, "order has no lines", 0.0) for p in self.plans)
        load = tuple((n.id, u) for n, u in zip(self.nodes, self.used, strict=True) if u > 0)
        return WavePlan(
            plans=plans,
            cost=round(self.cost, 3),
            unserved_orders=sum(1 for p in plans if p.unserved),
            load=load,
            method=method,
            solve_ms=round((time.perf_counter() - t0) * 1000, 1),
            rounds=rounds,
        )


def _flow_round(wave: _Wave, pending: list[int]) -> tuple[list[int], list[int]]:
    """One min-cost-flow assignment of pending orders to single nodes.

    Graph: order -> (node, slot bucket) -> sink. A bucket's arc to the sink costs the load of
    its slots, so the flow fills a nearby node only while that beats the next node's distance
    (convex load cost). Buckets of one node are chained later -> earlier: an order whose
    promise allows slot k may take any slot before it, so promises are exact, not heuristics.
    Returns (orders to commit in EDF order per node, orders left for the next stage).
    """
    options = {r: wave.singles(r) for r in pending}
    routed = [r for r in pending if options[r]]
    rest = [r for r in pending if not options[r]]
    if not routed:
        return [], rest
    # Slot buckets for every node some order could use.
    used_nodes = sorted({o.node for r in routed for o in options[r]})
    first_bucket: dict[int, int] = {}  # node -> graph id of its first bucket
    lasts: dict[int, list[int]] = {}  # node -> absolute last slot of each of its buckets
    size: list[int] = []  # slots per bucket
    load: list[int] = []  # milli-points per order in the bucket
    owner: list[int] = []
    base_id = len(routed)
    for i in used_nodes:
        g = max(1, math.ceil((wave.cap[i] - wave.used[i]) / MAX_BUCKETS))
        first_bucket[i] = base_id + len(size)
        lasts[i] = []
        start = wave.used[i]
        while start < wave.cap[i]:
            n = min(g, wave.cap[i] - start)
            size.append(n)
            lasts[i].append(start + n - 1)
            load.append(round(wave.slot_load(i, start + (n - 1) / 2) * SCALE))
            owner.append(i)
            start += n
    sink = base_id + len(size)
    tails: list[int] = []
    heads: list[int] = []
    caps: list[int] = []
    costs: list[int] = []
    arc_order: list[int] = []  # order->bucket arcs: the request (-1 for the bypass)
    arc_node: list[int] = []
    for k, r in enumerate(routed):
        for o in options[r]:
            # the latest bucket whose every slot still meets the promise (conservative)
            b = bisect.bisect_right(lasts[o.node], o.deadline) - 1
            if b < 0:
                continue
            tails.append(k)
            heads.append(first_bucket[o.node] + b)
            caps.append(1)
            costs.append(round(o.base * SCALE))
            arc_order.append(r)
            arc_node.append(o.node)
        tails.append(k)
        heads.append(sink)
        caps.append(1)
        costs.append(UNSERVED_COST)
        arc_order.append(-1)
        arc_node.append(-1)
    n_order_arcs = len(tails)
    for bi in range(len(size)):
        g = base_id + bi
        tails.append(g)
        heads.append(sink)
        caps.append(size[bi])
        costs.append(load[bi])
        if bi > 0 and owner[bi - 1] == owner[bi]:
            tails.append(g)
            heads.append(g - 1)
            caps.append(len(routed))
            costs.append(0)
    smcf = min_cost_flow.SimpleMinCostFlow()
    smcf.add_arcs_with_capacity_and_unit_cost(
        np.array(tails, dtype=np.int32), np.array(heads, dtype=np.int32), np.array(caps, dtype=np.int64), np.array(costs, dtype=np.int64)
    )
    supplies = np.zeros(sink + 1, dtype=np.int64)
    supplies[: len(routed)] = 1
    supplies[sink] = -len(routed)
    smcf.set_nodes_supplies(np.arange(sink + 1, dtype=np.int32), supplies)
    status = smcf.solve()
    if status != smcf.OPTIMAL:
        # Cannot happen (every order has a bypass to the sink); if it does, let greedy decide.
        raise RuntimeError(f"min cost flow failed: {status}")
    flows = smcf.flows(np.arange(n_order_arcs, dtype=np.int32))
    chosen: dict[int, int] = {}
    for a in np.nonzero(flows)[0]:
        r = arc_order[a]
        if r >= 0:
            chosen[r] = arc_node[a]
    rest += [r for r in routed if r not in chosen]
    by_node: dict[int, list[tuple[int, int]]] = {}
    deadline = {(r, o.node): o.deadline for r in chosen for o in options[r]}
    for r, i in chosen.items():
        by_node.setdefault(i, []).append((deadline[(r, i)], r))
    rejected: list[int] = []
    for i in sorted(by_node):
        for _, r in sorted(by_node[i]):  # earliest promise first within a node (EDF)
            opt = next(o for o in options[r] if o.node == i)
            if wave.fits(i, wave.demand[r]):
                wave.commit_single(r, opt)
            else:
                rejected.append(r)  # stock taken by an earlier order at this node: try again
    return rejected, rest


def plan_wave(
    network: Network,
    requests: Sequence[RouteRequest],
    stock: Stock,
    capacity: Mapping[str, int] | None = None,
    weights: CostWeights = CostWeights(),
    *,
    max_rounds: int = 4,
) -> WavePlan:
    """Assign a wave of orders together: min-cost flow over (order, node, slot), within capacity.

    capacity: node id -> orders the node can still pick in this wave (default: its capacity
    per hour minus its open picks). Orders that one node can serve whole are assigned by a
    min-cost flow; stock shared between orders at a node is settled by re-solving the orders
    that lost it (up to max_rounds); the rest is split or transferred one by one (CP-SAT).
    """
    t0 = time.perf_counter()
    wave = _Wave(network, requests, stock, capacity, weights)
    pending = list(range(len(requests)))
    rest: list[int] = []
    rounds = 0
    while pending and rounds < max_rounds:
        rounds += 1
        pending, no_single = _flow_round(wave, pending)
        rest += no_single
    for r in sorted(rest + pending):
        wave.route_rest(r)
    return wave.result("flow", t0, rounds)


def greedy_wave(
    network: Network,
    requests: Sequence[RouteRequest],
    stock: Stock,
    capacity: Mapping[str, int] | None = None,
    weights: CostWeights = CostWeights(),
) -> WavePlan:
    """Baseline: each order in turn takes the nearest node that can serve it whole right now."""
    t0 = time.perf_counter()
    wave = _Wave(network, requests, stock, capacity, weights)
    for r in range(len(requests)):
        opts = wave.singles(r)
        if opts:
            wave.commit_single(r, min(opts, key=lambda o: (o.distance_m, o.node)))
        else:
            wave.route_rest(r)
    return wave.result("greedy", t0, 0)
