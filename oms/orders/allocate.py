"""Choosing nodes and reserving their stock: routing's plan made real in Redis.

`Allocator.place` plans over fresh availability and reserves at each planned node (all lines per
node or none); a reservation that lost a race re-plans without that node. `allocate_existing`
routes an order stored without stock (unpaid until now, or backordered) and records the result.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import asyncpg
import redis.asyncio as aioredis

from oms.config import Settings
from oms.errors import NotFound
from oms.infra.db import Q
from oms.infra.ids import new_id
from oms.network.directory import NodeDirectory, no_plan
from oms.network.promise import PromiseClock
from oms.ops import metrics
from oms.orders.decide import lines_after_plan
from oms.orders.model import Order, OrderStatus
from oms.orders.read import load_order
from oms.orders.rows import Reserved, columns, fulfillment_rows
from oms.orders.status import set_status
from oms.stock.inventory import Inventory
from routing import Plan, RouteLine

log = logging.getLogger("oms.allocate")


class Allocator:
    """Routes and reserves; shared by intake, backorder retries and the store's reject."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, inventory: Inventory, nodes: NodeDirectory) -> None:
        self.settings = settings
        self.pool = pool
        self.inventory = inventory
        self.nodes = nodes
        self.promise = PromiseClock.from_settings(settings)

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
        request = self.nodes.request(mode, lat, lng, need, pickup_node_id=pickup_node_id, promised_by=promised_by,
                                     approximate=approximate, ref=ref)
        skus = sorted({l.sku for l in need})
        lost: list[str] = []
        wide = False
        attempts = 0
        while attempts <= self.settings.reroute_attempts:
            cands = self.nodes.candidates(request, exclude, wide=wide)
            if prefetched is not None and all(c in prefetched for c in cands):
                stock = prefetched  # read together with the claim, microseconds ago
            else:
                stock = await self.inventory.available(cands, skus)
            prefetched = None  # a re-route after a lost race reads afresh
            plan = self.nodes.plan(request, stock, exclude, wide=wide)
            if plan.unserved and not wide and self.nodes.can_widen(request, cands):
                wide = True  # the nearest stores cannot serve it all: look at every covering store
                continue
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
                reserved.append(Reserved(fid, alloc))
            if reserved:
                for r in reserved:
                    self.nodes.allocated(r.alloc.node_id)
                return reserved, plan
        return [], no_plan(need, f"stock moved at {', '.join(lost)} while routing; gave up after {len(lost)} tries")

    async def release_all(self, reserved: list[Reserved]) -> None:
        for r in reserved:
            try:
                await self.inventory.release(r.alloc.node_id, r.fulfillment_id)
            except aioredis.RedisError:
                log.exception("could not release reservation %s at %s; rebuild-inventory will", r.fulfillment_id, r.alloc.node_id)



    async def allocate_existing(self, order_id: str, cause: str) -> Order:
        """Route and reserve an order stored without stock: unpaid until now, or backordered.

        A backordered order's lines are tried again (not those whose SKU is unknown); lines
        still unserved stay backordered with routing's reason.
        """
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(Q["order_by_id"], order_id)
            if row is None:
                raise NotFound(f"no order with id '{order_id}'", field="id")
            if row["status"] not in (OrderStatus.CREATED, OrderStatus.BACKORDERED):
                return await load_order(conn, order_id, clock=self.promise)  # allocated meanwhile: nothing to do
            lines = [l for l in await conn.fetch(Q["order_lines_by_order"], order_id)
                     if l["status"] == "open" or (l["status"] == "backordered"
                                                  and not (l["reason"] or "").startswith("unknown SKU"))]
        need = [RouteLine(l["sku"], l["quantity"]) for l in lines]
        reserved: list[Reserved] = []
        plan = no_plan(need, "no line can be served: every SKU is unknown")
        if need:
            reserved, plan = await self.place(row["delivery_mode"], row["dest_lat"], row["dest_lng"],
                                              row["pickup_node_id"], need, promised_by=row["promised_by"],
                                              approximate=row["dest_approximate"], ref=row["external_id"])
        new_status = OrderStatus.ALLOCATED if reserved else OrderStatus.BACKORDERED
        status, reasons = lines_after_plan(need, ["open"] * len(lines), [None] * len(lines), reserved, plan)
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                locked = await conn.fetchrow(Q["order_by_id_for_update"], order_id)
                if locked["status"] not in (OrderStatus.CREATED, OrderStatus.BACKORDERED):
                    raise _Stale()
                await set_status(conn, order_id, locked["status"], new_status, cause,
                                 reason=None if reserved else plan.reason, detail={"plan": plan.reason})
                if reserved:
                    await conn.execute(Q["order_clear_reason"], order_id)
                for line, st, why in zip(lines, status, reasons):
                    await conn.execute(Q["order_line_set_status"], order_id, line["line_no"], st, why)
                f_rows, r_rows = fulfillment_rows(order_id, reserved, datetime.now(timezone.utc))
                if f_rows:
                    await conn.execute(Q["fulfillments_insert_many"], *columns(f_rows))
                    await conn.execute(Q["reservations_insert_many"], *columns(r_rows))
        except BaseException as exc:
            await self.release_all(reserved)
            if isinstance(exc, _Stale):
                async with self.pool.acquire() as conn:
                    return await load_order(conn, order_id, clock=self.promise)
            raise
        metrics.order_outcome(row["channel"], new_status)
        async with self.pool.acquire() as conn:
            return await load_order(conn, order_id, clock=self.promise)

    async def retry_backorders(self, sku: str, limit: int = 20) -> int:
        """Try the oldest backordered orders waiting for `sku` again; returns how many got stock."""
        ids = [r["id"] for r in await self.pool.fetch(Q["backordered_orders_with_sku"], sku, limit)]
        allocated = 0
        for oid in ids:
            order = await self.allocate_existing(oid, cause="restock")
            allocated += order.status is OrderStatus.ALLOCATED
        return allocated


class _Stale(Exception):
    """The order moved on while we routed it."""
