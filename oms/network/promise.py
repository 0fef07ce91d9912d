"""The one promise clock: minutes left before a one-hour promise, and when an order is at risk."""

from __future__ import annotations

from datetime import datetime, timezone

from oms.orders.model import OrderStatus


def minutes_left(promised_by: datetime | None, status: str, now: datetime | None = None) -> float | None:
    """Minutes until the promise, while the order is still in our hands."""
    if promised_by is None or status in ("shipped", "collected", "delivered", "cancelled"):
        return None
    now = now or datetime.now(timezone.utc)
    return round((promised_by - now).total_seconds() / 60, 1)


#: nominal minutes to pick one order when the store's queue is unknown (the pick list knows better)
PICK_MINUTES = 10


def at_risk(left: float | None, status: str, mode: str, courier_minutes: int) -> bool:
    """True when a delivery cannot make its promise unless it moves now."""
    if left is None or mode != "delivery":
        return False
    if status == OrderStatus.PICKED:
        return left < courier_minutes
    return status in (OrderStatus.ALLOCATED, OrderStatus.PICKING) and left < courier_minutes + PICK_MINUTES
