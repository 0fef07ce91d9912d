"""Route many pending orders together within each node's picking capacity."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence

import msgspec
import numpy as np
from ortools.graph.python import min_cost_flow

from routing.geo import Near, Network
from routing.model import (
    Allocation,
    CostWeights,
    Mode,
    NodeKind,
    Plan,
    Role,
    RouteLine,
    RouteRequest,
    Strategy,
    Unserved,
    WavePlan,
)
from routing.planner import SCALE, Stock, _demand, _minutes, load_cost, plan_with, queue_minutes

# Flow size knobs (10k orders x 500 nodes: ~90k arcs, ~0.3 s to solve). A node's free slots are
# grouped into at most MAX_BUCKETS buckets so a 3,000/h warehouse adds 16 graph nodes, not
# 3,000; promises are checked against a bucket's last slot, so they stay safe. Each order
# offers the flow only its MAX_OPTIONS cheapest feasible nodes: on the benchmark, more options
# changed total cost by under 1% and doubled the solve time.
MAX_BUCKETS = 16
MAX_OPTIONS = 10


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, e) for each pair, vectorised."""
    counts = ends - starts
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offsets = np.repeat(starts - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
    return offsets + np.arange(total)


class _Row(Mapping[str, int]):
    """One node's remaining stock, as the planner reads it."""

    def __init__(self, row: np.ndarray, skus: Mapping[str, int]) -> None:
        self._row, self._skus = row, skus

    def __getitem__(self, sku: str) -> int:
        return int(self._row[self._skus[sku]])

    def __iter__(self) -> Iterator[str]:
        return iter(self._skus)

    def __len__(self) -> int:
        return len(self._skus)

    def get(self, sku: str, default: int | None = None) -> int | None:  # type: ignore[override]
        j = self._skus.get(sku)  # hot path of the planner: skip Mapping.get's try/except
        return default if j is None else int(self._row[j])


class _Remaining(Mapping[str, Mapping[str, int]]):
    """The wave's remaining-stock matrix as a node id -> sku -> units mapping."""

    def __init__(self, wave: _Wave) -> None:
        self._w = wave

    def __getitem__(self, node_id: str) -> Mapping[str, int]:
        i = self._w.net.index_of(node_id)
        if i is None:
            raise KeyError(node_id)
        return _Row(self._w.stock[i], self._w.sku_index)

    def __iter__(self) -> Iterator[str]:
        return (n.id for n in self._w.nodes)

    def __len__(self) -> int:
        return len(self._w.nodes)

    def get(self, node_id: str, default: Mapping[str, int] | None = None) -> Mapping[str, int] | None:  # type: ignore[override]
        i = self._w.net.index_of(node_id)
        return default if i is None else _Row(self._w.stock[i], self._w.sku_index)


class _Wave:
    """State of one wave: remaining stock, slots used per node, each order's candidate nodes.

    Candidates are flat arrays of (order, node) pairs so that feasibility and the flow graph
    are built with numpy, not per-order Python loops.
    """

    def __init__(
        self, network: Network, requests: Sequence[RouteRequest], stock: Stock, capacity: Mapping[str, int] | None, w: CostWeights, blind: bool = False
    ) -> None:
        self.net, self.nodes, self.requests, self.w = network, network.nodes, requests, w
        self.blind = blind  # ignore capacity and promises (the naive baseline); stock still counts
        nodes = self.nodes
        n = len(requests)
        self.cph = np.array([nd.capacity_per_hour for nd in nodes], dtype=np.int64)
        self.open = np.array([nd.open_picks for nd in nodes], dtype=np.int64)
        # By default a wave is the next hour: what a node picks per hour minus what is queued.
        default = np.maximum(0, self.cph - self.open)
        self.cap = default if capacity is None else np.array([max(0, int(capacity.get(nd.id, d))) for nd, d in zip(nodes, default.tolist(), strict=True)], dtype=np.int64)
        self.used = np.zeros(len(nodes), dtype=np.int64)
        # Demand and a compact stock matrix over the SKUs this wave asks for.
        self.demand = [_demand(r.lines) for r in requests]
        self.sku_index: dict[str, int] = {}
        for d in self.demand:
            for sku in d:
                self.sku_index.setdefault(sku, len(self.sku_index))
        self.stock = np.zeros((len(nodes), max(1, len(self.sku_index))), dtype=np.int64)
        for node_id, skus in stock.items():
            i = network.index_of(node_id)
            if i is None:
                continue
            items = ((s, skus.get(s, 0)) for s in self.sku_index) if len(skus) > len(self.sku_index) else skus.items()
            for sku, units in items:
                j = self.sku_index.get(sku)
                if j is not None and units > 0:
                    self.stock[i, j] = int(units)
        counts = np.array([len(d) for d in self.demand], dtype=np.int64)
        self.line_start = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        self.line_sku = np.array([self.sku_index[s] for d in self.demand for s in d], dtype=np.int64)
        self.line_qty = np.array([q for d in self.demand for q in d.values()], dtype=np.int64)
        self._build_pairs(n)
        self.plans: list[Plan | None] = [None] * n
        self.cost = 0.0

    def _build_pairs(self, n: int) -> None:
        """Every (order, node) that could serve the order whole, with base cost and promise slot."""
        w, reqs = self.w, self.requests
        lat = np.array([r.lat for r in reqs], dtype=float)
        lng = np.array([r.lng for r in reqs], dtype=float)
        mode = np.array([0 if r.mode == Mode.DELIVERY else 1 if r.mode == Mode.SHIP else 2 for r in reqs], dtype=np.int64)
        has_lines = np.array([bool(d) for d in self.demand], dtype=bool)
        chunks = []
        for m, finder in ((0, "delivery"), (1, "ship")):
            at = np.flatnonzero((mode == m) & has_lines)
            if len(at) == 0:
                continue
            if finder == "delivery":
                approx = np.array([reqs[k].approximate for k in at.tolist()], dtype=bool)
                pos, idx, d = self.net.delivery_pairs(lat[at], lng[at], approx)
            else:
                pos, idx, d = self.net.ship_pairs(lat[at], lng[at])
            chunks.append((at[pos], idx, d))
        pick = []
        for k in np.flatnonzero((mode == 2) & has_lines).tolist():
            si = self.net.index_of(reqs[k].pickup_node_id or "")
            if si is not None and "pickup" in self.nodes[si].capabilities:
                pick.append((k, si))
        if pick:
            chunks.append((np.array([k for k, _ in pick]), np.array([i for _, i in pick]), np.zeros(len(pick))))
        if chunks:
            order = np.concatenate([c[0] for c in chunks]).astype(np.int64)
            node = np.concatenate([c[1] for c in chunks]).astype(np.int64)
            dist = np.concatenate([c[2] for c in chunks]).astype(float)
        else:
            order, node, dist = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, float)
        s = np.argsort(order, kind="stable")
        self.p_order, self.p_node, self.p_dist = order[s], node[s], dist[s]
        self.p_start = np.concatenate(([0], np.cumsum(np.bincount(self.p_order, minlength=n)))).astype(np.int64)
        pm = mode[self.p_order]
        is_store = np.array([nd.kind == NodeKind.STORE for nd in self.nodes], dtype=bool)[self.p_node]
        km = self.p_dist / 1000.0
        self.p_base = np.where(
            pm == 0, w.shipment + w.per_km * km, np.where(pm == 1, w.shipment + w.store_ship * is_store + w.ship_per_km * km, 0.0)
        )
        self.p_ride = km / w.courier_kmh * 60.0 if w.courier_kmh > 0 else np.zeros_like(km)
        # Last slot (0 = the node's first new order in this wave) that still meets the promise.
        deadline = self.cap[self.p_node] - 1
        ml = np.array([r.minutes_left if r.minutes_left is not None else np.inf for r in reqs], dtype=float)[self.p_order]
        timed = (pm == 0) & np.isfinite(ml)
        cph, opn = self.cph[self.p_node], self.open[self.p_node]
        with np.errstate(invalid="ignore", over="ignore"):
            slack = ml - w.handling_minutes - self.p_ride
            latest = np.floor(slack * np.maximum(cph, 1) / 60.0 + 1e-9) - opn
        latest = np.where(cph > 0, latest, -1)
        self.p_deadline = np.where(timed, np.minimum(deadline, np.nan_to_num(latest, nan=-1, posinf=1e12, neginf=-1)), deadline).astype(np.int64)
        self.p_tier = (pm == 1) & is_store  # ship: warehouses before stores, also for greedy

    # -- costs ----------------------------------------------------------------------------

    def slot_load(self, i: np.ndarray | int, slot: np.ndarray | float) -> np.ndarray:
        """Load penalty of the order in this slot: queue minutes before it is picked, capped."""
        cph = self.cph[i]
        with np.errstate(divide="ignore", invalid="ignore"):
            minutes = np.where(cph > 0, (self.open[i] + slot) * 60.0 / np.maximum(cph, 1), np.inf)
        return self.w.per_queue_minute * np.minimum(minutes, self.w.max_queue_minutes)

    # -- feasibility ----------------------------------------------------------------------

    def feasible(self, orders: np.ndarray) -> np.ndarray:
        """Pair indices, among these orders', whose node has the stock, a free slot and the time."""
        pidx = _ranges(self.p_start[orders], self.p_start[orders + 1])
        if len(pidx) == 0:
            return pidx
        node = self.p_node[pidx]
        if not self.blind:
            used = self.used[node]
            ok = (used < self.cap[node]) & (self.p_deadline[pidx] >= used)
            pidx, node = pidx[ok], node[ok]
        if len(pidx) == 0:
            return pidx
        o = self.p_order[pidx]
        lidx = _ranges(self.line_start[o], self.line_start[o + 1])
        per_pair = self.line_start[o + 1] - self.line_start[o]
        enough = self.stock[np.repeat(node, per_pair), self.line_sku[lidx]] >= self.line_qty[lidx]
        starts = np.concatenate(([0], np.cumsum(per_pair)[:-1]))
        return pidx[np.minimum.reduceat(enough, starts).astype(bool)]

    def fits(self, r: int, i: int) -> bool:
        if self.used[i] >= self.cap[i]:
            return False
        row = self.stock[i]
        return all(row[self.sku_index[s]] >= q for s, q in self.demand[r].items())

    # -- commits --------------------------------------------------------------------------

    def commit_single(self, p: int, stock_taken: bool = False) -> None:
        """Give the pair's order to its node at the node's next free slot."""
        r, i, dist = int(self.p_order[p]), int(self.p_node[p]), float(self.p_dist[p])
        node, req, demand, w = self.nodes[i], self.requests[r], self.demand[r], self.w
        slot = int(self.used[i])
        if not stock_taken:
            self.take_stock(i, r)
        self.used[i] += 1
        wait = queue_minutes(node, slot)  # scalar maths: this runs once per order
        ready = wait + w.handling_minutes + float(self.p_ride[p]) if req.mode == Mode.DELIVERY else wait
        cost = float(self.p_base[p]) + load_cost(node, w, slot)
        lines = tuple(RouteLine(s, q) for s, q in demand.items())
        alloc = Allocation(node.id, lines, round(dist, 1), Role.SERVE, _minutes(ready), round(cost, 3))
        self.cost += cost
        self.plans[r] = Plan((alloc,), (), Strategy.SINGLE, f"wave: {node.kind} {node.id}, {dist / 1000:.1f} km, slot {slot + 1}", round(cost, 3))

    def take_stock(self, i: int, r: int) -> None:
        a, b = self.line_start[r], self.line_start[r + 1]
        np.subtract.at(self.stock[i], self.line_sku[a:b], self.line_qty[a:b])

    def route_rest(self, r: int) -> None:
        """Split / transfer / nothing, planned against what is left; committed only if complete."""
        req, demand = self.requests[r], self.demand[r]
        if not demand:
            self.plans[r] = Plan((), (), Strategy.NONE, "order has no lines", 0.0)
            return
        if self.blind:
            req = msgspec.structs.replace(req, minutes_left=None)
        elif req.mode != Mode.PICKUP:
            # Quick exit under pressure: no candidate has a free slot in time, so no split either.
            pidx = np.arange(self.p_start[r], self.p_start[r + 1])
            node = self.p_node[pidx]
            if not ((self.used[node] < self.cap[node]) & (self.p_deadline[pidx] >= self.used[node])).any():
                why = "wave: no node in range has a free picking slot" + (" within the promise" if req.minutes_left is not None else "")
                if len(pidx) == 0:
                    why = "wave: no node can serve this destination"
                self.plans[r] = Plan((), tuple(Unserved(s, q, why) for s, q in demand.items()), Strategy.NONE, why, 0.0)
                return
        full = frozenset() if self.blind else frozenset(self.nodes[i].id for i in np.flatnonzero(self.used >= self.cap).tolist())
        a, b = int(self.p_start[r]), int(self.p_start[r + 1])
        near = None if req.mode == Mode.PICKUP else [Near(i, d) for i, d in zip(self.p_node[a:b].tolist(), self.p_dist[a:b].tolist(), strict=True)]
        p = plan_with(self.net, req, _Remaining(self), full, self.w, self.used.tolist(), near)
        if p.allocations and not p.unserved:
            for a in p.allocations:
                i = self.net.index_of(a.node_id)
                assert i is not None
                for ln in a.lines:
                    self.stock[i, self.sku_index[ln.sku]] -= ln.quantity
                self.used[i] += 1
            self.cost += p.cost
            self.plans[r] = p
            return
        # A partial plan would spend scarce slots on an order that still cannot go out: report it.
        reasons = {u.sku: u.reason for u in p.unserved}
        why = p.unserved[0].reason if p.strategy == Strategy.NONE and p.unserved else p.reason
        unserved = tuple(Unserved(s, q, reasons.get(s) or f"wave: {why}") for s, q in demand.items())
        strategy = Strategy.ALTERNATIVES if p.strategy == Strategy.ALTERNATIVES else Strategy.NONE
        self.plans[r] = Plan((), unserved, strategy, f"wave: {why}", 0.0, p.alternatives)

    def result(self, method: str, t0: float, rounds: int) -> WavePlan:
        plans = tuple(p if p is not None else Plan((), (), Strategy.NONE, "order has no lines", 0.0) for p in self.plans)
        load = tuple((n.id, u) for n, u in zip(self.nodes, self.used.tolist(), strict=True) if u > 0)
        unserved = sum(1 for p in plans if p.unserved)
        late = sum(
            1
            for r, p in zip(self.requests, plans, strict=True)
            if r.mode == Mode.DELIVERY and r.minutes_left is not None and not p.unserved
            and any(a.ready_in_minutes is not None and a.ready_in_minutes > r.minutes_left + 1e-6 for a in p.allocations)
        )
        return WavePlan(
            plans=plans,
            cost=round(self.cost, 3),
            unserved_orders=unserved,
            load=load,
            method=method,
            solve_ms=round((time.perf_counter() - t0) * 1000, 1),
            rounds=rounds,
            late_orders=late,
            objective=round(self.cost + self.w.unserved_order * (unserved + late), 3),
        )


