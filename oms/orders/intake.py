"""Order intake: the one function every entry point (POST /orders, webhooks, channel workers) calls.

    claim (channel, external id) in Redis  -> at most one request works on an order at a time
    check references, decide, place         -> reserve in Redis, all lines per node or none
    write order, lines, fulfilments, reservations, history in one PostgreSQL transaction
    on a failed write: release the reservations, answer 503 so the caller retries
    on a write in doubt (connection lost at COMMIT): keep them and the claim, read the order
    back once PostgreSQL answers (oms.orders.doubt), answer 503 unless that is known at once
An order no node can serve is written as `backordered` with the reason, never dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone

import asyncpg
import msgspec
import redis.asyncio as aioredis

from oms.channels.shops import deducts_at_order, default_shop_id
from oms.config import Settings
from oms.errors import InvalidInput, Unavailable, UnknownReference, WriteInDoubt
from oms.infra.db import Q
from oms.infra.ids import id_age_s, new_id
from oms.infra.text import find_bad_text
from oms.network.promise import PromiseClock
from oms.ops import metrics
from oms.orders import claims, decide
from oms.orders.allocate import Allocator
from oms.orders.cancel import cancel_order
from oms.orders.decide import ChannelAction
from oms.orders.lines import line_states
from oms.orders.doubt import Doubt, DoubtResolver
from oms.orders.model import (
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
from oms.orders.read import load_order
from oms.orders.rows import HistoryRow, LineRow, NewOrderRows, OrderRow, Reserved, fulfillment_rows
from oms.orders.writer import OrderWriter
from oms.stock.catalogue import SkuCatalogue
from routing import RouteLine

log = logging.getLogger("oms.intake")

#: how long a duplicate waits for the request that holds the order's claim
_WAIT_FOR_HOLDER_S = 10
#: how long a request whose write is in doubt waits for the read-back before answering 503
_WAIT_FOR_DOUBT_S = 1.0


class _Decision(msgspec.Struct, kw_only=True):
    """What a new order becomes: its status, per-line outcome and the reservations made for it."""

    status: OrderStatus
    line_status: list[str]
    line_reason: list[str | None]
    reserved: list[Reserved]
    reason: str | None = None
    plan_reason: str | None = None
    paid_at: datetime | None = None
    promised_by: datetime | None = None
    #: unpaid, its platform deducts at order time: the reservations are a hold
    held: bool = False


class IntakeService:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, redis: aioredis.Redis, allocator: Allocator,
                 skus: SkuCatalogue, writer: OrderWriter) -> None:
        self.settings = settings
        self.pool = pool
        self.redis = redis
        self.allocator = allocator
        self.inventory = allocator.inventory
        self.nodes = allocator.nodes
        self.skus = skus
        self.writer = writer
        self.promise = allocator.promise
        self.doubts = DoubtResolver(pool, redis, allocator.release_all, allocator.confirm_all)
        allocator.doubts = self.doubts

    async def close(self) -> None:
        await self.doubts.close()

    # ---- entry point -------------------------------------------------------------------
    async def submit(self, order: NormalizedOrder, *, cause: str, strict: bool = True) -> tuple[Order, bool]:
        """Upsert one order by (channel, external id); returns (order, created).

        strict: unknown SKUs / pickup stores are a 422 (trusted internal callers); otherwise
        (channel pushes) the line is backordered with the reason and the rest goes on.
        """
        metrics.order_received(order.channel)
        key = claims.claim_key(order.channel, order.external_id)
        while True:
            result = await self._claim_and_create(order, key, cause, strict)
            if result is not None:
                break
            existing = await self._wait_for_holder(order, key)
            if existing is not None:
                return await self.apply_update(existing, order, cause), False
            # nobody holds it any more: the other attempt failed and let go; try to claim again
        view, created = result
        metrics.observe_order(view, created)
        return view, created

    async def _claim_and_create(self, order: NormalizedOrder, key: str, cause: str, strict: bool
                                ) -> tuple[Order, bool] | None:
        """Claim the order and create it; None when another request holds the claim."""
        # the claim holds the id the order will have: waiters find it in PostgreSQL once written
        order_id = new_id("o")
        # one round trip: the claim, and the availability routing will most likely need (both
        # queued in this turn of the loop, so they share a pipeline with other requests' commands)
        await self.nodes.refresh()
        cands, skus = self._likely_reads(order)
        holder = claims.claim_value(order_id, self.inventory.owner)
        claim = self.inventory.batch.command("SET", key, holder, "NX", "EX", claims.CLAIM_TTL_S)
        try:
            prefetched = await self.inventory.available(cands, skus) if cands else None
        except BaseException:
            # the reads failed: a claim that went through must not hold the order for 30 s
            if (await asyncio.gather(claim, return_exceptions=True))[0] == b"OK":
                await claims.drop_claim(self.redis, key, holder)
            raise
        if not await claim:
            return None
        try:
            view, created = await asyncio.shield(self._create(order, order_id, cause, strict, prefetched,
                                                              (key, holder)))
        except WriteInDoubt:
            raise  # the claim stays until the read-back says whether the order was kept
        except BaseException:
            await claims.drop_claim(self.redis, key, holder)
            raise
        if not created:  # stored before under another id (a claim lost with a Redis flush)
            await self.redis.set(key, view.id, ex=claims.CLAIM_TTL_S)
            view = await self.apply_update(view.id, order, cause)
        return view, created

    async def _wait_for_holder(self, order: NormalizedOrder, key: str) -> str | None:
        """Another request holds or held this order: its id once stored, None if nobody holds it."""
        deadline = time.monotonic() + _WAIT_FOR_HOLDER_S
        while time.monotonic() < deadline:
            val = await self.redis.get(key)
            oid, worker = claims.parse_claim(val) if val else (await self.pool.fetchval(
                Q["order_id_by_external"], order.channel, order.external_id), None)
            if oid is None:
                return None
            if await self.pool.fetchval(Q["order_exists"], oid):
                return oid
            # its holder died before writing: take over once the reconciler has settled what it
            # reserved (or, without a reconciler, once the claim is old)
            if (worker and await claims.holder_settled(self.redis, worker)) or id_age_s(oid) > claims.ORPHAN_CLAIM_S:
                await claims.drop_claim(self.redis, key, val.decode() if val else oid)
            await asyncio.sleep(0.02)
        raise Unavailable("the same order is still being processed by another request; retry")

    # ---- a status update for an order we already have ------------------------------------
    async def apply_update(self, order_id: str, order: NormalizedOrder, cause: str) -> Order:
        """Apply a newer channel status; an older or equal one changes nothing."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(Q["order_by_id"], order_id)
            if row is None:
                raise Unavailable("order vanished while being updated; retry")
            action = decide.channel_update(order.status, order.updated_at, ChannelStatus(row["channel_status"]),
                                           row["channel_updated_at"], row["status"])
            if action is ChannelAction.IGNORE:
                return await load_order(conn, order_id, clock=self.promise)
            async with conn.transaction():
                await conn.execute(Q["order_set_channel_status"], order_id, str(order.status), order.updated_at)
        if action is ChannelAction.CANCEL:
            return await cancel_order(self.pool, self.inventory, order_id, cause, reason=f"cancelled by {order.channel}")
        if action is ChannelAction.ALLOCATE:
            return await self.allocator.allocate_existing(order_id, cause)
        async with self.pool.acquire() as conn:
            return await load_order(conn, order_id, clock=self.promise)

    # ---- a new order -----------------------------------------------------------------------
    def _likely_reads(self, order: NormalizedOrder) -> tuple[list[str], list[str]]:
        """The candidates and SKUs `place` will read for a paid order (nothing for others)."""
        if order.status is not ChannelStatus.PAID:
            return [], []
        request = self.nodes.request(order.delivery_mode, order.destination.lat, order.destination.lng, (),
                                     pickup_node_id=order.pickup_node_id, approximate=order.destination.approximate,
                                     ref=order.external_id)
        return self.nodes.candidates(request), sorted({l.sku for l in order.lines})

    async def _create(self, order: NormalizedOrder, order_id: str, cause: str, strict: bool,
                      prefetched: dict[str, dict[str, int]] | None = None,
                      claim: tuple[str, str] | None = None) -> tuple[Order, bool]:
        now = datetime.now(timezone.utc)
        decision = await self._decide(order, strict, now, prefetched)
        rows = _new_order_rows(order, order_id, decision, cause, now)
        try:
            created = await self.writer.write(rows)
        except WriteInDoubt:
            self.doubts.hold(Doubt(order_id, decision.reserved, claim=claim))
            kept = await self.doubts.settled(order_id, _WAIT_FOR_DOUBT_S)
            if kept is None:
                raise
            if not kept:
                raise Unavailable("the order could not be stored; nothing was kept, retry") from None
            return _view_of_new(order, order_id, decision, now, self.promise,
                                self._queue_places(decision.reserved)), True
        except Exception as exc:
            await self.allocator.release_all(decision.reserved)
            log.error("order write failed for %s/%s: %r", order.channel, order.external_id, exc)
            if isinstance(exc, (asyncpg.DataError, UnicodeError)):
                bad = find_bad_text(msgspec.to_builtins(order))
                if bad:  # text PostgreSQL cannot store (a worker's order: HTTP checks at the edge)
                    raise InvalidInput(f"{bad[0]}: {bad[1]}", field=bad[0]) from None
            raise Unavailable("the order could not be stored; nothing was kept, retry") from exc
        if not created:
            oid = await self.pool.fetchval(Q["order_id_by_external"], order.channel, order.external_id)
            if oid != order_id:  # it existed already (claim lost with a Redis flush): keep the stored one
                await self.allocator.release_all(decision.reserved)
                async with self.pool.acquire() as conn:
                    return await load_order(conn, oid, clock=self.promise), False
            # ours: a batch that lost its connection had kept it before the one-by-one retry
        await self.allocator.confirm_all(decision.reserved)
        return _view_of_new(order, order_id, decision, now, self.promise, self._queue_places(decision.reserved)), True

    def _queue_places(self, reserved: list[Reserved]) -> list[tuple[int, int]]:
        """(fulfilments ahead, picks per hour) of each new fulfilment, as routing saw its node's queue
        (the count already includes the new one)."""
        places = []
        for r in reserved:
            waiting, capacity = self.nodes.queue_at(r.alloc.node_id)
            places.append((max(waiting - 1, 0), capacity))
        return places

    async def _decide(self, order: NormalizedOrder, strict: bool, now: datetime,
                      prefetched: dict[str, dict[str, int]] | None) -> _Decision:
        """Check what the order names, then route and reserve it if it is paid."""
        unknown = await self.skus.unknown({l.sku for l in order.lines})
        if unknown and strict:
            idx = next(i for i, l in enumerate(order.lines) if l.sku in unknown)
            raise UnknownReference(f"unknown SKU '{order.lines[idx].sku}'", field=f"lines[{idx}].sku")
        line_status, line_reason = decide.check_lines([l.sku for l in order.lines], unknown)
        pickup_problem = self._pickup_problem(order, strict)
        paid_at = order.paid_at or (now if order.status is ChannelStatus.PAID else None)
        d = _Decision(status=OrderStatus.CREATED, line_status=line_status, line_reason=line_reason, reserved=[],
                      paid_at=paid_at, promised_by=self.promise.promised_by(order.promised_by, paid_at,
                                                                            order.delivery_mode))
        if order.status is not ChannelStatus.PAID:
            # nothing to reserve (not paid yet, cancelled, or already sent by another system),
            # unless its platform already took the units off its own counter: then they are held
            d.status, d.reason = decide.unpaid_outcome(order.status, order.channel)
            shop_deducts = (order.status is ChannelStatus.UNPAID and order.deducts_at_order is None
                            and await deducts_at_order(self.pool, order.shop_id, order.channel))
            if not decide.holds_while_unpaid(order.status, order.deducts_at_order, shop_deducts):
                return d
        need = [RouteLine(l.sku, l.quantity) for i, l in enumerate(order.lines) if line_status[i] == "open"]
        plan = None
        if pickup_problem:
            d.plan_reason = pickup_problem
        elif need:
            d.reserved, plan = await self.allocator.place(
                str(order.delivery_mode), order.destination.lat, order.destination.lng, order.pickup_node_id,
                need, promised_by=d.promised_by, approximate=order.destination.approximate, ref=order.external_id,
                prefetched=prefetched,
            )
            d.plan_reason = plan.reason
        else:
            d.plan_reason = "; ".join(r for r in line_reason if r)
        if order.status is not ChannelStatus.PAID:  # a hold: its lines wait for the payment, not for stock
            d.held = True
            d.plan_reason = f"{'held until paid' if d.reserved else 'nothing held'}: {d.plan_reason}"
            return d
        if plan is not None:
            d.line_status, d.line_reason = decide.lines_after_plan(order.lines, line_status, line_reason,
                                                                   d.reserved, plan)
        d.status, d.reason = decide.new_order_outcome(d.line_status, d.line_reason, bool(d.reserved), d.plan_reason)
        return d

    def _pickup_problem(self, order: NormalizedOrder, strict: bool) -> str | None:
        """Why the named pickup store cannot take the order (None when it can, or not a pickup)."""
        if order.delivery_mode is not DeliveryMode.PICKUP:
            return None
        node = self.nodes.nodes.get(order.pickup_node_id or "")
        if node is not None and "pickup" in node.capabilities:
            return None
        problem = f"pickup store '{order.pickup_node_id}' is unknown or does not offer pickup"
        if strict:
            raise UnknownReference(problem, field="pickup_node_id")
        return problem


