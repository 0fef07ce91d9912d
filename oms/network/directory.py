"""Where an order is served: the service's one door to the routing library.

`NodeDirectory` keeps the active nodes as a `routing.Network` (H3 index built once, reloaded
when PostgreSQL's copy changes, picking queues refreshed every few seconds); intake asks it for
the candidates whose stock to read, then for a plan over that snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import datetime

import asyncpg

import routing
from oms.infra.db import Q
from oms.network.promise import PromiseClock
from routing import Plan, RouteLine, RouteNode, RouteRequest

log = logging.getLogger("oms.network")


def no_plan(lines: Sequence[RouteLine], reason: str) -> Plan:
    """A plan that serves nothing, for reasons found before routing (unknown store, lost races)."""
    unserved = tuple(routing.Unserved(l.sku, l.quantity, reason) for l in lines)
    return Plan((), unserved, routing.Strategy.NONE, reason, 0.0)


class NodeDirectory:
    """Active nodes for this process; every process reloads from PostgreSQL on its own."""

    def __init__(self, pool: asyncpg.Pool, max_age_s: float = 2.0, load_age_s: float = 5.0,
                 weights: routing.CostWeights | None = None) -> None:
        self.pool = pool
        self.max_age_s = max_age_s
        self.load_age_s = load_age_s
        self.weights = weights or routing.CostWeights()
        self.nodes: dict[str, RouteNode] = {}
        self.network = routing.Network(())
        self._fingerprint: tuple = ()
        #: fulfilments this process handed each node (by network index) since loads were counted
        self._extra: list[int] = []
        self._loaded_at = 0.0
        self._loads_at = 0.0
        self._task: asyncio.Task | None = None
        #: reloads started / the newest whose reads were applied: an older one finishing later
        #: (a background reload that read before a node was added) must not undo a newer one
        self._reads = 0
        self._applied = 0

    async def refresh(self, force: bool = False) -> None:
        """Reload what is stale. Once loaded, callers do not wait for a reload: one background
        task reloads while requests go on with what is held (a stampede of requests must not
        each run the same queries). `force` reloads now and waits (after a node was changed)."""
        if force:
            await self._reload(force=True)
            return
        now = time.monotonic()
        if now - self._loaded_at < self.max_age_s and now - self._loads_at < self.load_age_s:
            return
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._reload())
            self._task.add_done_callback(_log_failure)
        if not self.nodes and self._loads_at == 0.0:
            await asyncio.shield(self._task)  # nothing held yet: the first load is worth waiting for

    async def _reload(self, force: bool = False) -> None:
        now = time.monotonic()
        self._reads += 1
        read = self._reads
        if force or now - self._loaded_at >= self.max_age_s:
            rows = await self.pool.fetch(Q["nodes_all"])
            if read < self._applied:
                return
            self._applied = read
            fingerprint = tuple(tuple(r.values()) for r in rows)
            self._loaded_at = now
            if fingerprint != self._fingerprint:  # rebuild the H3 index only when nodes changed
                nodes = [
                    RouteNode(id=r["id"], kind=routing.NodeKind(r["kind"]), lat=r["lat"], lng=r["lng"],
                              capabilities=frozenset(r["capabilities"]), delivery_radius_m=r["delivery_radius_m"],
                              capacity_per_hour=r["capacity_per_hour"], city=r["city"])
                    for r in rows if r["active"]
                ]
                self.network = routing.Network(nodes)
                self.nodes = {n.id: n for n in nodes}
                self._fingerprint = fingerprint
                self._loads_at = 0.0
        if force or now - self._loads_at >= self.load_age_s:
            loads = {r["node_id"]: r["n"] for r in await self.pool.fetch(Q["open_picks_per_node"])}
            if read < self._applied:
                return
            self._applied = read
            self.network = self.network.with_loads({nid: loads.get(nid, 0) for nid in self.nodes})
            self._extra = [0] * len(self.network.nodes)
            self._loads_at = now

    @staticmethod
    def request(mode: str, lat: float, lng: float, lines: Sequence[RouteLine], *, pickup_node_id: str | None = None,
                promised_by: datetime | None = None, approximate: bool = False, ref: str = "",
                now: datetime | None = None) -> RouteRequest:
        """Routing's request for an order; its time limit comes from the promise clock."""
        return RouteRequest(ref=ref, mode=routing.Mode(mode), lat=lat, lng=lng, lines=tuple(lines),
                            pickup_node_id=pickup_node_id, minutes_left=PromiseClock.for_routing(promised_by, now),
                            approximate=approximate)

    def queue_at(self, node_id: str) -> tuple[int, int]:
        """(fulfilments waiting at the node as this process counts them, its picks per hour)."""
        i = self.network.index_of(node_id)
        if i is None:
            return 0, 0
        node = self.network.nodes[i]
        return node.open_picks + (self._extra[i] if i < len(self._extra) else 0), node.capacity_per_hour

    def candidates(self, request: RouteRequest, exclude: frozenset[str] = frozenset(), *,
                   wide: bool = False) -> list[str]:
        return self._net(wide).candidates(request, exclude)

    def plan(self, request: RouteRequest, stock: Mapping[str, Mapping[str, int]],
             exclude: frozenset[str] = frozenset(), *, wide: bool = False) -> Plan:
        return routing.plan(self._net(wide), request, stock, exclude, self.weights, self._extra or None)

    def beyond(self, request: RouteRequest, exclude: frozenset[str] = frozenset()) -> list[str]:
        """Nodes a widened request could use that its first candidates left out (covering stores
        past the nearest for one-hour delivery, ship-capable stores past the nearest for a parcel,
        nodes past those around a pickup store); [] when the first list held them all. Unordered."""
        first = set(self.network.candidates(request))
        return [n for n in self.network.reach(request) if n not in first and n not in exclude]

    def _net(self, wide: bool) -> routing.Network:
        # the nearest few nodes are read first; all of them only when those cannot serve
        return self.network.widened() if wide else self.network

    def allocated(self, node_id: str) -> None:
        """Count a fulfilment given to the node until the next count of open picks."""
        i = self.network.index_of(node_id)
        if i is not None and i < len(self._extra):
            self._extra[i] += 1


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("reloading nodes failed (routing goes on with what it holds): %s", task.exception())
