"""Finding and advancing one store's part of an order (its fulfilment), under the order's row lock.

Every store change runs in one PostgreSQL transaction that starts by locking the order row, so
two staff confirming the same order at once are serialized: the first wins and the second sees the
new status, which the transition table refuses (409)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg

from oms.errors import Conflict, IllegalTransition, NotFound
from oms.infra.db import Q
from oms.network.promise import PromiseClock
from oms.orders.model import (
    GONE_FULFILLMENT,
    FulfillmentStatus,
    OrderStatus,
    check_fulfillment_transition,
)
from oms.stores.model import (
    StoreLine,
    StoreOrder,
)

if TYPE_CHECKING:
    pass


F = FulfillmentStatus
S = OrderStatus


# ---- finding a store's part of an order ---------------------------------------------------
async def locate(conn: asyncpg.Connection, order_id: str, node_id: str, *, pickup_store: bool = False
                  ) -> tuple[asyncpg.Record, asyncpg.Record | None]:
    """Lock the order and this node's fulfilment of it (an open one first). Another store's
    order reads exactly like an unknown one: a store learns nothing about others' work.
    With `pickup_store`, the store a pickup order names may have no fulfilment yet (all its
    goods come by transfer): then the fulfilment is None."""
    order = await conn.fetchrow(Q["order_by_id_for_update"], order_id)
    fs = await conn.fetch(Q["store_fulfillments_at_node_for_update"], order_id, node_id) if order else []
    if fs:
        return order, fs[0]
    if pickup_store and order and order["delivery_mode"] == "pickup" and order["pickup_node_id"] == node_id:
        return order, None
    raise NotFound(f"store '{node_id}' has no order '{order_id}'", field="order_id")


def refuse_if_cancelled(order: asyncpg.Record, f: asyncpg.Record | None, requested: str) -> None:
    if order["status"] == S.CANCELLED or (f is not None and f["status"] == F.CANCELLED):
        why = order["reason"] or "no reason given"
        raise IllegalTransition(
            f"order '{order['id']}' was cancelled ({why}); it cannot become '{requested}' — put the goods back",
            current="cancelled", requested=requested,
        )


async def advance(conn: asyncpg.Connection, f: asyncpg.Record, new: FulfillmentStatus,
                   *, code: str | None = None, reason: str | None = None) -> None:
    check_fulfillment_transition(f["status"], new)
    changed = await conn.fetchval(Q["store_fulfillment_advance"], f["id"], f["status"], str(new), code, reason)
    if changed is None:  # the row lock makes this unreachable; kept as the last line of defence
        raise Conflict("this fulfilment changed at the same moment; reload and retry", current=f["status"])


async def store_view(conn: asyncpg.Connection, order_id: str, fulfillment_id: str, **extra) -> StoreOrder:
    order = await conn.fetchrow(Q["order_by_id"], order_id)
    f = await conn.fetchrow(Q["store_fulfillment_by_id"], fulfillment_id)
    lines = [StoreLine(r["sku"], r["quantity"]) for r in await conn.fetch(Q["store_fulfillment_lines"], fulfillment_id)]
    if order["delivery_mode"] == "pickup" and f["role"] != "transfer" and "transferred_in" not in extra:
        moved = {x["id"] for x in await conn.fetch(Q["fulfillments_by_order"], order_id)
                 if x["role"] == "transfer" and x["status"] not in GONE_FULFILLMENT}
        extra["transferred_in"] = sorted(
            (StoreLine(r["sku"], r["quantity"]) for r in await conn.fetch(Q["reservations_by_order"], order_id)
             if r["fulfillment_id"] in moved and r["state"] != "released"), key=lambda l: l.sku)
    return StoreOrder(
        order_id=order_id, order_status=order["status"], fulfillment_id=fulfillment_id, node_id=f["node_id"],
        status=f["status"], delivery_mode=order["delivery_mode"], lines=lines,
        promised_by=order["promised_by"], minutes_left=PromiseClock.minutes_left(order["promised_by"], order["status"]),
        pickup_code_issued=f["pickup_code"] is not None, reason=f["reason"], **extra,
    )
