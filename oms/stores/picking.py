"""Picked: ready for the courier, or (pickup) ready for the buyer with a code."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import asyncpg

from oms.errors import IllegalTransition, NotFound, Unavailable
from oms.infra.db import Q
from oms.infra.ids import new_id
from oms.orders.model import (
    FulfillmentStatus,
    check_fulfillment_transition,
)
from oms.stores.model import (
    PICKUP_CODE_DIGITS,
    PICKUP_CODE_QUARANTINE,
    StoreOrder,
)
from oms.stores.status import follow
from oms.stores.work import advance, locate, refuse_if_cancelled, store_view

if TYPE_CHECKING:
    from oms.wiring import Services


F = FulfillmentStatus


# ---- picked ------------------------------------------------------------------------------
async def _issue_code(conn: asyncpg.Connection, f: asyncpg.Record, node_id: str) -> str:
    """Mark a pickup ready with a random code unique among the store's open pickups (the unique
    index decides a race) and not handed out there lately."""
    for _ in range(50):
        code = f"{secrets.randbelow(10 ** PICKUP_CODE_DIGITS):0{PICKUP_CODE_DIGITS}d}"
        if await conn.fetchval(Q["store_pickup_code_recent"], node_id, code, PICKUP_CODE_QUARANTINE):
            continue
        try:
            async with conn.transaction():  # a savepoint: a clash retries with another code
                await advance(conn, f, F.READY_FOR_PICKUP, code=code)
            return code
        except asyncpg.UniqueViolationError:
            continue
    raise Unavailable("no free pickup code found at this store; retry")


async def _live_transfers(conn: asyncpg.Connection, order_id: str) -> list[asyncpg.Record]:
    return [x for x in await conn.fetch(Q["fulfillments_by_order"], order_id)
            if x["role"] == "transfer" and x["status"] not in (F.REJECTED, F.CANCELLED)]


async def _ready_for_transfers(conn: asyncpg.Connection, order: asyncpg.Record, f: asyncpg.Record | None,
                               node_id: str) -> asyncpg.Record:
    """A pickup is ready only when the goods transferred in from other nodes have arrived; when
    all of them come that way, the pickup store gets its own (stock-less) fulfilment to hand over."""
    transfers = await _live_transfers(conn, order["id"])
    waiting = sorted({x["node_id"] for x in transfers if x["status"] != F.SHIPPED})
    if waiting:
        raise IllegalTransition(
            f"order '{order['id']}' is waiting for goods transferred from {', '.join(waiting)}; "
            "mark it ready when they arrive", current=str(order["status"]), requested="ready_for_pickup")
    if f is not None:
        return f
    if not transfers:
        raise NotFound(f"store '{node_id}' has no order '{order['id']}'", field="order_id")
    fid = new_id("f")
    await conn.execute(Q["fulfillments_insert_many"], [fid], [order["id"]], [node_id], [str(F.ALLOCATED)],
                       ["serve"], [0.0], [None])
    return await conn.fetchrow(Q["store_fulfillment_by_id_for_update"], fid)


async def mark_picked(svc: Services, node_id: str, order_id: str) -> StoreOrder:
    """Delivery / ship: ready for the courier. Pickup: ready for the buyer, with a code (sent to
    the buyer through the channel; the store never sees it, it checks the one the buyer shows)."""
    async with svc.pool.acquire() as conn:
        async with conn.transaction():
            order, f = await locate(conn, order_id, node_id, pickup_store=True)
            refuse_if_cancelled(order, f, "picked")
            pickup = order["delivery_mode"] == "pickup" and (f is None or f["role"] != "transfer")
            new = F.READY_FOR_PICKUP if pickup else F.PICKED
            if pickup and f is not None and f["status"] == F.REJECTED and await _live_transfers(conn, order_id):
                f = None  # the store turned its own stock down; the goods come by transfer instead
            if f is not None:
                check_fulfillment_transition(f["status"], new)
            if pickup:
                f = await _ready_for_transfers(conn, order, f, node_id)
                await _issue_code(conn, f, node_id)
            else:
                await advance(conn, f, new)
            await follow(conn, order_id, "store:picked",
                          {"node_id": node_id, "fulfillment_id": f["id"], "fulfillment_status": str(new)})
        return await store_view(conn, order_id, f["id"])
