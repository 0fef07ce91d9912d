"""Uncollected pickups are cancelled after OMS_PICKUP_EXPIRY_HOURS and their stock returned."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING


from oms.errors import IllegalTransition
from oms.infra.db import Q
from oms.orders.cancel import cancel_order
from oms.stores.model import (
    EXPIRY_CHECK_EVERY_S,
    utcnow,
)

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
    for r in rows:
        try:
            await cancel_order(svc.pool, svc.inventory, r["order_id"], "store:pickup-expired",
                               reason=f"not collected within {hours} hours")
        except IllegalTransition:  # collected in the meantime
            continue
        cancelled.append(r["order_id"])
    if cancelled:
        log.info("expired %d uncollected pickup(s)%s", len(cancelled), f" at {node_id}" if node_id else "")
    return cancelled


async def expire_pickups_now_and_then(svc: Services, node_id: str) -> None:
    """Run the expiry for one store at most once a minute (called from its pick-list polls)."""
    try:
        if await svc.redis.set(f"pickup:expiry-check:{{{node_id}}}", 1, nx=True, ex=EXPIRY_CHECK_EVERY_S):
            await expire_uncollected_pickups(svc, node_id=node_id)
    except Exception:  # noqa: BLE001 - the pick list must answer regardless
        log.exception("pickup expiry at %s failed; the next poll retries", node_id)