def _total_fen(order: NormalizedOrder) -> int:
    total = order.total_fen if order.total_fen is not None else order.lines_total_fen + order.freight_fen - order.discount_fen
    return max(total, 0)


def _fulfillment_status(d: _Decision) -> FulfillmentStatus:
    """An unpaid order's reservations are a hold; a paid one's are the store's work."""
    return FulfillmentStatus.HELD if d.held else FulfillmentStatus.ALLOCATED


def _new_order_rows(order: NormalizedOrder, order_id: str, d: _Decision, cause: str, now: datetime) -> NewOrderRows:
    rows = NewOrderRows(
        order=OrderRow(
            id=order_id, channel=str(order.channel), external_id=order.external_id, status=str(d.status),
            channel_status=str(order.status), delivery_mode=str(order.delivery_mode),
            buyer=msgspec.to_builtins(order.buyer), dest_lat=order.destination.lat, dest_lng=order.destination.lng,
            dest_address=order.destination.address, dest_approximate=order.destination.approximate,
            pickup_node_id=order.pickup_node_id, promised_by=d.promised_by, paid_at=d.paid_at,
            total_fen=_total_fen(order), freight_fen=order.freight_fen, discount_fen=order.discount_fen,
            reason=d.reason, channel_updated_at=order.updated_at,
            shop_id=order.shop_id or default_shop_id(order.channel), pay_by=order.pay_by,
        ),
        lines=[
            LineRow(order_id=order_id, line_no=i + 1, sku=l.sku, quantity=l.quantity, unit_price_fen=l.unit_price,
                    platform_line_id=l.platform_line_id, platform_sku_id=l.platform_sku_id,
                    status=d.line_status[i], reason=d.line_reason[i])
            for i, l in enumerate(order.lines)
        ],
        history=[HistoryRow(order_id=order_id, from_status=None, to_status=str(d.status), cause=cause,
                            detail={"plan": d.plan_reason} if d.plan_reason else None)],
    )
    rows.fulfillments, rows.reservations = fulfillment_rows(order_id, d.reserved, now, _fulfillment_status(d))
    return rows


