"""Hand-over: shipped to the courier or collected with the pickup code; the reservation is committed.

Redis follows PostgreSQL: the commit in Redis runs after PostgreSQL committed (should Redis fail
in between, it holds back too much, never too little)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import asyncpg
import msgspec
import redis.asyncio as aioredis

from oms.channels import outbox
from oms.errors import Conflict, IllegalTransition, InvalidInput, NotFound, TooManyRequests
from oms.infra.db import Q
from oms.orders.model import (
    FulfillmentStatus,
    check_fulfillment_transition,
)
from oms.stores.model import (
    PICKUP_CODE_RE,
    StoreLine,
    StoreOrder,
    WRONG_CODE_LIMIT,
    WRONG_CODE_WINDOW_S,
)
from oms.stores.status import follow
from oms.stores.work import advance, locate, refuse_if_cancelled, store_view

if TYPE_CHECKING:
    from oms.wiring import Services

log = logging.getLogger("oms.stores")

F = FulfillmentStatus


# ---- hand-over ---------------------------------------------------------------------------
async def _hand_over(conn: asyncpg.Connection, order_id: str, node_id: str, f: asyncpg.Record,
                     new: FulfillmentStatus, cause: str) -> list[StoreLine]:
    """Fulfilment shipped/collected, its reservation committed, on-hand down (all in the caller's transaction)."""
    await advance(conn, f, new)
    committed = sorted(await conn.fetch(Q["reservations_set_state"], f["id"], "committed"), key=lambda r: r["sku"])
    for r in committed:  # SKU order: concurrent hand-overs lock stock rows in the same order
        await conn.execute(Q["stock_add"], node_id, r["sku"], -r["quantity"])
    lines = [StoreLine(r["sku"], r["quantity"]) for r in committed]
    await follow(conn, order_id, cause, {
        "node_id": node_id, "fulfillment_id": f["id"], "fulfillment_status": str(new),
        "committed": [msgspec.to_builtins(l) for l in lines],
    })
    return lines


async def _commit_in_redis(svc: Services, node_id: str, fulfillment_id: str) -> None:
    try:
        await svc.inventory.commit(node_id, fulfillment_id)
    except aioredis.RedisError:  # on-hand and reserved both stay high: availability is unchanged
        log.exception("could not commit %s at %s in Redis; rebuild-inventory will", fulfillment_id, node_id)


async def _confirm_later(conn: asyncpg.Connection, order: asyncpg.Record, f: asyncpg.Record, node_id: str,
                         carrier: str | None = None, tracking_no: str | None = None) -> None:
    """The platform's confirmation of a serving part, queued in the hand-over's transaction
    (a transfer between our own nodes is nobody else's business)."""
    if f["role"] == "serve":
        await outbox.handover(conn, shop_id=order["shop_id"], order_id=order["id"], fulfillment_id=f["id"],
                              node_id=node_id, mode=order["delivery_mode"], carrier=carrier, tracking_no=tracking_no)


async def mark_shipped(svc: Services, node_id: str, order_id: str, carrier: str | None = None,
                       tracking_no: str | None = None) -> StoreOrder:
    """Handed to the courier; a parcel names its carrier and tracking number (a one-hour order
    may leave with the store's own rider without them)."""
    async with svc.pool.acquire() as conn:
        async with conn.transaction():
            order, f = await locate(conn, order_id, node_id)
            refuse_if_cancelled(order, f, "shipped")
            if order["delivery_mode"] == "pickup" and f["role"] == "serve":
                raise IllegalTransition(
                    f"a pickup order is handed over with its pickup code: POST /stores/{node_id}/pickups/{{code}}",
                    current=f["status"], requested="shipped",
                )
            if order["delivery_mode"] == "ship" and f["role"] == "serve" and not (carrier and tracking_no):
                raise InvalidInput("carrier and tracking_no: a parcel is handed over with both",
                                   field="tracking_no" if carrier else "carrier")
            check_fulfillment_transition(f["status"], F.SHIPPED)
            await _hand_over(conn, order_id, node_id, f, F.SHIPPED, "store:shipped")
            await _confirm_later(conn, order, f, node_id, carrier, tracking_no)
        await _commit_in_redis(svc, node_id, f["id"])
        return await store_view(conn, order_id, f["id"])


def wrong_code_key(node_id: str) -> str:
    return f"pickup:wrong:{{{node_id}}}"


async def collect_pickup(svc: Services, node_id: str, code: str) -> StoreOrder:
    """The buyer shows the code: wrong 404 (counted; too many at one store 429), used 409."""
    if not PICKUP_CODE_RE.fullmatch(code):
        raise InvalidInput("code: a pickup code is 6 to 12 digits", field="code")
    key = wrong_code_key(node_id)
    wrong = int(await svc.redis.get(key) or 0)
    if wrong >= WRONG_CODE_LIMIT:
        ttl = max(int(await svc.redis.ttl(key)), 1)
        raise TooManyRequests(f"too many wrong pickup codes at this store; try again in {ttl} s",
                              field="code", retry_after=ttl)
    async with svc.pool.acquire() as conn:
        hit = await conn.fetchrow(Q["store_pickup_by_code"], node_id, code)
        if hit is None:
            async with svc.redis.pipeline(transaction=True) as pipe:
                pipe.set(key, 0, ex=WRONG_CODE_WINDOW_S, nx=True)
                pipe.incr(key)
                await pipe.execute()
            raise NotFound("no pickup with this code at this store", field="code")
        async with conn.transaction():
            order = await conn.fetchrow(Q["order_by_id_for_update"], hit["order_id"])
            f = await conn.fetchrow(Q["store_fulfillment_by_id_for_update"], hit["id"])
            if f["status"] == F.COLLECTED:
                raise Conflict(f"this code was already used: order '{order['id']}' was collected at "
                               f"{f['handed_over_at'].isoformat()}", field="code", current="collected")
            refuse_if_cancelled(order, f, "collected")
            check_fulfillment_transition(f["status"], F.COLLECTED)
            await _hand_over(conn, order["id"], node_id, f, F.COLLECTED, "store:collected")
            await _confirm_later(conn, order, f, node_id)
        await _commit_in_redis(svc, node_id, f["id"])
        return await store_view(conn, order["id"], f["id"])
