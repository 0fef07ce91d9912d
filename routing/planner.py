"""Route one order: pick the node(s) that fulfil it at least cost, and say why."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import msgspec
from ortools.sat.python import cp_model

from routing.geo import Near, Network
from routing.model import (
    Allocation,
    CostWeights,
    Mode,
    NodeKind,
    Plan,
    Role,
    RouteLine,
    RouteNode,
    RouteRequest,
    Strategy,
    Unserved,
)

SCALE = 1000  # cost points -> integer milli-points: OR-Tools solvers need integer costs

Stock = Mapping[str, Mapping[str, int]]


class _Model(cp_model.CpModel):
    """CpModel without its per-instance deprecated camelCase aliases (~0.5 ms per model)."""

    def _add_pre_pep8_methods(self) -> None:
        pass


class Option(NamedTuple):
    """A node that may fulfil (part of) a request, with what one shipment from it costs."""

    index: int  # position in network.nodes: the deterministic tie-break (node id order)
    node: RouteNode
    distance_m: float
    cost: float
    ready_in_minutes: float

    @property
    def key(self) -> tuple[int, int]:
        """Sort key: integer cost, then node id order."""
        return (round(self.cost * SCALE), self.index)


class Cover(NamedTuple):
    """Which options take which units, and how the choice was made."""

    picks: list[tuple[Option, dict[str, int]]]  # in (cost, id) order
    served: dict[str, int]
    how: str  # "single" | "split" | "none"
    note: str = ""  # solver caveat for the reason, if any


# -- cost model ----------------------------------------------------------------------------


def queue_minutes(node: RouteNode, extra_picks: int = 0) -> float:
    """Minutes before a new order at this node starts being picked."""
    if node.capacity_per_hour <= 0:
        return math.inf  # no picking capacity: it never gets picked
    return (node.open_picks + extra_picks) * 60.0 / node.capacity_per_hour


def load_cost(node: RouteNode, w: CostWeights, extra_picks: int = 0) -> float:
    """Load penalty: how long the node's picking queue is, capped."""
    return w.per_queue_minute * min(queue_minutes(node, extra_picks), w.max_queue_minutes)


def delivery_eta(node: RouteNode, distance: float, w: CostWeights, extra_picks: int = 0) -> float:
    """Minutes from now until a courier order from this node reaches the customer."""
    ride = distance / 1000.0 / w.courier_kmh * 60.0 if w.courier_kmh > 0 else 0.0
    return queue_minutes(node, extra_picks) + w.handling_minutes + ride


def delivery_base_cost(distance: float, w: CostWeights) -> float:
    """Shipment + courier distance, without load."""
    return w.shipment + w.per_km * distance / 1000.0


def ship_base_cost(node: RouteNode, distance: float, w: CostWeights) -> float:
    """Parcel cost without load: stores pay extra so warehouses go first."""
    extra = w.store_ship if node.kind == NodeKind.STORE else 0.0
    return w.shipment + extra + w.ship_per_km * distance / 1000.0


def transfer_cost(source: RouteNode, distance: float, w: CostWeights, extra_picks: int = 0) -> float:
    """Cost of sending lines from source to the pickup store."""
    return w.transfer + w.per_km * distance / 1000.0 + load_cost(source, w, extra_picks)


def transfer_ready(source: RouteNode, distance: float, w: CostWeights, extra_picks: int = 0) -> float:
    """Minutes until transferred goods arrive at the pickup store."""
    drive = distance / 1000.0 / w.transfer_kmh * 60.0 if w.transfer_kmh > 0 else 0.0
    return queue_minutes(source, extra_picks) + w.transfer_minutes + drive


def _extra(extra_picks: Sequence[int] | None, i: int) -> int:
    return extra_picks[i] if extra_picks is not None else 0


