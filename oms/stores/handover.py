"""Hand-over: shipped to the courier or collected with the pickup code (the reservation is
committed), then delivered and completed.

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
    OrderStatus,
    check_fulfillment_transition,
)
from oms.orders.status import set_status
from oms.stores.model import (
    ALREADY_DONE,
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
async def commit_hand_over(conn: asyncpg.Connection, order: asyncpg.Record, node_id: str, f: asyncpg.Record,
                           new: FulfillmentStatus, cause: str, carrier: str | None = None,
                           tracking_no: str | None = None) -> list[StoreLine]:
    """THE place a hand-over commits (shipped to the courier, collected by the buyer, or a
    transfer leaving its node): fulfilment advanced, its reservation committed, on-hand down, the
    order moved on, the platform's confirmation queued — all in the caller's transaction."""
    order_id = order["id"]
    await advance(conn, f, new)
    committed = sorted(await conn.fetch(Q["reservations_set_state"], f["id"], "committed"), key=lambda r: r["sku"])
    for r in committed:  # SKU order: concurrent hand-overs lock stock rows in the same order
        await conn.execute(Q["stock_add"], node_id, r["sku"], -r["quantity"])
    lines = [StoreLine(r["sku"], r["quantity"]) for r in committed]
    await follow(conn, order_id, cause, {
        "node_id": node_id, "fulfillment_id": f["id"], "fulfillment_status": str(new),
        "committed": [msgspec.to_builtins(l) for l in lines],
    })
    await _confirm_later(conn, order, f, node_id, carrier, tracking_no)
    return lines


async def _confirm_later(conn: asyncpg.Connection, order: asyncpg.Record, f: asyncpg.Record, node_id: str,
                         carrier: str | None = None, tracking_no: str | None = None) -> None:
    """The platform's confirmation of a serving part, queued in the hand-over's transaction
    (a transfer between our own nodes is nobody else's business)."""
    if f["role"] == "serve":
        await outbox.handover(conn, shop_id=order["shop_id"], order_id=order["id"], fulfillment_id=f["id"],
                              node_id=node_id, mode=order["delivery_mode"], carrier=carrier, tracking_no=tracking_no)


async def _commit_in_redis(svc: Services, node_id: str, fulfillment_id: str) -> None:
    try:
        await svc.inventory.commit(node_id, fulfillment_id)
    except aioredis.RedisError:  # on-hand and reserved both stay high: availability is unchanged
        log.exception("could not commit %s at %s in Redis; rebuild-inventory will", fulfillment_id, node_id)


def _refuse_pickup_shipping(order: asyncpg.Record, f: asyncpg.Record, node_id: str) -> None:
    if order["delivery_mode"] == "pickup" and f["role"] == "serve":
        raise IllegalTransition(
            f"a pickup order is handed over with its pickup code: POST /stores/{node_id}/pickups/{{code}}",
            current=f["status"], requested="shipped",
        )


async def mark_shipped(svc: Services, node_id: str, order_id: str, carrier: str | None = None,
                       tracking_no: str | None = None, *, pick_first: bool = False) -> StoreOrder:
    """The courier (or, for a transfer, the van) took it; a parcel names its carrier and tracking
    number (a one-hour order may leave with the store's own rider without them). Picked first:
    `shipped` straight from `allocated` is refused unless `pick_first` (the `handover` call: both
    steps, recorded as both). A retry answers the same 200."""
    async with svc.pool.acquire() as conn:
        async with conn.transaction():
            order, f = await locate(conn, order_id, node_id)
            if f["status"] in ALREADY_DONE["shipped"]:
                return await store_view(conn, order_id, f["id"])  # a retry: already handed over
            refuse_if_cancelled(order, f, "shipped")
            _refuse_pickup_shipping(order, f, node_id)
            if order["delivery_mode"] == "ship" and f["role"] == "serve" and not (carrier and tracking_no):
                raise InvalidInput("carrier and tracking_no: a parcel is handed over with both",
                                   field="tracking_no" if carrier else "carrier")
            if f["status"] == F.ALLOCATED:
                if not pick_first:
                    raise IllegalTransition(
                        f"pick it first (POST /stores/{node_id}/orders/{order_id}/picked), or pick and hand "
                        f"over in one step: POST /stores/{node_id}/orders/{order_id}/handover",
                        current=f["status"], requested="shipped")
                await advance(conn, f, F.PICKED)
                await follow(conn, order_id, "store:picked", {
                    "node_id": node_id, "fulfillment_id": f["id"], "fulfillment_status": str(F.PICKED),
                    "via": "handover"})
                f = await conn.fetchrow(Q["store_fulfillment_by_id_for_update"], f["id"])
            check_fulfillment_transition(f["status"], F.SHIPPED)
            await commit_hand_over(conn, order, node_id, f, F.SHIPPED, "store:shipped", carrier, tracking_no)
        await _commit_in_redis(svc, node_id, f["id"])
        return await store_view(conn, order_id, f["id"])


# ---- after hand-over: delivered, completed -------------------------------------------------
async def mark_delivered(svc: Services, order_id: str, *, node_id: str | None = None,
                         fulfillment_id: str | None = None, cause: str) -> StoreOrder | None:
    """A shipped part reached the buyer: confirmed by the store (`node_id`: its own part) or by
    the courier (one part by id, or every shipped part). The order is delivered once every part
    is. Idempotent; nothing shipped yet: 409."""
    async with svc.pool.acquire() as conn:
        async with conn.transaction():
            if node_id is not None:
                order, f = await locate(conn, order_id, node_id)
                parts = [f]
            else:
                order = await conn.fetchrow(Q["order_by_id_for_update"], order_id)
                if order is None:
                    raise NotFound(f"no order with id '{order_id}'", field="id")
                parts = [x for x in await conn.fetch(Q["fulfillments_by_order"], order_id) if x["role"] != "transfer"]
                if fulfillment_id is not None:
                    parts = [x for x in parts if x["id"] == fulfillment_id]
                    if not parts:
                        raise NotFound(f"order '{order_id}' has no fulfilment '{fulfillment_id}'",
                                       field="fulfillment_id")
            if parts and all(x["status"] in ALREADY_DONE["delivered"] for x in parts):
                return await store_view(conn, order_id, parts[0]["id"]) if node_id else None
            shipped = [x for x in parts if x["status"] == F.SHIPPED and x["role"] != "transfer"]
            if not shipped:
                now = parts[0]["status"] if parts else order["status"]
                raise IllegalTransition(f"nothing of order '{order_id}' is shipped to the buyer yet; "
                                        "it is delivered after it was shipped", current=str(now),
                                        requested="delivered")
            for x in shipped:
                await advance(conn, x, F.DELIVERED)
                await follow(conn, order_id, cause, {"fulfillment_id": x["id"], "node_id": x["node_id"],
                                                     "fulfillment_status": str(F.DELIVERED)})
        return await store_view(conn, order_id, parts[0]["id"]) if node_id else None


async def complete_order(svc: Services, order_id: str, *, cause: str) -> None:
    """Close a delivered or collected order; completing twice changes nothing."""
    async with svc.pool.acquire() as conn, conn.transaction():
        order = await conn.fetchrow(Q["order_by_id_for_update"], order_id)
        if order is None:
            raise NotFound(f"no order with id '{order_id}'", field="id")
        if order["status"] != OrderStatus.COMPLETED:
            await set_status(conn, order_id, order["status"], OrderStatus.COMPLETED, cause)


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
            await commit_hand_over(conn, order, node_id, f, F.COLLECTED, "store:collected")
        await _commit_in_redis(svc, node_id, f["id"])
        return await store_view(conn, order["id"], f["id"])
