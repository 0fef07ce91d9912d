"""The one promise clock: promised-by, minutes left, picking time, courier time, at risk, late.

Every surface that shows a promise asks this module: routing's request (`for_routing`), the
order view (GET /orders/{id} and the 201 answer), a store's pick list and /ops/summary. They
differ only in what they know about a fulfilment's place in its node's picking queue, never in
the rule:

    picking time  a node picks `capacity_per_hour` orders an hour, so the fulfilment with
                  `ahead` others before it in the pick list is picked (ahead + 1) x 60 / capacity
                  minutes from now (Settings.pick_minutes per order where no capacity is set)
    courier time  Settings.courier_minutes from the store to the door
    at risk       an allocated fulfilment whose minutes left < picking time + courier time, or a
                  picked one waiting for the courier whose minutes left < courier time
    late          minutes left < 0

The pick list's order is the queue: promised-by, then paid-at (orders without either last), then
allocation time (sql/queries/stores.sql store_picklist; the same key counts `ahead` in SQL).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

import msgspec

from oms.orders.model import DeliveryMode, FulfillmentStatus

#: order statuses in which the goods have left our hands: no clock runs for them any more
_CLOCK_STOPPED = frozenset({"shipped", "collected", "delivered", "cancelled"})


class Estimate(msgspec.Struct, frozen=True):
    """One open fulfilment against its promise."""

    minutes_left: float | None
    pick_minutes: float
    at_risk: bool
    late: bool


class PromiseClock(msgspec.Struct, frozen=True, kw_only=True):
    #: one-hour delivery promise, from paid-at
    promise_minutes: int = 60
    #: from the store to the door
    courier_minutes: float = 25
    #: picking one order at a node that states no capacity_per_hour
    pick_minutes: float = 5.0

    @classmethod
    def from_settings(cls, settings) -> PromiseClock:  # noqa: ANN001 - oms.config.Settings
        return cls(promise_minutes=settings.delivery_promise_minutes, courier_minutes=settings.courier_minutes,
                   pick_minutes=settings.pick_minutes)

    # ---- the promise -------------------------------------------------------------------------
    def promised_by(self, given: datetime | None, paid_at: datetime | None, mode: str) -> datetime | None:
        """The channel's own promise when it sent one; else a paid delivery's one hour from paid-at."""
        if given is not None:
            return given
        if paid_at is None or mode != DeliveryMode.DELIVERY:
            return None
        return paid_at + timedelta(minutes=self.promise_minutes)

    @staticmethod
    def minutes_left(promised_by: datetime | None, status: str = "allocated",
                     now: datetime | None = None) -> float | None:
        """Minutes until the promise (one decimal), while the order is still in our hands."""
        if promised_by is None or status in _CLOCK_STOPPED:
            return None
        now = now or datetime.now(timezone.utc)
        return round((promised_by - now).total_seconds() / 60, 1)

    @staticmethod
    def for_routing(promised_by: datetime | None, now: datetime | None = None) -> float | None:
        """Routing's `minutes_left`: a promise already missed no longer narrows the choice of node
        (serve it as soon as possible and let the views flag it, rather than backorder a paid order
        that stock can serve)."""
        if promised_by is None:
            return None
        left = (promised_by - (now or datetime.now(timezone.utc))).total_seconds() / 60
        return left if left > 0 else None

    # ---- picking and the courier -------------------------------------------------------------
    def picking_minutes(self, ahead: int, capacity_per_hour: int) -> float:
        """Minutes until a fulfilment with `ahead` others before it in its node's queue is picked."""
        per_order = 60.0 / capacity_per_hour if capacity_per_hour > 0 else self.pick_minutes
        return round((ahead + 1) * per_order, 1)

    def estimate(self, minutes_left: float | None, status: str, ahead: int = 0,
                 capacity_per_hour: int = 0) -> Estimate:
        """Where one open fulfilment stands: picking still to do, and whether it is at risk or late."""
        if status == FulfillmentStatus.ALLOCATED:
            pick = self.picking_minutes(ahead, capacity_per_hour)
        else:
            pick = 0.0
        clock_runs = minutes_left is not None and status in (FulfillmentStatus.ALLOCATED, FulfillmentStatus.PICKED)
        return Estimate(
            minutes_left=minutes_left,
            pick_minutes=pick,
            at_risk=clock_runs and minutes_left < pick + self.courier_minutes,
            late=clock_runs and minutes_left < 0,
        )

    @staticmethod
    def any_at_risk(estimates: Iterable[Estimate]) -> bool:
        """An order is at risk when one of its open fulfilments is."""
        return any(e.at_risk for e in estimates)

    @staticmethod
    def any_late(estimates: Iterable[Estimate]) -> bool:
        """An order is late when one of its open fulfilments is."""
        return any(e.late for e in estimates)