def delivery_options(
    network: Network,
    request: RouteRequest,
    exclude: frozenset[str],
    w: CostWeights,
    extra_picks: Sequence[int] | None = None,
    near: Sequence[Near] | None = None,
) -> tuple[list[Option], str]:
    """Eligible delivery nodes and, if there are none, why."""
    if near is None:
        near = network.delivery_near(request.lat, request.lng, request.approximate)
    if not near:
        return [], "no delivery node covers the destination"
    nodes = network.nodes
    opts: list[Option] = []
    late = 0
    for n in near:
        node = nodes[n.index]
        if node.id in exclude:
            continue
        extra = _extra(extra_picks, n.index)
        eta = delivery_eta(node, n.distance_m, w, extra)
        if request.minutes_left is not None and eta > request.minutes_left:
            late += 1
            continue
        cost = delivery_base_cost(n.distance_m, w) + load_cost(node, w, extra)
        opts.append(Option(n.index, node, n.distance_m, cost, eta))
    if opts:
        return opts, ""
    if late:
        return [], f"no delivery node in range can meet the {request.minutes_left:.0f}-min promise"
    return [], "every delivery node in range is excluded"


def ship_options(
    network: Network,
    request: RouteRequest,
    exclude: frozenset[str],
    w: CostWeights,
    extra_picks: Sequence[int] | None = None,
    near: Sequence[Near] | None = None,
) -> tuple[list[Option], str]:
    """Ship-capable warehouses and nearest ship-capable stores, with parcel costs."""
    nodes = network.nodes
    opts = []
    for n in network.ship_near(request.lat, request.lng) if near is None else near:
        node = nodes[n.index]
        if node.id in exclude:
            continue
        extra = _extra(extra_picks, n.index)
        cost = ship_base_cost(node, n.distance_m, w) + load_cost(node, w, extra)
        opts.append(Option(n.index, node, n.distance_m, cost, queue_minutes(node, extra)))
    return opts, ("" if opts else "no node can ship parcels")


# -- covering the demand -------------------------------------------------------------------


def _demand(lines: Sequence[RouteLine]) -> dict[str, int]:
    """SKU -> units, duplicates merged, in first-seen order; non-positive lines ignored."""
    out: dict[str, int] = {}
    for line in lines:
        if line.quantity > 0:
            out[line.sku] = out.get(line.sku, 0) + line.quantity
    return out


def _holdings(opts: Sequence[Option], demand: Mapping[str, int], stock: Stock) -> list[tuple[Option, dict[str, int]]]:
    """Per option, the units it could give per SKU (capped at demand); options giving nothing dropped."""
    rows = []
    for o in sorted(opts, key=lambda o: o.key):
        s = stock.get(o.node.id)
        if not s:
            continue
        a = {}
        for sku, q in demand.items():
            have = s.get(sku, 0)
            if have > 0:
                a[sku] = min(int(have), q)
        if a:
            rows.append((o, a))
    return rows


def _undominated(rows: list[tuple[Option, dict[str, int]]], need: Mapping[str, int]) -> list[tuple[Option, dict[str, int]]]:
    """Drop a node when a cheaper one alone covers everything it could give.

    Safe with quantities: any plan using the dropped node can swap it for the cheaper one (or
    just drop it if that one is already in), at no extra cost. Rows come in (cost, id) order.
    """
    kept: list[tuple[Option, dict[str, int]]] = []
    for o, a in rows:
        if not any(all(ka.get(s, 0) >= need[s] for s in a) for _, ka in kept):
            kept.append((o, a))
    return kept


def _greedy_cover(rows: list[tuple[Option, dict[str, int]]], need: Mapping[str, int]) -> list[int]:
    """A feasible cover (row positions): cheapest first, then redundant rows removed."""
    left = dict(need)
    chosen = []
    for k, (_, a) in enumerate(rows):
        if any(left[s] > 0 for s in a if s in left):
            chosen.append(k)
            for s, v in a.items():
                if s in left:
                    left[s] -= v
        if all(v <= 0 for v in left.values()):
            break
    for k in reversed(list(chosen)):
        rest = [j for j in chosen if j != k]
        if all(sum(rows[j][1].get(s, 0) for j in rest) >= t for s, t in need.items()):
            chosen = rest
    return chosen


