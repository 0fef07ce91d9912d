"""Choosing nodes and reserving their stock: routing's plan made real in Redis.

`Allocator.place` plans over fresh availability and reserves at each planned node (all lines per
node or none); a reservation that lost a race re-plans without that node. `allocate_existing`
routes an order stored without stock (unpaid until now, or backordered) and records the result.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import asyncpg
import msgspec
import redis.asyncio as aioredis

import routing
from oms.config import Settings
from oms.errors import NotFound, Unavailable
from oms.infra.db import Q, connection_lost
from oms.infra.ids import new_id
from oms.network.directory import NodeDirectory, no_plan
from oms.network.promise import PromiseClock
from oms.ops import metrics
from oms.orders.doubt import Doubt, DoubtResolver
from oms.orders.lines import held_units, missing_units
from oms.orders.model import WAITING, FulfillmentStatus, Order, OrderStatus
from oms.orders.read import load_order
from oms.orders.rows import Reserved, columns, fulfillment_rows
from oms.stock.inventory import Inventory
from oms.stores.status import follow
from routing import Plan, RouteLine, RouteRequest

log = logging.getLogger("oms.allocate")


class Allocator:
    """Routes and reserves; shared by intake, backorder retries and the store's reject."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, inventory: Inventory, nodes: NodeDirectory) -> None:
        self.settings = settings
        self.pool = pool
        self.inventory = inventory
        self.nodes = nodes
        self.promise = PromiseClock.from_settings(settings)
        self.doubts: DoubtResolver | None = None  # set by intake

    @metrics.timed_routing
    async def place(self, mode: str, lat: float, lng: float, pickup_node_id: str | None,
                    need: list[RouteLine], exclude: frozenset[str] = frozenset(), *,
                    promised_by: datetime | None = None, approximate: bool = False, ref: str = "",
                    prefetched: dict[str, dict[str, int]] | None = None
                    ) -> tuple[list[Reserved], Plan]:
        """Plan with routing/ over fresh availability, then reserve at each planned node.

        A reservation that loses a race (stock moved since the read) is released with the rest
        and the order re-planned without that node, a bounded number of times.
        """
        await self.nodes.refresh()
        now = datetime.now(timezone.utc)
        request = self.nodes.request(mode, lat, lng, need, pickup_node_id=pickup_node_id, promised_by=promised_by,
                                     approximate=approximate, ref=ref, now=now)
        requests = self._late_policy(request, promised_by is not None and promised_by <= now)
        lost: list[str] = []
        attempts = 0
        while attempts <= self.settings.reroute_attempts:
            plan = await self._choose(requests, exclude, prefetched)
            prefetched = None  # a re-route after a lost race reads afresh
            attempts += 1
            if not plan.allocations:
                if lost:
                    plan = no_plan(need, f"{plan.reason} (stock moved at {', '.join(lost)} meanwhile)")
                return [], plan
            reserved: list[Reserved] = []
            for alloc in plan.allocations:
                fid = new_id("f")
                res = await self.inventory.reserve(alloc.node_id, fid, [(l.sku, l.quantity) for l in alloc.lines])
                if not res.ok:
                    metrics.reservation_failed(res.short_sku)
                    await self.release_all(reserved)
                    reserved = []
                    lost.append(alloc.node_id)
                    exclude = exclude | {alloc.node_id}
                    break
                reserved.append(Reserved(fid, alloc, res.gen))
            if reserved:
                for r in reserved:
                    self.nodes.allocated(r.alloc.node_id)
                return reserved, plan
        return [], no_plan(need, f"stock moved at {', '.join(lost)} while routing; gave up after {len(lost)} tries")

    def _late_policy(self, request: RouteRequest, gone: bool) -> list[tuple[RouteRequest, bool]]:
        """The requests to try in turn, each with whether it serves the order late.

        One late-delivery policy, however long ago the promise went: a one-hour order no store
        can deliver in time any more is served anyway — by the best store holding the stock, or
        (OMS_LATE_DELIVERY=ship) first by parcel from a warehouse — and the order view flags it
        late; it is never backordered while stock sits nearby."""
        if request.mode is not routing.Mode.DELIVERY or (request.minutes_left is None and not gone):
            return [(request, False)]
        late = [(msgspec.structs.replace(request, minutes_left=None), True)]
        if self.settings.late_delivery == "ship":
            late.insert(0, (msgspec.structs.replace(request, mode=routing.Mode.SHIP, minutes_left=None), True))
        # a promise already gone narrows nothing (the clock gives no time limit): straight to the late plans
        return late if gone else [(request, False), *late]

    async def _choose(self, requests: list[tuple[RouteRequest, bool]], exclude: frozenset[str],
                      prefetched: dict[str, dict[str, int]] | None) -> Plan:
        """The first request's plan when it serves everything, else the one serving the most units."""
        best: Plan | None = None
        why = "the one-hour promise has passed"
        for i, (request, late) in enumerate(requests):
            plan = await self._plan(request, exclude, prefetched if i == 0 else None)
            if not late:
                why = plan.reason
            elif plan.allocations:
                plan = msgspec.structs.replace(plan, reason=f"served late ({why}): {plan.reason}")
            if best is None or _units(plan) > _units(best):
                best = plan
            if plan.complete:
                break
        assert best is not None
        return best

    async def _plan(self, request: RouteRequest, exclude: frozenset[str],
                    prefetched: dict[str, dict[str, int]] | None) -> Plan:
        skus = sorted({l.sku for l in request.lines})
        cands = self.nodes.candidates(request, exclude)
        if prefetched is not None and all(c in prefetched for c in cands):
            stock = prefetched  # read together with the claim, microseconds ago
        else:
            stock = await self.inventory.available(cands, skus)
        plan = self.nodes.plan(request, stock, exclude)
        if not plan.unserved:
            return plan
        # The nearest nodes cannot serve it all: read every node that could, and route over all
        # of them only when one of those holds a missing unit. Reading costs little; routing over
        # hundreds of nodes costs a millisecond, which a sold-out SKU's orders would all pay.
        beyond = self.nodes.beyond(request, exclude)
        if not beyond:
            return plan
        more = await self.inventory.available(beyond, skus)
        missing = {u.sku for u in plan.unserved}
        if not any(levels.get(s, 0) > 0 for levels in more.values() for s in missing):
            return plan
        return self.nodes.plan(request, {**stock, **more}, exclude, wide=True)

    async def release_all(self, reserved: list[Reserved]) -> None:
        for r in reserved:
            try:
                await self.inventory.release(r.alloc.node_id, r.fulfillment_id)
            except aioredis.RedisError:
                log.exception("could not release reservation %s at %s; the reconciler will", r.fulfillment_id, r.alloc.node_id)

    async def confirm_all(self, reserved: list[Reserved]) -> None:
        """After the write committed: put back any reservation a Redis rebuild lost meanwhile."""
        for r in reserved:
            try:
                if await self.inventory.confirm(r.alloc.node_id, r.fulfillment_id,
                                                [(l.sku, l.quantity) for l in r.alloc.lines], r.gen):
                    log.warning("reservation %s at %s was lost by a Redis rebuild; put back",
                                r.fulfillment_id, r.alloc.node_id)
            except aioredis.RedisError:
                log.exception("could not confirm reservation %s at %s; the reconciler will",
                              r.fulfillment_id, r.alloc.node_id)

    async def allocate_existing(self, order_id: str, cause: str) -> Order:
        """Route and reserve what an order still waits for: all of it when unpaid until now or
        backordered, the missing units when partially allocated (same node preference and split
        rules; nodes that turned the order down are avoided). Units still unserved keep waiting
        with routing's reason. An order paid now turns its hold (if it had one) into the
        allocation: the same fulfilments, at the same nodes, now on their pick lists."""
        order, _ = await self._allocate(order_id, cause)
        return order

    async def _allocate(self, order_id: str, cause: str) -> tuple[Order, bool]:
        """allocate_existing, also saying whether any stock was reserved."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(Q["order_by_id"], order_id)
            if row is None:
                raise NotFound(f"no order with id '{order_id}'", field="id")
            if row["status"] not in (OrderStatus.CREATED, *WAITING):
                return await load_order(conn, order_id, clock=self.promise), False  # allocated meanwhile: nothing to do
            missing = await _missing(conn, order_id)
            exclude = frozenset(r["node_id"] for r in await conn.fetch(Q["store_fulfillment_nodes_rejected"], order_id))
            held = row["status"] == OrderStatus.CREATED and any(
                f["status"] == FulfillmentStatus.HELD for f in await conn.fetch(Q["fulfillments_by_order"], order_id))
        need = [RouteLine(sku, q) for sku, q in missing.items()]
        reserved: list[Reserved] = []
        plan = no_plan(need, "paid: the units held for it are allocated" if held
                       else "no line can be served: every SKU is unknown")
        if need:
            reserved, plan = await self.place(row["delivery_mode"], row["dest_lat"], row["dest_lng"],
                                              row["pickup_node_id"], need, exclude, promised_by=row["promised_by"],
                                              approximate=row["dest_approximate"], ref=row["external_id"])
        if not reserved and row["status"] in WAITING:
            async with self.pool.acquire() as conn:  # still waiting: nothing to record
                return await load_order(conn, order_id, clock=self.promise), False
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                locked = await conn.fetchrow(Q["order_by_id_for_update"], order_id)
                if locked["status"] not in (OrderStatus.CREATED, *WAITING) or await _missing(conn, order_id) != missing:
                    raise _Stale()
                # paid: the hold becomes the stores' work (nothing moves in Redis: already reserved)
                confirmed = (await conn.fetch(Q["fulfillments_confirm_held"], order_id)
                             if locked["status"] == OrderStatus.CREATED else [])
                f_rows, r_rows = fulfillment_rows(order_id, reserved, datetime.now(timezone.utc))
                if f_rows:
                    await conn.execute(Q["fulfillments_insert_many"], *columns(f_rows))
                    await conn.execute(Q["reservations_insert_many"], *columns(r_rows))
                why = {u.sku: u.reason for u in plan.unserved}
                new_status = await follow(conn, order_id, cause, {
                    "plan": plan.reason,
                    **({"held_allocated": [{"node_id": f["node_id"], "fulfillment_id": f["id"]} for f in confirmed]}
                       if confirmed else {}),
                    "allocated": [{"node_id": r.alloc.node_id, "fulfillment_id": r.fulfillment_id,
                                   "lines": [{"sku": l.sku, "quantity": l.quantity} for l in r.alloc.lines]}
                                  for r in reserved],
                }, backorder_reason=plan.reason, why=why or None)
        except BaseException as exc:
            if reserved and isinstance(exc, Exception) and connection_lost(exc) and self.doubts is not None:
                # lost at COMMIT: maybe kept. Keep the stock until PostgreSQL says (oms.orders.doubt)
                self.doubts.hold(Doubt(order_id, reserved, new_order=False))
                raise Unavailable("the connection to PostgreSQL was lost while the allocation was being "
                                  "stored; whether it was kept is being checked: retry in a moment") from exc
            await self.release_all(reserved)
            if isinstance(exc, _Stale):
                async with self.pool.acquire() as conn:
                    return await load_order(conn, order_id, clock=self.promise), False
            raise
        await self.confirm_all(reserved)
        metrics.order_outcome(row["channel"], new_status)
        async with self.pool.acquire() as conn:
            return await load_order(conn, order_id, clock=self.promise), bool(reserved)

    async def retry_backorders(self, sku: str, limit: int = 20) -> int:
        """Route the oldest orders waiting for `sku` (wholly or in part) again; returns how many got stock."""
        ids = [r["id"] for r in await self.pool.fetch(Q["backordered_orders_with_sku"], sku, limit)]
        got = 0
        for oid in ids:
            _, reserved = await self._allocate(oid, cause="restock")
            got += reserved
        return got


async def _missing(conn: asyncpg.Connection, order_id: str) -> dict[str, int]:
    return missing_units(await conn.fetch(Q["order_lines_by_order"], order_id),
                         held_units(await conn.fetch(Q["reservations_by_order"], order_id)))


def _units(plan: Plan) -> int:
    return sum(l.quantity for a in plan.allocations for l in a.lines)


class _Stale(Exception):
    """The order moved on while we routed it."""
