"""The one scheduled job: what must happen at a time, whoever polls or not.

    pickup expiry      ready pickups not collected within OMS_PICKUP_EXPIRY_HOURS are cancelled
    unpaid holds       `created` orders not paid by their platform's expiry (else created_at +
                       OMS_UNPAID_EXPIRY_MINUTES) are cancelled and the units they held (a
                       platform that deducts at order time) released; the platform closes them
                       itself, so nothing is sent to it
    at-risk escalation one-hour orders about to miss (or past) their promise are escalated once:
                       history, log and the ops view say so
    rollup fold        the ops rollups' appended rows are added into their totals (on the
                       primary), so what /ops/summary sums stays short on a day nobody opens it
    month partitions   hourly, the next months of orders and order_history made (as at start-up),
                       so a service running for months never fills the default partition

Every step is idempotent and safe beside another run, but one process at a time runs them: the
job holds the lease `timers` (oms/infra/lease.py) so any number of `oms serve` workers and hosts
can start it. The app's lifespan starts it (OMS_TIMERS=0 turns it off); `oms timers run-once` runs
one round by hand.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import msgspec

from oms.infra.db import Q
from oms.infra.lease import Lease, run_exclusively
from oms.orders.cancel import cancel_order
from oms.orders.model import OrderStatus
from oms.ops.summary import fold_rollups
from oms.stores.expiry import expire_uncollected_pickups
from oms.stores.model import utcnow

if TYPE_CHECKING:
    from oms.wiring import Services

log = logging.getLogger("oms.timers")

PARTITIONS_EVERY_S = 3600.0

class TimerRound(msgspec.Struct, kw_only=True):
    """What one round did: order ids per timer."""

    pickups_expired: list[str] = []
    unpaid_expired: list[str] = []
    escalated: list[str] = []


async def run_once(svc: Services, now: datetime | None = None, limit: int = 200) -> TimerRound:
    """One round of every timer (`now` lets tests move the clock)."""
    now = now or utcnow()
    done = TimerRound(
        pickups_expired=await expire_uncollected_pickups(svc, now=now, limit=limit),
        unpaid_expired=await expire_unpaid(svc, now, limit),
        escalated=await escalate_at_risk(svc, now, limit),
    )
    await fold_rollups(svc)
    return done


async def expire_unpaid(svc: Services, now: datetime, limit: int = 200) -> list[str]:
    """Cancel unpaid orders whose hold ran out and release what they held; one paid meanwhile
    (checked under its row lock) is left alone."""
    out = []
    for r in await svc.pool.fetch(Q["orders_unpaid_expired"], now, svc.settings.unpaid_expiry_minutes, limit):
        order = await cancel_order(svc.pool, svc.inventory, r["id"], "timer:unpaid-expired",
                                   reason=f"not paid by {r['pay_by'].isoformat(timespec='seconds')}",
                                   only_if=frozenset({OrderStatus.CREATED}))
        if order.status is OrderStatus.CANCELLED:
            out.append(r["id"])
    if out:
        log.info("cancelled %d unpaid order(s) past their hold", len(out))
    return out


#: how far ahead of their promise orders are looked at for escalation (the clock decides which)
ESCALATION_WINDOW_MINUTES = 30


async def escalate_at_risk(svc: Services, now: datetime, limit: int = 200) -> list[str]:
    """Escalate, once each, one-hour orders the promise clock says are at risk (or late)."""
    clock = svc.promise
    due = now + timedelta(minutes=clock.courier_minutes + ESCALATION_WINDOW_MINUTES)
    out = []
    for r in await svc.pool.fetch(Q["orders_promise_due"], due, limit):
        left = clock.minutes_left(r["promised_by"], r["status"], now)
        async with svc.pool.acquire() as conn, conn.transaction():
            queue = await conn.fetch(Q["promise_queue_of_order"], r["id"])
            estimates = [clock.estimate(left, q["status"], q["ahead"], q["capacity_per_hour"]) for q in queue]
            if not clock.any_at_risk(estimates) or await conn.fetchval(Q["order_escalate"], r["id"], now) is None:
                continue  # in time, or another round got there first
            nodes = sorted({q["node_id"] for q in queue})
            await conn.execute(Q["history_insert"], r["id"], r["status"], r["status"], "timer:at-risk", {
                "minutes_left": left, "late": clock.any_late(estimates), "nodes": nodes})
        log.warning("order %s at risk: %.1f min left, open at %s", r["id"], left, ", ".join(nodes))
        out.append(r["id"])
    return out


class TimerJob:
    """Runs `run_once` every `interval_s`, in one process of all hosts at a time (lease `timers`)."""

    def __init__(self, svc: Services, interval_s: float | None = None) -> None:
        self.svc = svc
        self.interval_s = interval_s or svc.settings.timer_interval_s
        self.lease = Lease(svc.redis, "timers", svc.settings.lease_ttl_s)
        self._partitions_at = time.monotonic()  # start-up just made them

    async def ensure_partitions(self) -> None:
        """The next months' partitions, at most hourly (the start-up made them when it ran)."""
        if time.monotonic() - self._partitions_at < PARTITIONS_EVERY_S:
            return
        await self.svc.pool.fetchval(Q["partitions_ensure"])
        self._partitions_at = time.monotonic()

    async def run(self, stop: asyncio.Event) -> None:
        await run_exclusively(self.lease, lambda: self._rounds(stop), stop)

    async def _rounds(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await run_once(self.svc)
                await self.ensure_partitions()
            except Exception:  # noqa: BLE001 - a failed round is retried next round
                log.exception("timer round failed; the next round retries")
            try:
                await asyncio.wait_for(stop.wait(), self.interval_s)
            except TimeoutError:
                pass