def _solve_split(rows: list[tuple[Option, dict[str, int]]], need: Mapping[str, int], w: CostWeights) -> tuple[list[int], str]:
    """Cheapest set of nodes that together hold `need`: a small CP-SAT model.

    Minimise sum(cost_k * use_k) s.t. for every SKU sum(units_k * use_k) >= need. SKUs are
    independent given the chosen set, so no per-unit variables are needed.
    """
    hint = _greedy_cover(rows, need)
    model = _Model()
    use = [model.new_bool_var(f"use_{o.node.id}") for o, _ in rows]
    for sku, t in need.items():
        model.add(sum(a[sku] * use[k] for k, (_, a) in enumerate(rows) if sku in a) >= t)
    model.minimize(sum(o.key[0] * use[k] for k, (o, _) in enumerate(rows)))
    for k, v in enumerate(use):
        model.add_hint(v, k in hint)
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1  # one worker is deterministic and plenty for ~10 booleans
    solver.parameters.max_time_in_seconds = w.solver_seconds
    solver.parameters.max_deterministic_time = w.solver_seconds  # same answer on a busy machine
    status = solver.solve(model)
    if status == cp_model.OPTIMAL:
        return [k for k, v in enumerate(use) if solver.boolean_value(v)], ""
    if status == cp_model.FEASIBLE:
        return [k for k, v in enumerate(use) if solver.boolean_value(v)], " (solver time limit)"
    # INFEASIBLE cannot happen (need is what the rows hold); MODEL_INVALID/UNKNOWN: keep serving.
    return hint, f" (solver {solver.status_name(status)}, greedy)"


def cover(opts: Sequence[Option], demand: Mapping[str, int], stock: Stock, w: CostWeights) -> Cover:
    """Serve as many units as the options hold; one node if one can, else the cheapest set."""
    rows = _holdings(opts, demand, stock)
    need = {}
    for sku, q in demand.items():
        t = min(q, sum(a.get(sku, 0) for _, a in rows))
        if t > 0:
            need[sku] = t
    if not need:
        return Cover([], {}, "none")
    for o, a in rows:  # fast path: the cheapest node that alone serves everything servable
        if all(a.get(s, 0) >= t for s, t in need.items()):
            return Cover([(o, dict(need))], dict(need), "single")
    kept = _undominated(rows, need)
    chosen, note = _solve_split(kept, need, w)
    picks: list[tuple[Option, dict[str, int]]] = []
    left = dict(need)
    for k in sorted(chosen):  # kept is in (cost, id) order: cheaper nodes fill first
        o, a = kept[k]
        take = {}
        for sku, units in a.items():
            if left.get(sku, 0) > 0:
                take[sku] = min(units, left[sku])
                left[sku] -= take[sku]
        if take:
            picks.append((o, take))
    return Cover(picks, need, "single" if len(picks) == 1 else "split", note)


# -- plan assembly -------------------------------------------------------------------------


def _minutes(x: float) -> float | None:
    """Unrounded, so callers can compare with minutes_left exactly; None when never (no capacity)."""
    return float(x) if math.isfinite(x) else None


def _km(d: float) -> str:
    return f"{d / 1000:.1f} km"


def _lines(take: Mapping[str, int], demand: Mapping[str, int]) -> tuple[RouteLine, ...]:
    return tuple(RouteLine(sku, take[sku]) for sku in demand if take.get(sku, 0) > 0)


def _unserved(demand: Mapping[str, int], served: Mapping[str, int], why: str, holds: Mapping[str, int] | None = None) -> tuple[Unserved, ...]:
    out = []
    for sku, q in demand.items():
        short = q - served.get(sku, 0)
        if short > 0:
            reason = why
            if holds is not None and not why:
                have = holds.get(sku, 0)
                reason = f"only {have} of {q} in stock at eligible nodes" if have else "out of stock at every eligible node"
            out.append(Unserved(sku, short, reason))
    return tuple(out)


def _none(demand: Mapping[str, int], reason: str, alternatives: tuple[str, ...] = ()) -> Plan:
    return Plan((), _unserved(demand, {}, reason), Strategy.NONE, reason, 0.0, alternatives)


def _lacking(node_id: str, stock: Stock, demand: Mapping[str, int]) -> list[str]:
    s = stock.get(node_id) or {}
    return [sku for sku, q in demand.items() if s.get(sku, 0) < q]


def _holds_all(node_id: str, stock: Stock, demand: Mapping[str, int]) -> bool:
    s = stock.get(node_id)
    return bool(s) and all(s.get(sku, 0) >= q for sku, q in demand.items())


