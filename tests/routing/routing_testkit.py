"""Shared builders for routing tests (module name kept unique: tests/routing is not a package)."""

from __future__ import annotations

from collections.abc import Iterable

from routing import Mode, NodeKind, Plan, RouteLine, RouteNode, RouteRequest

# People's Square, Shanghai. 0.01 deg latitude ~ 1.11 km.
CENTRE = (31.2304, 121.4737)
ALL = frozenset({"delivery", "pickup", "ship"})


def store(
    node_id: str,
    dlat: float,
    dlng: float = 0.0,
    *,
    caps: Iterable[str] = ALL,
    radius: int = 3000,
    capacity: int = 30,
    open_picks: int = 0,
    base: tuple[float, float] = CENTRE,
) -> RouteNode:
    return RouteNode(node_id, NodeKind.STORE, base[0] + dlat, base[1] + dlng, frozenset(caps), radius, capacity, open_picks)


def warehouse(node_id: str, lat: float, lng: float, *, capacity: int = 2000) -> RouteNode:
    return RouteNode(node_id, NodeKind.WAREHOUSE, lat, lng, frozenset({"ship"}), 0, capacity)


def order(mode: Mode, *lines: tuple[str, int], at: tuple[float, float] = CENTRE, **kw: object) -> RouteRequest:
    return RouteRequest("o-1", mode, at[0], at[1], tuple(RouteLine(s, q) for s, q in lines), **kw)  # type: ignore[arg-type]


def allocated(p: Plan) -> dict[tuple[str, str], int]:
    """(node, sku) -> units the plan takes there."""
    out: dict[tuple[str, str], int] = {}
    for a in p.allocations:
        for ln in a.lines:
            out[(a.node_id, ln.sku)] = out.get((a.node_id, ln.sku), 0) + ln.quantity
    return out


def served(p: Plan) -> dict[str, int]:
    out: dict[str, int] = {}
    for (_, sku), q in allocated(p).items():
        out[sku] = out.get(sku, 0) + q
    return out
