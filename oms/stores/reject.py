"""A store rejects (part of) its share: the units leave its stock and go to the next best node.

Three steps, so that no PostgreSQL row lock is held while routing runs or Redis reserves:

    1. take off    one transaction under the order, fulfilment and stock row locks: the units leave
                   the reservation and on-hand (Redis on-hand follows while the stock rows are
                   locked), the rejection is recorded and the lines it leaves without stock are
                   marked backordered "re-routing" — what the order would be if no node could take
                   them, so a process dying after this step loses nothing
    2. re-route    no locks: plan and reserve in Redis, avoiding every node that turned the order down
    3. record      a second transaction: the new fulfilments and reservations, the lines served again
                   opened, the order following its fulfilments; if it fails (or the order was
                   cancelled meanwhile) the new reservations are released
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import asyncpg
import msgspec
import redis.asyncio as aioredis

from oms.errors import Conflict, InvalidInput
from oms.infra.db import Q
from oms.orders.model import FulfillmentStatus, OrderStatus, check_fulfillment_transition
from oms.orders.rows import Reserved, columns, fulfillment_rows
from oms.stores.model import OUT_OF_STOCK_REASONS, StoreLine, StoreOrder, utcnow
from oms.stores.status import follow
from oms.stores.work import advance, locate, refuse_if_cancelled, store_view
from routing import RouteLine

if TYPE_CHECKING:
    from oms.wiring import Services

log = logging.getLogger("oms.stores")

F = FulfillmentStatus


class _TakenOff(msgspec.Struct, kw_only=True):
    """What step 1 recorded, and what steps 2 and 3 need of the order."""

    fulfillment_id: str
    reason: str
    rejected: dict[str, int]
    #: order lines step 1 marked backordered while their units are re-routed
    waiting_lines: list[int]
    pending_reason: str
    order: dict


async def reject(svc: Services, node_id: str, order_id: str, reason: str,
                 lines: Sequence[tuple[str, int]] | None = None) -> StoreOrder:
    """The store cannot serve (some of) its part: those units leave the node's availability and
    its reservation, and go to the next best node in this same request (or are backordered).
    Lines not named stay on this store's pick list."""
    reason = reason.strip()
    if not reason:
        raise InvalidInput("reason: say why the store cannot serve it (e.g. out_of_stock, damaged)", field="reason")
    await svc.nodes.refresh()
    async with svc.pool.acquire() as conn:
        taken = await _take_off(svc, conn, node_id, order_id, reason, lines)
        # committed: this node's reservation gives the rejected units back (they left on-hand above)
        try:
            await svc.inventory.release(node_id, taken.fulfillment_id, list(taken.rejected.items()))
        except aioredis.RedisError:  # reserved stays high: holds back, never oversells
            log.exception("could not release %s at %s in Redis; rebuild-inventory will", taken.fulfillment_id, node_id)
        new, plan_reason = await _reroute(svc, conn, node_id, order_id, taken)
        try:
            unserved = await _record(conn, node_id, order_id, taken, new, plan_reason)
        except BaseException:
            await _give_back(svc, new)  # the new reservations were never recorded
            raise
        if unserved is None:  # cancelled while we routed: its rejected units need no new home
            await _give_back(svc, new)
            new, unserved = [], {}
        served = _units(new)
        rerouted = [StoreLine(s, min(q, served[s])) for s, q in sorted(taken.rejected.items()) if served[s]]
        return await store_view(conn, order_id, taken.fulfillment_id, rerouted=rerouted,
                                backordered=[StoreLine(s, q) for s, q in sorted(unserved.items())])


# ---- 1. take the units off, under the row locks ---------------------------------------------------
async def _take_off(svc: Services, conn: asyncpg.Connection, node_id: str, order_id: str, reason: str,
                    lines: Sequence[tuple[str, int]] | None) -> _TakenOff:
    out_of_stock = reason.lower() in OUT_OF_STOCK_REASONS
    async with conn.transaction():
        order, f = await locate(conn, order_id, node_id)
        refuse_if_cancelled(order, f, "rejected")
        check_fulfillment_transition(f["status"], F.REJECTED)
        held = {r["sku"]: r["quantity"] for r in await conn.fetch(Q["store_fulfillment_lines"], f["id"])
                if r["state"] == "reserved"}
        rejected = _rejected_units(held, lines)
        kept = {s: q - rejected.get(s, 0) for s, q in held.items() if q > rejected.get(s, 0)}
        deltas = await _stock_off(conn, node_id, f["id"], rejected, out_of_stock)
        if kept:
            await conn.execute(Q["store_fulfillment_touch"], f["id"], reason)
        else:
            await advance(conn, f, F.REJECTED, reason=reason)
        pending = f"rejected at {node_id} ({reason}); re-routing"
        waiting = []
        for line in await conn.fetch(Q["order_lines_by_order"], order_id):
            if line["sku"] in rejected and line["status"] == "open":
                await conn.execute(Q["order_line_set_status"], order_id, line["line_no"], "backordered", pending)
                waiting.append(line["line_no"])
        await follow(conn, order_id, "store:rejected", {
            "node_id": node_id, "fulfillment_id": f["id"], "reason": reason,
            "lines": [{"sku": s, "quantity": q} for s, q in sorted(rejected.items())],
            "kept": [{"sku": s, "quantity": q} for s, q in sorted(kept.items())],
            "on_hand_change": deltas,
        }, backorder_reason=pending if not kept else None)
        # Redis on-hand for this node, while its stock rows are still locked (Redis follows PostgreSQL)
        for sku, delta in sorted(deltas.items()):
            if delta:
                await svc.inventory.adjust(node_id, sku, delta)
    return _TakenOff(fulfillment_id=f["id"], reason=reason, rejected=rejected, waiting_lines=waiting, pending_reason=pending,
                     order=dict(order))