def _serve_plan(mode: Mode, opts: list[Option], demand: dict[str, int], stock: Stock, w: CostWeights) -> Plan:
    """Delivery and ship: cover the demand from the options and explain the choice."""
    c = cover(opts, demand, stock, w)
    allocs = tuple(
        Allocation(o.node.id, _lines(take, demand), round(o.distance_m, 1), Role.SERVE, _minutes(o.ready_in_minutes), round(o.cost, 3))
        for o, take in c.picks
    )
    unserved = _unserved(demand, c.served, "", {s: c.served.get(s, 0) for s in demand})
    cost = round(sum(o.cost for o, _ in c.picks), 3)
    if not allocs:
        return Plan((), unserved, Strategy.NONE, "no eligible node holds any line", 0.0)
    if c.how == "single":
        o = c.picks[0][0]
        full = [x for x in opts if _holds_all(x.node.id, stock, demand)]
        nearest = min(full, key=lambda x: (x.distance_m, x.index)) if full else None
        if nearest is not None and nearest.index == o.index:
            reason = f"nearest {o.node.kind} with full stock, {_km(o.distance_m)}"
        elif nearest is not None:
            if mode == Mode.SHIP and nearest.node.kind == NodeKind.STORE:
                why = "store parcel surcharge"
            else:
                why = f"{queue_minutes(nearest.node):.0f} min queue"
            reason = f"{o.node.kind} {o.node.id} with full stock, {_km(o.distance_m)}; nearer {nearest.node.id} costs more ({why})"
        else:
            reason = f"{o.node.kind} {o.node.id} holds the most, {_km(o.distance_m)}"
        if mode == Mode.SHIP and o.node.kind == NodeKind.STORE and not any(x.node.kind == NodeKind.WAREHOUSE for x in full):
            reason += "; no warehouse holds every line"
        strategy = Strategy.SINGLE
    else:
        first = min(opts, key=lambda x: (x.distance_m, x.index))
        scope = f"node within {_km(max(x.distance_m for x in opts))}" if mode == Mode.DELIVERY else "shipping node"
        lacks = ", ".join(_lacking(first.node.id, stock, demand)[:3])
        parts = " + ".join(f"{o.node.id} {_km(o.distance_m)}" for o, _ in c.picks)
        reason = f"split into {len(allocs)}: no single {scope} holds every line ({first.node.id} lacks {lacks}); {parts}"
        strategy = Strategy.SPLIT
    if unserved:
        reason += f"; {sum(u.quantity for u in unserved)} unit(s) unserved"
    return Plan(allocs, unserved, strategy, reason + c.note, cost)


