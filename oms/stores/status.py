"""The order follows its fulfilments: the order status their statuses imply, reached through the table."""

from __future__ import annotations

import asyncpg

from oms.infra.db import Q
from oms.orders.decide import order_status_from, status_path
from oms.orders.model import FulfillmentStatus, OrderStatus
from oms.orders.status import set_status


F = FulfillmentStatus
S = OrderStatus


# ---- the order follows its fulfilments (the rule: oms/orders/decide.py) ---------------------------
async def follow(conn: asyncpg.Connection, order_id: str, cause: str, detail: dict,
                  *, backorder_reason: str | None = None) -> OrderStatus:
    """Move the order (row locked by the caller) to what its fulfilments imply; always records the step."""
    row = await conn.fetchrow(Q["order_by_id"], order_id)
    fs = await conn.fetch(Q["fulfillments_by_order"], order_id)
    current = S(row["status"])
    target = order_status_from(row["delivery_mode"], [(f["status"], f["role"]) for f in fs])
    reason = None
    if backorder_reason:
        reason = backorder_reason if target is S.BACKORDERED else f"partly backordered: {backorder_reason}"
    if target is current:
        if reason:
            await conn.execute(Q["store_order_set_reason"], order_id, reason)
        await conn.execute(Q["history_insert"], order_id, str(current), str(current), cause, detail)
        return current
    prev = current
    for step in status_path(current, target):
        await set_status(conn, order_id, str(prev), step, cause,
                         reason=reason if step is target else None, detail=detail)
        prev = step
    return target
