"""Picked: ready for the courier, or (pickup) ready for the buyer with a code; and `received`:
goods transferred in from other nodes arrived at the pickup store."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import asyncpg

from oms.errors import IllegalTransition, NotFound, Unavailable
from oms.infra.db import Q
from oms.infra.ids import new_id
from oms.orders.cancel import give_back_returned, return_transfer
from oms.orders.model import (
    GONE_FULFILLMENT,
    FulfillmentStatus,
    OrderStatus,
    check_fulfillment_transition,
)
from oms.stores.model import (
    ALREADY_DONE,
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
    return [x for x in await conn.fetch(Q["store_transfers_for_update"], order_id) if x["status"] not in GONE_FULFILLMENT]


def _refuse_until_received(order: asyncpg.Record, transfers: list[asyncpg.Record], node_id: str) -> None:
    waiting = [x for x in transfers if x["status"] != F.RECEIVED]
    if not waiting:
        return
    road = sorted(x["node_id"] for x in waiting if x["status"] == F.SHIPPED)
    source = sorted(x["node_id"] for x in waiting if x["status"] != F.SHIPPED)
    parts = ([f"on its way from {', '.join(road)}"] if road else []) + \
            ([f"not yet shipped by {', '.join(source)}"] if source else [])
    raise IllegalTransition(
        f"order '{order['id']}' waits for goods transferred in ({'; '.join(parts)}); when they arrive, "
        f"POST /stores/{node_id}/orders/{order['id']}/received", current=str(order["status"]),
        requested="ready_for_pickup")


async def _own_part(conn: asyncpg.Connection, order: asyncpg.Record, f: asyncpg.Record | None, node_id: str,
                    transfers: list[asyncpg.Record]) -> asyncpg.Record:
    """The pickup store's own fulfilment; when all the goods come by transfer, a stock-less one
    to hand them over with."""
    if f is not None and f["status"] not in GONE_FULFILLMENT:
        return f
    if not transfers:
        raise NotFound(f"store '{node_id}' has no order '{order['id']}'", field="order_id")
    fid = new_id("f")
    await conn.execute(Q["fulfillments_insert_many"], [fid], [order["id"]], [node_id], [str(F.ALLOCATED)],
                       ["serve"], [0.0], [None])
    return await conn.fetchrow(Q["store_fulfillment_by_id_for_update"], fid)


async def mark_picked(svc: Services, node_id: str, order_id: str) -> StoreOrder:
    """Delivery / ship / transfer: ready for the courier. Pickup: ready for the buyer, with a code
    (sent to the buyer through the channel; the store never sees it, it checks the one the buyer
    shows) — once every transfer into the store was received. A retry answers the same 200."""
    async with svc.pool.acquire() as conn:
        async with conn.transaction():
            order, f = await locate(conn, order_id, node_id, pickup_store=True)
            if f is not None and f["status"] in ALREADY_DONE["picked"]:
                return await store_view(conn, order_id, f["id"])  # a retry: already picked
            refuse_if_cancelled(order, f, "picked")
            pickup = order["delivery_mode"] == "pickup" and (f is None or f["role"] != "transfer")
            new = F.READY_FOR_PICKUP if pickup else F.PICKED
            if pickup:
                transfers = await _live_transfers(conn, order_id)
                if f is not None and f["status"] in GONE_FULFILLMENT and not transfers:
                    check_fulfillment_transition(f["status"], new)  # rejected here, nothing coming: 409
                _refuse_until_received(order, transfers, node_id)
                f = await _own_part(conn, order, f, node_id, transfers)
                await _issue_code(conn, f, node_id)
            else:
                await advance(conn, f, new)
            await follow(conn, order_id, "store:picked",
                         {"node_id": node_id, "fulfillment_id": f["id"], "fulfillment_status": str(new)})
        return await store_view(conn, order_id, f["id"])


# ---- received ----------------------------------------------------------------------------
async def mark_received(svc: Services, node_id: str, order_id: str) -> StoreOrder:
    """Goods transferred in for a pickup order arrived at its store. With every transfer here and
    nothing of the store's own left to pick, the order is ready for the buyer at once (a code is
    issued) and the pick list shows all of it awaiting hand-over. A cancelled order's goods join
    the store's stock. A retry answers the same 200."""
    returned = []
    async with svc.pool.acquire() as conn:
        async with conn.transaction():
            order = await conn.fetchrow(Q["order_by_id_for_update"], order_id)
            if order is None or order["delivery_mode"] != "pickup" or order["pickup_node_id"] != node_id:
                raise NotFound(f"store '{node_id}' has no order '{order_id}'", field="order_id")
            transfers = await conn.fetch(Q["store_transfers_for_update"], order_id)
            arrived = [x for x in transfers if x["status"] == F.SHIPPED]
            if not arrived and not any(x["status"] in (F.RECEIVED, F.RETURNED) for x in transfers):
                source = sorted({x["node_id"] for x in transfers if x["status"] not in GONE_FULFILLMENT})
                raise IllegalTransition(
                    f"nothing has been shipped to this store for order '{order_id}' yet"
                    + (f" (waiting for {', '.join(source)})" if source else ""),
                    current=str(order["status"]), requested="received")
            for x in arrived:
                await advance(conn, x, F.RECEIVED)
            cancelled = order["status"] == OrderStatus.CANCELLED
            if cancelled:
                for x in arrived:
                    returned += await return_transfer(conn, order, {**x, "status": F.RECEIVED})
            own = [f for f in await conn.fetch(Q["store_fulfillments_at_node_for_update"], order_id, node_id)
                   if f["role"] != "transfer"]
            f = own[0] if own else None
            if arrived and not cancelled:
                await follow(conn, order_id, "store:received", {
                    "node_id": node_id, "fulfillment_ids": [x["id"] for x in arrived]})
                live = [x for x in transfers if x["status"] not in GONE_FULFILLMENT]
                if len(live) == len([x for x in live if x["status"] in (F.SHIPPED, F.RECEIVED)]) \
                        and (f is None or f["status"] in GONE_FULFILLMENT):
                    # all of it came by transfer: nothing to pick here, ready for the buyer now
                    f = await _own_part(conn, order, None, node_id, live)
                    await _issue_code(conn, f, node_id)
                    await follow(conn, order_id, "store:picked", {
                        "node_id": node_id, "fulfillment_id": f["id"], "fulfillment_status": str(F.READY_FOR_PICKUP)})
        await give_back_returned(svc.inventory, returned)
        shown = f["id"] if f is not None else transfers[-1]["id"]
        return await store_view(conn, order_id, shown)