def _pickup_plan(
    network: Network,
    request: RouteRequest,
    demand: dict[str, int],
    stock: Stock,
    exclude: frozenset[str],
    w: CostWeights,
    extra_picks: Sequence[int] | None,
) -> Plan:
    """Pickup at the named store; else transfer to it; else offer whole-order stores nearby."""
    if not request.pickup_node_id:
        return _none(demand, "pickup order names no store")
    si = network.index_of(request.pickup_node_id)
    if si is None:
        return _none(demand, f"unknown pickup store {request.pickup_node_id}")
    store = network.nodes[si]
    nodes = network.nodes
    around = network.around_store(si)
    offers_pickup = "pickup" in store.capabilities
    store_ready = queue_minutes(store, _extra(extra_picks, si))
    own: dict[str, int] = {}
    if offers_pickup and store.id not in exclude:
        s = stock.get(store.id) or {}
        own = {sku: min(int(s.get(sku, 0)), q) for sku, q in demand.items() if s.get(sku, 0) > 0}
    if offers_pickup and all(own.get(sku, 0) >= q for sku, q in demand.items()):
        alloc = Allocation(store.id, _lines(own, demand), 0.0, Role.SERVE, _minutes(store_ready), 0.0)
        return Plan((alloc,), (), Strategy.SINGLE, f"pickup store {store.id} holds every line", 0.0)

    alternatives = tuple(
        nodes[n.index].id
        for n in around
        if nodes[n.index].kind == NodeKind.STORE
        and "pickup" in nodes[n.index].capabilities
        and nodes[n.index].id not in exclude
        and _holds_all(nodes[n.index].id, stock, demand)
    )[: w.max_alternatives]
    if not offers_pickup:
        why = f"store {store.id} does not offer pickup"
        if alternatives:
            return Plan((), _unserved(demand, {}, why), Strategy.ALTERNATIVES, f"{why}; {len(alternatives)} nearby store(s) hold every line", 0.0, alternatives)
        return _none(demand, why)

    missing = {sku: q - own.get(sku, 0) for sku, q in demand.items() if q > own.get(sku, 0)}
    opts = []
    for n in around:
        src = nodes[n.index]
        if src.id in exclude or "ship" not in src.capabilities:
            continue  # only nodes that can dispatch goods can transfer them
        extra = _extra(extra_picks, n.index)
        opts.append(Option(n.index, src, n.distance_m, transfer_cost(src, n.distance_m, w, extra), transfer_ready(src, n.distance_m, w, extra)))
    c = cover(opts, missing, stock, w)
    lacks = ", ".join(list(missing)[:3])
    where = f"store {store.id} is excluded" if store.id in exclude else f"store {store.id} lacks {lacks}"
    complete = all(c.served.get(sku, 0) >= q for sku, q in missing.items())
    if not complete and alternatives:
        why = f"{where} and no node can transfer it all"
        return Plan((), _unserved(demand, {}, why), Strategy.ALTERNATIVES, f"{why}; {len(alternatives)} nearby store(s) hold every line", 0.0, alternatives)
    transfers = [
        Allocation(o.node.id, _lines(take, demand), round(o.distance_m, 1), Role.TRANSFER, _minutes(o.ready_in_minutes), round(o.cost, 3))
        for o, take in c.picks
    ]
    ready = max([store_ready, *(o.ready_in_minutes for o, _ in c.picks)])
    allocs = ([Allocation(store.id, _lines(own, demand), 0.0, Role.SERVE, _minutes(ready), 0.0)] if own else []) + transfers
    if not allocs:
        return _none(demand, f"{where}; no node nearby holds it", alternatives)
    served = {sku: own.get(sku, 0) + c.served.get(sku, 0) for sku in demand}
    unserved = _unserved(demand, served, f"{where}; no node nearby holds enough to transfer")
    cost = round(sum(o.cost for o, _ in c.picks), 3)
    if transfers:
        src = " + ".join(f"{o.node.id} {_km(o.distance_m)}" for o, _ in c.picks)
        reason = f"transfer: {where}; from {src}, ready in ~{ready / 60:.1f} h"
        strategy = Strategy.TRANSFER
    else:
        reason = f"pickup store {store.id} holds part of the order"
        strategy = Strategy.SINGLE
    if unserved:
        reason += f"; {sum(u.quantity for u in unserved)} unit(s) unserved"
    return Plan(tuple(allocs), unserved, strategy, reason + c.note, cost, alternatives)


def plan_with(
    network: Network,
    request: RouteRequest,
    stock: Stock,
    exclude: frozenset[str] = frozenset(),
    weights: CostWeights = CostWeights(),
    extra_picks: Sequence[int] | None = None,
    near: Sequence[Near] | None = None,
) -> Plan:
    """plan() with extra queued picks per node index and, optionally, candidates already found.

    Waves use it: extra_picks are the orders they already gave each node, near the candidate
    list they computed in bulk (delivery and ship only).
    """
    demand = _demand(request.lines)
    if not demand:
        return Plan((), (), Strategy.NONE, "order has no lines", 0.0)
    if request.mode == Mode.PICKUP:
        return _pickup_plan(network, request, demand, stock, exclude, weights, extra_picks)
    if request.mode == Mode.DELIVERY:
        opts, why = delivery_options(network, request, exclude, weights, extra_picks, near)
    else:
        opts, why = ship_options(network, request, exclude, weights, extra_picks, near)
    if not opts:
        return _none(demand, why)
    return _serve_plan(request.mode, opts, demand, stock, weights)


def plan(
    network: Network,
    request: RouteRequest,
    stock: Stock,
    exclude: frozenset[str] = frozenset(),
    weights: CostWeights = CostWeights(),
    extra_picks: Sequence[int] | None = None,
) -> Plan:
    """Route one order over a stock snapshot (node id -> sku -> available units; missing = 0).

    extra_picks (per node index, optional): orders given to each node since its open_picks
    were counted, so a burst does not bury the nearest store before the next count.

    Never allocates more than the snapshot holds at a node; every unit it cannot serve is in
    `unserved` with a reason. One node whenever one node can serve all that is servable; else
    the cheapest set of nodes (CP-SAT), where every shipment pays `weights.shipment`.
    """
    t0 = time.perf_counter_ns()
    result = plan_with(network, request, stock, exclude, weights, extra_picks)
    return msgspec.structs.replace(result, decision_us=(time.perf_counter_ns() - t0) // 1000)
