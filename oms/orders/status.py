"""The one writer of an order's status: the transition table is checked and the history recorded."""

from __future__ import annotations

import asyncpg

from oms.infra.db import Q
from oms.orders.model import OrderStatus, check_transition


async def set_status(conn: asyncpg.Connection, order_id: str, current: str, new: OrderStatus, cause: str,
                     *, reason: str | None = None, detail: dict | None = None) -> None:
    """The one writer of orders.status: checks the transition table and records the history."""
    check_transition(current, new)
    await conn.execute(Q["order_set_status"], order_id, str(new), reason)
    await conn.execute(Q["history_insert"], order_id, current, str(new), cause, detail)
