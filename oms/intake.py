"""Order intake: the one function every entry point (POST /orders, webhooks, channel workers) calls.

    claim (channel, external id) in Redis  -> at most one request works on an order at a time
    choose node(s) (oms.placement)         -> reserve in Redis, all lines per node or none
    write order, lines, fulfilments, reservations, history in one PostgreSQL transaction
    on a failed write: release the reservations, answer 503 so the caller retries
An order no node can serve is written as `backordered` with the reason, never dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta, timezone

import asyncpg
import msgspec
import redis.asyncio as aioredis

import routing
from oms import placement
from routing import RouteRequest
from oms import metrics
from oms.config import Settings
from oms.db import Q
from oms.domain import (
    ChannelStatus,
    DeliveryMode,
    Fulfillment,
    FulfillmentLine,
    FulfillmentStatus,
    NormalizedOrder,
    Order,
    OrderLineView,
    OrderStatus,
)
from oms.errors import NotFound, Unavailable, UnknownReference
from oms.ids import id_age_s, new_id
from oms.inventory import Inventory
from oms.orders import cancel_order, load_order, minutes_left, set_status
from oms.writer import NewOrderRows, OrderWriter

log = logging.getLogger("oms.intake")

#: a claim outlives platform retries of the same push; PostgreSQL's unique key backs it up
_CLAIM_TTL_S = 7 * 24 * 3600
#: a claim whose order is still not stored after this long belongs to a process that died
_ORPHAN_CLAIM_S = 30


def claim_key(channel: str, external_id: str) -> str:
    return f"claim:{{{channel}:{external_id}}}"


class SkuCatalogue:
    """Known SKU codes, cached per process; a miss asks PostgreSQL, so new SKUs are seen at once."""

    def __init__(self, pool: asyncpg.Pool, max_age_s: float = 30.0) -> None:
        self.pool = pool
        self.max_age_s = max_age_s
        self._known: set[str] = set()
        self._loaded_at = 0.0

    async def unknown(self, skus: set[str]) -> set[str]:
        if time.monotonic() - self._loaded_at > self.max_age_s:
            self._known = {r["sku"] for r in await self.pool.fetch("select sku from skus")}
            self._loaded_at = time.monotonic()
        missing = skus - self._known
        if missing:
            found = {r["sku"] for r in await self.pool.fetch(Q["skus_known"], list(missing))}
            self._known |= found
            missing -= found
        return missing


class Reserved(msgspec.Struct, frozen=True):
    fulfillment_id: str
    alloc: placement.PlanAllocation


class IntakeService:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, redis: aioredis.Redis,
                 write_pool: asyncpg.Pool | None = None) -> None:
        self.settings = settings
        self.pool = pool
        self.redis = redis
        self.inventory = Inventory(redis)
        self.nodes = placement.NodeDirectory(pool)
        self.skus = SkuCatalogue(pool)
        self.writer = OrderWriter(write_pool or pool, max_batch=settings.write_batch_max)

    # ---- entry point -------------------------------------------------------------------
    async def submit(self, order: NormalizedOrder, *, cause: str, strict: bool = True) -> tuple[Order, bool]:
        """Upsert one order by (channel, external id); returns (order, created).

        strict: unknown SKUs / pickup stores are a 422 (trusted internal callers); otherwise
        (channel pushes) the line is backordered with the reason and the rest goes on.
        """
        metrics.order_received(order.channel)
        key = claim_key(order.channel, order.external_id)
        # the claim holds the id the order will have: waiters find it in PostgreSQL once written
        order_id = new_id("o")
        # one round trip: the claim, and the availability routing will most likely need (both
        # queued in this turn of the loop, so they share a pipeline with other requests' commands)
        await self.nodes.refresh()
        cands, skus = self._likely_reads(order)
        claim = self.inventory.batch.command("SET", key, order_id, "NX", "EX", _CLAIM_TTL_S)
        try:
            prefetched = await self.inventory.available(cands, skus) if cands else None
        except BaseException:
            # the reads failed: a claim that went through must not hold the order for 30 s
            if (await asyncio.gather(claim, return_exceptions=True))[0] == b"OK":
                await self._drop_claim(key, order_id)
            raise
        claimed = await claim
        if not claimed:
            return await self._existing(order, key, cause, strict), False
        try:
            view, created = await asyncio.shield(self._create(order, order_id, cause, strict, prefetched))
        except BaseException:
            await self._drop_claim(key, order_id)
            raise
        if not created:  # stored before under another id (a claim lost with a Redis flush)
            await self.redis.set(key, view.id, ex=_CLAIM_TTL_S)
            view = await self.apply_update(view.id, order, cause)
        metrics.observe_order(view, created)
        return view, created

    async def _drop_claim(self, key: str, value: str) -> None:
        try:
            if (await self.redis.get(key)) == value.encode():
                await self.redis.delete(key)
        except aioredis.RedisError:  # the claim expires on its own
            pass

    async def _existing(self, order: NormalizedOrder, key: str, cause: str, strict: bool) -> Order:
        """Another request holds or held this order: wait until it is stored, then apply our update."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            val = await self.redis.get(key)
            oid = val.decode() if val else await self.pool.fetchval(
                Q["order_id_by_external"], order.channel, order.external_id)
            if oid is None:  # nobody has it: the other attempt failed and let go
                view, _ = await self.submit(order, cause=cause, strict=strict)
                return view
            if await self.pool.fetchval(Q["order_exists"], oid):
                return await self.apply_update(oid, order, cause)
            if id_age_s(oid) > _ORPHAN_CLAIM_S:  # its holder died before writing: take over
                await self._drop_claim(key, oid)
            await asyncio.sleep(0.02)
        raise Unavailable("the same order is still being processed by another request; retry")

    # ---- a status update for an order we already have ------------------------------------
    async def apply_update(self, order_id: str, order: NormalizedOrder, cause: str) -> Order:
        """Apply a newer channel status; an older or equal one changes nothing."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(Q["order_by_id"], order_id)
            if row is None:
                raise Unavailable("order vanished while being updated; retry")
            current = ChannelStatus(row["channel_status"])
            newer = order.status.rank > current.rank
            if newer and order.updated_at and row["channel_updated_at"] and order.updated_at < row["channel_updated_at"]:
                newer = False
            if not newer:
                return await load_order(conn, order_id)
            async with conn.transaction():
                await conn.execute(Q["order_set_channel_status"], order_id, str(order.status), order.updated_at)
        if order.status is ChannelStatus.CANCELLED:
            return await cancel_order(self.pool, self.inventory, order_id, cause, reason=f"cancelled by {order.channel}")
        if order.status is ChannelStatus.PAID and row["status"] == OrderStatus.CREATED:
            return await self.allocate_existing(order_id, cause)
        async with self.pool.acquire() as conn:
            return await load_order(conn, order_id)

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
                return await load_order(conn, order_id)  # allocated meanwhile: nothing to do
            lines = [l for l in await conn.fetch(Q["order_lines_by_order"], order_id)
                     if l["status"] == "open" or (l["status"] == "backordered"
                                                  and not (l["reason"] or "").startswith("unknown SKU"))]
        need = [placement.PlanLine(l["sku"], l["quantity"]) for l in lines]
        reserved: list[Reserved] = []
        plan = placement.no_plan(need, "no line can be served: every SKU is unknown")
        if need:
            left = None
            if row["promised_by"] is not None:
                left = (row["promised_by"] - datetime.now(timezone.utc)).total_seconds() / 60
            reserved, plan = await self.place(row["delivery_mode"], row["dest_lat"], row["dest_lng"],
                                              row["pickup_node_id"], need, minutes_left=left,
                                              approximate=row["dest_approximate"], ref=row["external_id"])
        new_status = OrderStatus.ALLOCATED if reserved else OrderStatus.BACKORDERED
        status = ["open"] * len(lines)
        reasons: list[str | None] = [None] * len(lines)
        _mark_unserved(need, status, reasons, reserved, plan)
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
                f_rows, r_rows = _fulfillment_rows(order_id, reserved, datetime.now(timezone.utc))
                if f_rows:
                    await conn.execute(Q["fulfillments_insert_many"], *[list(c) for c in zip(*f_rows)])
                    await conn.execute(Q["reservations_insert_many"], *[list(c) for c in zip(*r_rows)])
        except BaseException as exc:
            await self._release_all(reserved)
            if isinstance(exc, _Stale):
                async with self.pool.acquire() as conn:
                    return await load_order(conn, order_id)
            raise
        metrics.order_outcome(row["channel"], new_status)
        async with self.pool.acquire() as conn:
            return await load_order(conn, order_id)

    async def retry_backorders(self, sku: str, limit: int = 20) -> int:
        """Try the oldest backordered orders waiting for `sku` again; returns how many got stock."""
        ids = [r["id"] for r in await self.pool.fetch(Q["backordered_orders_with_sku"], sku, limit)]
        allocated = 0
        for oid in ids:
            order = await self.allocate_existing(oid, cause="restock")
            allocated += order.status is OrderStatus.ALLOCATED
        return allocated

    # ---- a new order -----------------------------------------------------------------------
    def _likely_reads(self, order: NormalizedOrder) -> tuple[list[str], list[str]]:
        """The candidates and SKUs `place` will read for a paid order (nothing for others)."""
        if order.status is not ChannelStatus.PAID:
            return [], []
        request = RouteRequest(ref=order.external_id, mode=routing.Mode(order.delivery_mode),
                               lat=order.destination.lat, lng=order.destination.lng, lines=(),
                               pickup_node_id=order.pickup_node_id, approximate=order.destination.approximate)
        return self.nodes.candidates(request), sorted({l.sku for l in order.lines})

    async def _create(self, order: NormalizedOrder, order_id: str, cause: str, strict: bool,
                      prefetched: dict[str, dict[str, int]] | None = None) -> tuple[Order, bool]:
        now = datetime.now(timezone.utc)
        line_status = ["open"] * len(order.lines)
        line_reason: list[str | None] = [None] * len(order.lines)

        unknown = await self.skus.unknown({l.sku for l in order.lines})
        if unknown and strict:
            idx = next(i for i, l in enumerate(order.lines) if l.sku in unknown)
            raise UnknownReference(f"unknown SKU '{order.lines[idx].sku}'", field=f"lines[{idx}].sku")
        for i, l in enumerate(order.lines):
            if l.sku in unknown:
                line_status[i], line_reason[i] = "backordered", f"unknown SKU '{l.sku}'"
        pickup_problem = None
        if order.delivery_mode is DeliveryMode.PICKUP:
            node = self.nodes.nodes.get(order.pickup_node_id or "")
            if node is None or "pickup" not in node.capabilities:
                pickup_problem = f"pickup store '{order.pickup_node_id}' is unknown or does not offer pickup"
                if strict:
                    raise UnknownReference(pickup_problem, field="pickup_node_id")

        paid_at = order.paid_at or (now if order.status is ChannelStatus.PAID else None)
        promised_by = order.promised_by
        if promised_by is None and paid_at and order.delivery_mode is DeliveryMode.DELIVERY:
            promised_by = paid_at + timedelta(minutes=self.settings.delivery_promise_minutes)

        reserved: list[Reserved] = []
        reason: str | None = None
        plan_reason: str | None = None
        if order.status is not ChannelStatus.PAID:
            # nothing to reserve: not paid yet, cancelled, or already sent by another system
            status = _FIRST_SEEN_AS[order.status]
            if status in (OrderStatus.SHIPPED, OrderStatus.DELIVERED):
                reason = f"reported {order.status} by {order.channel} before the OMS saw it; nothing reserved"
        else:
            need = [placement.PlanLine(l.sku, l.quantity) for i, l in enumerate(order.lines) if line_status[i] == "open"]
            if pickup_problem:
                plan_reason = pickup_problem
            elif need:
                left = (promised_by - now).total_seconds() / 60 if promised_by else None
                reserved, plan = await self.place(
                    str(order.delivery_mode), order.destination.lat, order.destination.lng, order.pickup_node_id,
                    need, minutes_left=left, approximate=order.destination.approximate, ref=order.external_id,
                    prefetched=prefetched,
                )
                plan_reason = plan.reason
                _mark_unserved(order.lines, line_status, line_reason, reserved, plan)
            else:
                plan_reason = "; ".join(r for r in line_reason if r)
            status = OrderStatus.ALLOCATED if reserved else OrderStatus.BACKORDERED
            if status is OrderStatus.BACKORDERED:
                reason = plan_reason
            elif "backordered" in line_status:
                reason = "partly backordered: " + "; ".join(sorted({r for r in line_reason if r}))

        total = order.total_fen if order.total_fen is not None else order.lines_total_fen + order.freight_fen - order.discount_fen
        rows = NewOrderRows(
            order=(
                order_id, str(order.channel), order.external_id, str(status), str(order.status),
                str(order.delivery_mode), msgspec.to_builtins(order.buyer), order.destination.lat,
                order.destination.lng, order.destination.address, order.destination.approximate,
                order.pickup_node_id, promised_by, paid_at, max(total, 0), order.freight_fen,
                order.discount_fen, reason, order.updated_at,
            ),
            lines=[
                (order_id, i + 1, l.sku, l.quantity, l.unit_price, l.platform_line_id, l.platform_sku_id,
                 line_status[i], line_reason[i])
                for i, l in enumerate(order.lines)
            ],
            history=[(order_id, None, str(status), cause, {"plan": plan_reason} if plan_reason else None)],
        )
        rows.fulfillments, rows.reservations = _fulfillment_rows(order_id, reserved, now)
        try:
            created = await self.writer.write(rows)
        except Exception as exc:
            await self._release_all(reserved)
            log.error("order write failed for %s/%s: %s", order.channel, order.external_id, exc)
            raise Unavailable("the order could not be stored; nothing was kept, retry") from exc
        if not created:  # it existed already (claim lost with a Redis flush): keep the stored one
            await self._release_all(reserved)
            oid = await self.pool.fetchval(Q["order_id_by_external"], order.channel, order.external_id)
            async with self.pool.acquire() as conn:
                return await load_order(conn, oid), False
        return Order(
            id=order_id, channel=str(order.channel), external_id=order.external_id, status=status,
            channel_status=str(order.status), delivery_mode=order.delivery_mode,
            destination=order.destination,
            lines=[OrderLineView(sku=l.sku, quantity=l.quantity, unit_price=l.unit_price,
                                 status=line_status[i], reason=line_reason[i]) for i, l in enumerate(order.lines)],
            fulfillments=[
                Fulfillment(id=r.fulfillment_id, node_id=r.alloc.node_id, status=FulfillmentStatus.ALLOCATED,
                            lines=[FulfillmentLine(l.sku, l.quantity) for l in r.alloc.lines],
                            role=r.alloc.role, distance_m=r.alloc.distance_m)
                for r in reserved
            ],
            reason=reason, pickup_node_id=order.pickup_node_id, total_fen=max(total, 0), paid_at=paid_at,
            promised_by=promised_by, minutes_left=minutes_left(promised_by, str(status), now),
            created_at=now, updated_at=now,
        ), True

    # ---- choose and reserve ----------------------------------------------------------------
    @metrics.timed_routing
    async def place(self, mode: str, lat: float, lng: float, pickup_node_id: str | None,
                    need: list[placement.PlanLine], exclude: frozenset[str] = frozenset(), *,
                    minutes_left: float | None = None, approximate: bool = False, ref: str = "",
                    prefetched: dict[str, dict[str, int]] | None = None
                    ) -> tuple[list[Reserved], placement.Plan]:
        """Plan with routing/ over fresh availability, then reserve at each planned node.

        A reservation that loses a race (stock moved since the read) is released with the rest
        and the order re-planned without that node, a bounded number of times.
        """
        await self.nodes.refresh()
        if minutes_left is not None and minutes_left <= 0:
            # a promise already missed no longer narrows the choice: serve it as soon as possible
            # (the order view flags it), rather than backorder a paid order that stock can serve
            minutes_left = None
        request = RouteRequest(ref=ref, mode=routing.Mode(mode), lat=lat, lng=lng, lines=tuple(need),
                               pickup_node_id=pickup_node_id, minutes_left=minutes_left, approximate=approximate)
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
                    plan = placement.no_plan(need, f"{plan.reason} (stock moved at {', '.join(lost)} meanwhile)")
                return [], plan
            reserved: list[Reserved] = []
            for alloc in plan.allocations:
                fid = new_id("f")
                res = await self.inventory.reserve(alloc.node_id, fid, [(l.sku, l.quantity) for l in alloc.lines])
                if not res.ok:
                    metrics.reservation_failed(res.short_sku)
                    await self._release_all(reserved)
                    reserved = []
                    lost.append(alloc.node_id)
                    exclude = exclude | {alloc.node_id}
                    break
                reserved.append(Reserved(fid, alloc))
            if reserved:
                for r in reserved:
                    self.nodes.allocated(r.alloc.node_id)
                return reserved, plan
        return [], placement.no_plan(need, f"stock moved at {', '.join(lost)} while routing; gave up after {len(lost)} tries")

    async def _release_all(self, reserved: list[Reserved]) -> None:
        for r in reserved:
            try:
                await self.inventory.release(r.alloc.node_id, r.fulfillment_id)
            except aioredis.RedisError:
                log.exception("could not release reservation %s at %s; rebuild-inventory will", r.fulfillment_id, r.alloc.node_id)


#: the status of an order whose first news is not "paid"
_FIRST_SEEN_AS = {
    ChannelStatus.UNPAID: OrderStatus.CREATED,
    ChannelStatus.CANCELLED: OrderStatus.CANCELLED,
    ChannelStatus.SHIPPED: OrderStatus.SHIPPED,
    ChannelStatus.COMPLETED: OrderStatus.DELIVERED,
}


class _Stale(Exception):
    """The order moved on while we routed it."""


def _fulfillment_rows(order_id: str, reserved: list[Reserved], now: datetime) -> tuple[list[tuple], list[tuple]]:
    f_rows, r_rows = [], []
    for r in reserved:
        ready = r.alloc.ready_in_minutes
        f_rows.append((r.fulfillment_id, order_id, r.alloc.node_id, str(FulfillmentStatus.ALLOCATED),
                       str(r.alloc.role), r.alloc.distance_m,
                       now + timedelta(minutes=ready) if ready is not None else None))
        for l in r.alloc.lines:
            r_rows.append((r.fulfillment_id, l.sku, order_id, r.alloc.node_id, l.quantity))
    return f_rows, r_rows


def _mark_unserved(lines, line_status: list[str], line_reason: list[str | None],
                   reserved: list[Reserved], plan: placement.Plan) -> None:
    """Backorder the open lines the reservations do not cover, with routing's reason per SKU."""
    served: dict[str, int] = {}
    for r in reserved:
        for l in r.alloc.lines:
            served[l.sku] = served.get(l.sku, 0) + l.quantity
    why = {u.sku: u.reason for u in plan.unserved}
    for i, line in enumerate(lines):
        if line_status[i] != "open":
            continue
        got = min(served.get(line.sku, 0), line.quantity)
        served[line.sku] = served.get(line.sku, 0) - got
        if got == 0:
            line_status[i], line_reason[i] = "backordered", why.get(line.sku, plan.reason)
        elif got < line.quantity:
            line_reason[i] = f"{line.quantity - got} of {line.quantity} backordered: {why.get(line.sku, plan.reason)}"