def _view_of_new(order: NormalizedOrder, order_id: str, d: _Decision, now: datetime, clock: PromiseClock,
                 places: list[tuple[int, int]]) -> Order:
    """The order just written, as GET /orders/{id} would show it (without a read back)."""
    left = clock.minutes_left(d.promised_by, str(d.status), now)
    estimates = [clock.estimate(left, FulfillmentStatus.ALLOCATED, ahead, capacity) for ahead, capacity in places]
    held: dict[str, int] = {}
    for r in d.reserved:
        for l in r.alloc.lines:
            held[l.sku] = held.get(l.sku, 0) + l.quantity
    waiting = [st.waiting for st in line_states(
        [{"line_no": i + 1, "sku": l.sku, "quantity": l.quantity} for i, l in enumerate(order.lines)], held)]
    return Order(
        id=order_id, channel=str(order.channel), external_id=order.external_id, status=d.status,
        channel_status=str(order.status), delivery_mode=order.delivery_mode,
        destination=order.destination,
        lines=[OrderLineView(sku=l.sku, quantity=l.quantity, unit_price=l.unit_price,
                             status=d.line_status[i], reason=d.line_reason[i], line_no=i + 1,
                             waiting=waiting[i]) for i, l in enumerate(order.lines)],
        fulfillments=[
            Fulfillment(id=r.fulfillment_id, node_id=r.alloc.node_id, status=_fulfillment_status(d),
                        lines=[FulfillmentLine(l.sku, l.quantity) for l in r.alloc.lines],
                        role=r.alloc.role, distance_m=r.alloc.distance_m)
            for r in d.reserved
        ],
        reason=d.reason, pickup_node_id=order.pickup_node_id, total_fen=_total_fen(order), paid_at=d.paid_at,
        promised_by=d.promised_by, minutes_left=left,
        at_risk=clock.any_at_risk(estimates),
        late=clock.any_late(estimates),
        created_at=now, updated_at=now,
    )
