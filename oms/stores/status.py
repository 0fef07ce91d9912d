"""The order follows its fulfilments: the order status their statuses imply, reached through the table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import asyncpg

from oms.infra.db import Q
from oms.orders.model import (
    ORDER_TRANSITIONS,
    FulfillmentStatus,
    OrderStatus,
    check_transition,
)
from oms.orders.status import set_status

if TYPE_CHECKING:
    pass


F = FulfillmentStatus
S = OrderStatus


# ---- the order follows its fulfilments ----------------------------------------------------
def order_status_from(mode: str, fulfillments: Sequence[tuple[str, str]]) -> OrderStatus:
    """The order status its fulfilments' (status, role) imply; rejected and cancelled ones no longer count.

    A pickup order is ready once the pickup store's part is ready and every transfer to it has
    arrived (shipped from its source), and collected once the buyer took it there."""
    act = [(F(s), r) for s, r in fulfillments if s not in (F.REJECTED, F.CANCELLED)]
    if not act:
        return S.BACKORDERED
    if mode == "pickup":
        serve = [s for s, r in act if r != "transfer"]
        arrived = all(s is F.SHIPPED for s, r in act if r == "transfer")
        if serve and arrived and all(s is F.COLLECTED for s in serve):
            return S.COLLECTED
        if serve and arrived and all(s in (F.READY_FOR_PICKUP, F.COLLECTED) for s in serve):
            return S.READY_FOR_PICKUP
        return S.ALLOCATED if all(s is F.ALLOCATED for s, _ in act) else S.PICKING
    active = [s for s, _ in act]
    done = {F.SHIPPED, F.COLLECTED}
    if all(s in done for s in active):
        return S.COLLECTED if F.COLLECTED in active else S.SHIPPED
    if all(s in done | {F.PICKED, F.READY_FOR_PICKUP} for s in active):
        return S.READY_FOR_PICKUP if mode == "pickup" else S.PICKED
    if any(s is not F.ALLOCATED for s in active):
        return S.PICKING
    return S.ALLOCATED


_VIA = (S.PICKED, S.READY_FOR_PICKUP, S.PICKING, S.ALLOCATED)


def status_path(current: str, target: str) -> list[OrderStatus]:
    """Steps from current to target allowed by the transition table (at most one in between,
    e.g. picking -> picked -> shipped when the last fulfilment ships without a separate pick)."""
    cur, tgt = S(current), S(target)
    if tgt in ORDER_TRANSITIONS[cur]:
        return [tgt]
    for via in _VIA:
        if via in ORDER_TRANSITIONS[cur] and tgt in ORDER_TRANSITIONS[via]:
            return [via, tgt]
    check_transition(cur, tgt)  # raises IllegalTransition naming the current status
    return [tgt]


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
