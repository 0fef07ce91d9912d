"""The order follows its fulfilments and lines: the status they imply, reached through the table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import asyncpg

from oms.infra.db import Q
from oms.orders.decide import order_status_from, order_status_with_lines, status_path  # noqa: F401
from oms.orders.lines import LineState, held_units, line_states, waiting_reason
from oms.orders.model import TERMINAL, WAITING, FulfillmentStatus, OrderStatus
from oms.orders.status import set_status

F = FulfillmentStatus
S = OrderStatus


# ---- the order follows its fulfilments and lines (the rules: oms/orders/decide.py) ----------------
async def settle_lines(conn: asyncpg.Connection, order_id: str, why: Mapping[str, str] | None = None,
                       ) -> list[LineState]:
    """Set each line's status from what the order holds now; a line starting to wait takes
    routing's reason for its SKU (`why`), a line served again loses its reason."""
    lines = await conn.fetch(Q["order_lines_by_order"], order_id)
    states = line_states(lines, held_units(await conn.fetch(Q["reservations_by_order"], order_id)))
    for l, st in zip(lines, states):
        reason = l["reason"]
        if st.status == "open":
            reason = None
        elif st.status == "backordered" and why and st.sku in why:
            reason = waiting_reason(why[st.sku], st)
        if (st.status, reason) != (l["status"], l["reason"]):
            await conn.execute(Q["order_line_set_status"], order_id, l["line_no"], st.status, reason)
    return states


def _waiting_summary(lines: Sequence[asyncpg.Record]) -> str:
    return "; ".join(sorted({l["reason"] for l in lines if l["status"] == "backordered" and l["reason"]}))


async def follow(conn: asyncpg.Connection, order_id: str, cause: str, detail: dict,
                 *, backorder_reason: str | None = None, why: Mapping[str, str] | None = None) -> OrderStatus:
    """Move the order (row locked by the caller) to what its fulfilments and lines imply; always
    records the step. `why`: routing's reason per SKU for units that start waiting now."""
    if backorder_reason and why is None:
        why = _AnySku(backorder_reason)
    row = await conn.fetchrow(Q["order_by_id"], order_id)
    current = S(row["status"])
    if current in TERMINAL:
        await conn.execute(Q["history_insert"], order_id, str(current), str(current), cause, detail)
        return current
    states = await settle_lines(conn, order_id, why)
    fs = await conn.fetch(Q["fulfillments_by_order"], order_id)
    target = order_status_with_lines(row["delivery_mode"], [(f["status"], f["role"]) for f in fs], states)
    reason = None
    if target in WAITING:
        summary = _waiting_summary(await conn.fetch(Q["order_lines_by_order"], order_id)) or backorder_reason
        reason = summary if target is S.BACKORDERED else f"partly backordered: {summary}"
    if target is current:
        if reason and reason != row["reason"]:
            await conn.execute(Q["store_order_set_reason"], order_id, reason)
        await conn.execute(Q["history_insert"], order_id, str(current), str(current), cause, detail)
        return current
    prev = current
    for step in status_path(current, target):
        await set_status(conn, order_id, str(prev), step, cause,
                         reason=reason if step is target else None, detail=detail)
        prev = step
    if current in WAITING and target not in WAITING and target is not S.CANCELLED:
        await conn.execute(Q["order_clear_reason"], order_id)  # nothing waits any more
    return target


class _AnySku(dict):
    """The same reason for every SKU."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> str:
        return self.reason