def _flow_round(wave: _Wave, pending: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One min-cost-flow assignment of pending orders to single nodes.

    Graph: order -> (node, slot bucket) -> sink. A bucket's arc to the sink costs the load of
    its slots, so the flow fills a nearby node only while that beats the next node's distance
    (convex load cost). Buckets of one node are chained later -> earlier: an order whose
    promise allows slot k may take any slot before it, so promises hold exactly (EDF order).
    Commits the winners (earliest promise first within a node) and returns (orders that lost
    shared stock at their node to an order with fewer options, orders no single node can take).
    """
    pidx = wave.feasible(pending)
    if MAX_OPTIONS and len(pidx):
        # Each order's cheapest few feasible nodes: the flow hardly ever needs the rest.
        by_cost = pidx[np.lexsort((wave.p_node[pidx], wave.p_base[pidx], wave.p_order[pidx]))]
        o = wave.p_order[by_cost]
        rank = np.arange(len(o)) - np.searchsorted(o, o, side="left")
        pidx = np.sort(by_cost[rank < MAX_OPTIONS])
    routed = np.unique(wave.p_order[pidx])
    rest = np.setdiff1d(pending, routed)
    if len(routed) == 0:
        return routed, rest
    # Slot buckets for every node some order could use.
    nodes = np.unique(wave.p_node[pidx])
    free = wave.cap[nodes] - wave.used[nodes]
    g = np.maximum(1, -(-free // MAX_BUCKETS))
    nb = -(-free // g)
    first = len(routed) + np.concatenate(([0], np.cumsum(nb)[:-1]))
    owner = np.repeat(np.arange(len(nodes)), nb)
    k = np.arange(len(owner)) - np.repeat(first - len(routed), nb)
    start = wave.used[nodes][owner] + k * g[owner]
    size = np.minimum(g[owner], wave.cap[nodes][owner] - start)
    load = np.round(wave.slot_load(nodes[owner], start + (size - 1) / 2) * SCALE).astype(np.int64)
    sink = len(routed) + len(owner)
    # Order -> the latest bucket whose every slot still meets its promise (conservative).
    pn = np.searchsorted(nodes, wave.p_node[pidx])
    dl = wave.p_deadline[pidx]
    b = (dl - wave.used[nodes][pn] + 1) // g[pn] - 1
    b = np.where(dl >= wave.cap[nodes][pn] - 1, nb[pn] - 1, np.minimum(b, nb[pn] - 1))
    keep = b >= 0
    pidx, pn, b = pidx[keep], pn[keep], b[keep]
    tail_o = np.searchsorted(routed, wave.p_order[pidx])
    cost_o = np.round(wave.p_base[pidx] * SCALE).astype(np.int64)
    # Leaving an order out costs the unserved penalty; it may still be served later (split,
    # transfer), which the penalty over-counts only slightly.
    unserved = round(wave.w.unserved_order * SCALE)
    chain = np.flatnonzero(k > 0)
    tails = np.concatenate((tail_o, np.arange(len(routed)), len(routed) + np.arange(len(owner)), len(routed) + chain))
    heads = np.concatenate((first[pn] + b, np.full(len(routed), sink), np.full(len(owner), sink), len(routed) + chain - 1))
    caps = np.concatenate((np.ones(len(pidx) + len(routed), np.int64), size, np.full(len(chain), len(routed))))
    costs = np.concatenate((cost_o, np.full(len(routed), unserved), load, np.zeros(len(chain), np.int64)))
    smcf = min_cost_flow.SimpleMinCostFlow()
    smcf.add_arcs_with_capacity_and_unit_cost(tails.astype(np.int32), heads.astype(np.int32), caps.astype(np.int64), costs.astype(np.int64))
    supplies = np.zeros(sink + 1, dtype=np.int64)
    supplies[: len(routed)] = 1
    supplies[sink] = -len(routed)
    smcf.set_nodes_supplies(np.arange(sink + 1, dtype=np.int32), supplies)
    status = smcf.solve()
    if status != smcf.OPTIMAL:
        # Cannot happen (every order has a bypass to the sink); fail loudly rather than guess.
        raise RuntimeError(f"min cost flow failed: {status}")
    won = pidx[smcf.flows(np.arange(len(pidx), dtype=np.int32)) > 0]
    rest = np.union1d(rest, np.setdiff1d(routed, wave.p_order[won]))
    # The flow does not see that orders at one node may share its last units. Where they do,
    # orders with no other node left (none with a slot still free after this flow, in time)
    # keep them first, then the earliest promises; the others try again next round.
    chosen = np.full(len(wave.requests), -1, dtype=np.int64)
    chosen[wave.p_order[won]] = wave.p_node[won]
    after = wave.used + np.bincount(wave.p_node[won], minlength=len(wave.nodes))
    nodes_o = wave.p_node[pidx]
    spare = (after[nodes_o] < wave.cap[nodes_o]) & (wave.p_deadline[pidx] >= after[nodes_o]) & (nodes_o != chosen[wave.p_order[pidx]])
    has_alternative = np.zeros(len(wave.requests), dtype=bool)
    has_alternative[wave.p_order[pidx[spare]]] = True
    accepted, rejected = [], []
    keys = (wave.p_order[won], wave.p_deadline[won], has_alternative[wave.p_order[won]], wave.p_node[won])
    for k in np.lexsort(keys).tolist():
        p = int(won[k])
        r, i = int(wave.p_order[p]), int(wave.p_node[p])
        if wave.fits(r, i):
            wave.take_stock(i, r)
            accepted.append(p)
        else:
            rejected.append(r)  # its units went to an order with fewer options: try again
    acc = np.array(accepted, dtype=np.int64)
    for p in acc[np.lexsort((wave.p_order[acc], wave.p_deadline[acc], wave.p_node[acc]))].tolist():
        wave.commit_single(p, stock_taken=True)  # earliest promise first within a node (EDF)
    return np.array(sorted(rejected), dtype=np.int64), rest


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
    Every plan is complete or allocates nothing; no node exceeds its stock or capacity.
    """
    t0 = time.perf_counter()
    wave = _Wave(network, requests, stock, capacity, weights)
    pending = np.arange(len(requests), dtype=np.int64)
    rest: list[int] = []
    rounds = 0
    while len(pending) and rounds < max_rounds:
        rounds += 1
        pending, no_single = _flow_round(wave, pending)
        rest += no_single.tolist()
    for r in sorted(rest + pending.tolist()):
        wave.route_rest(r)
    return wave.result("flow", t0, rounds)


def greedy_wave(
    network: Network,
    requests: Sequence[RouteRequest],
    stock: Stock,
    capacity: Mapping[str, int] | None = None,
    weights: CostWeights = CostWeights(),
    *,
    respect_capacity: bool = True,
) -> WavePlan:
    """Baseline: orders in turn, each to the nearest node that can serve it whole right now.

    Same rules as plan_wave (warehouses before stores for parcels, promise, capacity, stock);
    only the choice differs: first come, nearest first, no look-ahead. respect_capacity=False
    is the naive rule "nearest node with stock": no capacity, no queue check for the promise,
    so the nearest store gets buried (its queue, ETAs and load costs then show it).
    """
    t0 = time.perf_counter()
    wave = _Wave(network, requests, stock, capacity, weights, blind=not respect_capacity)
    for r in range(len(requests)):
        pidx = wave.feasible(np.array([r], dtype=np.int64))
        if len(pidx):
            best = pidx[np.lexsort((wave.p_node[pidx], wave.p_dist[pidx], wave.p_tier[pidx]))[0]]
            wave.commit_single(int(best))
        else:
            wave.route_rest(r)
    return wave.result("greedy" if respect_capacity else "greedy-blind", t0, 0)