async def _stock_off(conn: asyncpg.Connection, node_id: str, fulfillment_id: str, rejected: dict[str, int],
                     out_of_stock: bool) -> dict[str, int]:
    """The rejected units leave the reservation and on-hand; returns each SKU's on-hand change."""
    deltas: dict[str, int] = {}
    for sku in sorted(rejected):
        before = await conn.fetchval(Q["store_stock_get_for_update"], node_id, sku) or 0
        if await conn.fetchval(Q["reservation_reduce"], fulfillment_id, sku, rejected[sku]) is None:
            raise Conflict("the reservation changed at the same moment; reload and retry", field="lines")
        await conn.execute(Q["stock_add"], node_id, sku, -rejected[sku])
        if out_of_stock:
            await conn.fetchval(Q["store_stock_zero_available"], node_id, sku)
        after = await conn.fetchval(Q["store_stock_get"], node_id, sku) or 0
        deltas[sku] = after - before
    return deltas


def _rejected_units(held: dict[str, int], lines: Sequence[tuple[str, int]] | None) -> dict[str, int]:
    if lines is None:
        return dict(held)
    if not lines:
        raise InvalidInput("lines: name at least one line, or leave lines out to reject all of it", field="lines")
    out: dict[str, int] = defaultdict(int)
    for i, (sku, qty) in enumerate(lines):
        if sku not in held:
            raise InvalidInput(f"lines[{i}].sku: '{sku}' is not part of this store's share of the order",
                               field=f"lines[{i}].sku")
        out[sku] += qty
        if out[sku] > held[sku]:
            raise InvalidInput(f"lines[{i}].quantity: this store holds only {held[sku]} of '{sku}' for the order",
                               field=f"lines[{i}].quantity")
    return dict(out)


# ---- 2. route and reserve, no locks held -----------------------------------------------------------
async def _reroute(svc: Services, conn: asyncpg.Connection, node_id: str, order_id: str,
                   taken: _TakenOff) -> tuple[list[Reserved], str]:
    """Plan and reserve the rejected units elsewhere, avoiding every node that turned this order down."""
    need = [RouteLine(s, q) for s, q in sorted(taken.rejected.items())]
    if not need:
        return [], "nothing to re-route"
    exclude = {r["node_id"] for r in await conn.fetch(Q["store_fulfillment_nodes_rejected"], order_id)} | {node_id}
    o = taken.order
    new, plan = await svc.allocator.place(
        o["delivery_mode"], o["dest_lat"], o["dest_lng"], o["pickup_node_id"], need, exclude=frozenset(exclude),
        promised_by=o["promised_by"], approximate=o["dest_approximate"], ref=o["external_id"],
    )
    return new, plan.reason


# ---- 3. record the new fulfilments -----------------------------------------------------------------
async def _record(conn: asyncpg.Connection, node_id: str, order_id: str, taken: _TakenOff,
                  new: list[Reserved], plan_reason: str) -> dict[str, int] | None:
    """Write the re-route under the order's row lock; returns the units no node took (None: the
    order was cancelled meanwhile, nothing written)."""
    async with conn.transaction():
        order = await conn.fetchrow(Q["order_by_id_for_update"], order_id)
        if order["status"] == OrderStatus.CANCELLED:
            return None
        if new:
            f_rows, r_rows = fulfillment_rows(order_id, new, utcnow())
            await conn.execute(Q["fulfillments_insert_many"], *columns(f_rows))
            await conn.execute(Q["reservations_insert_many"], *columns(r_rows))
        served = _units(new)
        unserved = {s: q - served[s] for s, q in taken.rejected.items() if q > served[s]}
        why = f"rejected at {node_id} ({taken.reason}); {plan_reason}" if unserved else None
        for line in await conn.fetch(Q["order_lines_by_order"], order_id):
            if line["line_no"] in taken.waiting_lines and line["reason"] == taken.pending_reason:
                status = "backordered" if line["sku"] in unserved else "open"
                await conn.execute(Q["order_line_set_status"], order_id, line["line_no"], status,
                                   why if status == "backordered" else None)
        await follow(conn, order_id, "store:rerouted", {
            "from_node_id": node_id, "plan": plan_reason,
            "rerouted_to": [{"node_id": r.alloc.node_id, "fulfillment_id": r.fulfillment_id,
                             "lines": [{"sku": l.sku, "quantity": l.quantity} for l in r.alloc.lines]}
                            for r in new],
            "backordered": [{"sku": s, "quantity": q} for s, q in sorted(unserved.items())],
        }, backorder_reason=why)
        if not unserved and (order["reason"] or "").endswith(taken.pending_reason):
            await conn.execute(Q["order_clear_reason"], order_id)
    return unserved


def _units(reserved: list[Reserved]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for r in reserved:
        for l in r.alloc.lines:
            out[l.sku] += l.quantity
    return out


async def _give_back(svc: Services, reserved: list[Reserved]) -> None:
    for r in reserved:
        try:
            await svc.inventory.release(r.alloc.node_id, r.fulfillment_id)
        except aioredis.RedisError:
            log.exception("could not release %s at %s; rebuild-inventory will", r.fulfillment_id, r.alloc.node_id)
