"""Uncollected pickups are cancelled after OMS_PICKUP_EXPIRY_HOURS and their stock returned (run by
the timer job, oms/orders/timers.py, not by anyone polling)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING


from oms.errors import IllegalTransition
from oms.infra.db import Q
from oms.orders.cancel import cancel_order
from oms.stores.model import utcnow

if TYPE_CHECKING:
    from oms.wiring import Services

log = logging.getLogger("oms.stores")


# ---- uncollected pickups -------------------------------------------------------------------
async def expire_uncollected_pickups(svc: Services, *, now: datetime | None = None, node_id: str | None = None,
                                     limit: int = 200) -> list[str]:
    """Cancel pickup orders ready for longer than Settings.pickup_expiry_hours, returning their
    stock; returns the cancelled order ids. Safe to run anywhere, any number of times at once."""
    now = now or utcnow()
    hours = svc.settings.pickup_expiry_hours
    rows = await svc.pool.fetch(Q["store_pickups_expired"], now - timedelta(hours=hours), node_id, limit)
    cancelled = []
    why = f"not collected within {hours} hours"
    for r in rows:
        try:
            await cancel_order(svc.pool, svc.inventory, r["order_id"], "store:pickup-expired", reason=why)
        except IllegalTransition as exc:
            if not exc.extra.get("handed_over"):
                continue  # collected in the meantime
            try:  # part of it was collected: the uncollected parts go, their stock comes back
                await cancel_order(svc.pool, svc.inventory, r["order_id"], "store:pickup-expired", reason=why,
                                   fulfillments=list(r["ids"]))
            except IllegalTransition:
                continue
        cancelled.append(r["order_id"])
    if cancelled:
        log.info("expired %d uncollected pickup(s)%s", len(cancelled), f" at {node_id}" if node_id else "")
    return cancelled
