"""The pick list: a store's open work by promise, by SKU, waiting for hand-over, and incoming transfers."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import asyncpg

from oms.infra.db import Q
from oms.network.promise import PromiseClock
from oms.orders.model import (
    FulfillmentStatus,
)
from oms.stores.model import (
    IncomingTransfer,
    Intercepted,
    PickEntry,
    PickList,
    SkuWork,
    StoreLine,
    utcnow,
)

if TYPE_CHECKING:
    from oms.wiring import Services


F = FulfillmentStatus


# ---- the pick list ---------------------------------------------------------------------------
async def read_pick_list(svc: Services, node_id: str, now: datetime,
                         unchanged: Callable[[str], bool]) -> tuple[str, PickList | None]:
    """The list's ETag, and the list unless `unchanged(etag)` (the store app has it already).

    Both from one connection of the read replica when there is one: a store sees its work a
    moment late at worst (it acts on the primary, under the order's row lock, in any case)."""
    async def read(db: asyncpg.Connection) -> tuple[str, PickList | None]:
        etag = await pick_list_etag(svc, node_id, now, db=db)
        return etag, None if unchanged(etag) else await pick_list(svc, node_id, now, db=db)

    return await svc.reads.run(read)


async def pick_list_etag(svc: Services, node_id: str, now: datetime | None = None, *,
                         db: asyncpg.Pool | asyncpg.Connection | None = None) -> str:
    """Changes when the store's open work changes, and each minute (minutes left move on)."""
    now = now or utcnow()
    db = db or svc.pool
    r = await db.fetchrow(Q["store_picklist_fingerprint"], node_id)
    stopped = len(await db.fetch(Q["store_intercepted"], node_id))  # a refused hand-over changes it too
    raw = "|".join(str(x) for x in (r["n"], r["digest"], r["incoming"], r["node_version"], stopped,
                                    int(now.timestamp() // 60),
                                    PromiseClock.from_settings(svc.settings), svc.settings.pickup_expiry_hours))
    return f'W/"{hashlib.sha256(raw.encode()).hexdigest()[:24]}"'


async def pick_list(svc: Services, node_id: str, now: datetime | None = None, *,
                    db: asyncpg.Pool | asyncpg.Connection | None = None) -> PickList:
    now = now or utcnow()
    db = db or svc.pool
    node = await db.fetchrow(Q["node_get"], node_id)
    capacity = node["capacity_per_hour"] if node else 0
    clock = PromiseClock.from_settings(svc.settings)
    expiry = timedelta(hours=svc.settings.pickup_expiry_hours)
    items: list[PickEntry] = []
    handover: list[PickEntry] = []
    by_sku: dict[str, SkuWork] = {}
    for r in await db.fetch(Q["store_picklist"], node_id):
        left = clock.minutes_left(r["promised_by"], "allocated", now)
        # the list's order is the picking queue: `len(items)` allocated ones are ahead of this one
        est = clock.estimate(left, r["status"], len(items), capacity)
        lines = [StoreLine(l["sku"], l["quantity"], l.get("name")) for l in r["lines"]]
        entry = dict(
            fulfillment_id=r["id"], order_id=r["order_id"], channel=r["channel"], external_id=r["external_id"],
            delivery_mode=r["delivery_mode"], status=r["status"], lines=lines, allocated_at=r["created_at"],
            paid_at=r["paid_at"], promised_by=r["promised_by"], minutes_left=left, picked_at=r["picked_at"],
            role=r["role"], transfer_to=r["pickup_node_id"] if r["role"] == "transfer" else None,
            transferred_in=[StoreLine(l["sku"], l["quantity"], l.get("name")) for l in r["transferred"]],
        )
        if r["status"] == F.ALLOCATED:
            items.append(PickEntry(**entry, pick_minutes=est.pick_minutes, at_risk=est.at_risk))
            for l in lines:
                w = by_sku.setdefault(l.sku, SkuWork(sku=l.sku, quantity=0, orders=[], name=l.name))
                w.quantity += l.quantity
                w.orders.append(r["order_id"])
        else:
            handover.append(PickEntry(
                **entry, pick_minutes=est.pick_minutes, at_risk=est.at_risk,
                expires_at=r["picked_at"] + expiry if r["status"] == F.READY_FOR_PICKUP and r["picked_at"] else None,
            ))
    incoming = [
        IncomingTransfer(fulfillment_id=r["id"], order_id=r["order_id"], channel=r["channel"],
                         external_id=r["external_id"], from_node_id=r["from_node_id"], status=r["status"],
                         lines=[StoreLine(l["sku"], l["quantity"]) for l in r["lines"]], shipped_at=r["handed_over_at"],
                         order_status=r["order_status"])
        for r in await db.fetch(Q["store_incoming_transfers"], node_id)
    ]
    intercepted = [
        Intercepted(order_id=r["order_id"], fulfillment_id=r["fulfillment_id"], channel=r["channel"],
                    external_id=r["external_id"], reason=r["reason"] or r["last_error"], refused_at=r["done_at"])
        for r in await db.fetch(Q["store_intercepted"], node_id)
    ]
    return PickList(node_id=node_id, as_of=now, items=items, by_sku=[by_sku[s] for s in sorted(by_sku)],
                    awaiting_handover=handover, incoming=incoming, at_risk=sum(e.at_risk for e in items + handover),
                    intercepted=intercepted)
