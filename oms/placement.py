"""Where an order is served: the one place the service asks for a node choice.

Interim until routing/ lands: the nearest eligible node that holds every line (straight
distance). Intake calls only `NodeDirectory.candidates` and `choose`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence

import asyncpg
import msgspec

from oms.db import Q


class PlanLine(msgspec.Struct, frozen=True):
    sku: str
    quantity: int


class PlanAllocation(msgspec.Struct, frozen=True):
    node_id: str
    lines: tuple[PlanLine, ...]
    distance_m: float
    role: str = "serve"


class Placement(msgspec.Struct, frozen=True):
    allocations: tuple[PlanAllocation, ...]
    unserved: tuple[PlanLine, ...]
    reason: str
    strategy: str


class DirNode(msgspec.Struct, frozen=True):
    id: str
    kind: str
    lat: float
    lng: float
    capabilities: frozenset[str]
    delivery_radius_m: int
    capacity_per_hour: int
    city: str | None


def haversine_m(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lng2 - lng1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6_371_008.8 * math.asin(math.sqrt(a))


class NodeDirectory:
    """Active nodes, cached per process and reloaded when PostgreSQL's copy changes."""

    def __init__(self, pool: asyncpg.Pool, max_age_s: float = 2.0) -> None:
        self.pool = pool
        self.max_age_s = max_age_s
        self.nodes: dict[str, DirNode] = {}
        self._loaded_at = 0.0

    async def refresh(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._loaded_at < self.max_age_s:
            return
        rows = await self.pool.fetch(Q["nodes_all"])
        self.nodes = {
            r["id"]: DirNode(r["id"], r["kind"], r["lat"], r["lng"], frozenset(r["capabilities"]),
                             r["delivery_radius_m"], r["capacity_per_hour"], r["city"])
            for r in rows if r["active"]
        }
        self._loaded_at = time.monotonic()

    def candidates(self, mode: str, lat: float, lng: float, pickup_node_id: str | None,
                   exclude: frozenset[str] = frozenset(), limit: int = 30) -> list[tuple[str, float]]:
        """Eligible nodes for the mode, nearest first (warehouses first for parcels)."""
        out: list[tuple[tuple, str, float]] = []
        for n in self.nodes.values():
            if n.id in exclude:
                continue
            d = haversine_m(lat, lng, n.lat, n.lng)
            if mode == "delivery":
                if "delivery" in n.capabilities and d <= n.delivery_radius_m:
                    out.append(((d, n.id), n.id, d))
            elif mode == "pickup":
                if n.id == pickup_node_id and "pickup" in n.capabilities:
                    out.append(((0, n.id), n.id, d))
            elif "ship" in n.capabilities:
                out.append(((n.kind != "warehouse", d, n.id), n.id, d))
        out.sort()
        return [(nid, d) for _, nid, d in out[:limit]]


def choose(candidates: Sequence[tuple[str, float]], lines: Sequence[PlanLine],
           stock: Mapping[str, Mapping[str, int]]) -> Placement:
    """The first candidate holding every line, else nothing with the reason why."""
    need: dict[str, int] = {}
    for line in lines:
        need[line.sku] = need.get(line.sku, 0) + line.quantity
    merged = tuple(PlanLine(s, q) for s, q in need.items())
    for node_id, dist in candidates:
        avail = stock.get(node_id, {})
        if all(avail.get(s, 0) >= q for s, q in need.items()):
            return Placement((PlanAllocation(node_id, merged, dist),), (), f"nearest node with full stock, {dist / 1000:.1f} km", "single")
    if not candidates:
        return Placement((), merged, "no eligible node for this delivery mode and destination", "none")
    short = [s for s, q in need.items() if not any(stock.get(n, {}).get(s, 0) >= q for n, _ in candidates)]
    reason = "no eligible node holds every line" + (f"; out of stock: {', '.join(short)}" if short else "")
    return Placement((), merged, reason, "none")
