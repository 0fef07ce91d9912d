"""Pure decisions about an order: plain functions over values, no PostgreSQL, no Redis.

intake, allocate, the channel inbox and the stores call these and do the I/O around them;
tests/orders/test_order_decisions.py checks them without servers.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import datetime

from oms.orders.lines import LineState
from oms.orders.model import (
    GONE_FULFILLMENT,
    HANDED_OVER,
    ORDER_TRANSITIONS,
    ChannelStatus,
    FulfillmentStatus,
    OrderStatus,
    check_transition,
    first_seen_status,
)
from oms.orders.rows import Reserved
from routing import Plan

F = FulfillmentStatus
S = OrderStatus

OPEN, BACKORDERED = "open", "backordered"


# ---- a new order ---------------------------------------------------------------------------------
def check_lines(skus: Sequence[str], unknown: set[str] | frozenset[str]) -> tuple[list[str], list[str | None]]:
    """Each line's status and reason before routing: a line whose SKU we do not know is backordered."""
    status = [BACKORDERED if s in unknown else OPEN for s in skus]
    reason = [f"unknown SKU '{s}'" if s in unknown else None for s in skus]
    return status, reason


def lines_after_plan(lines: Sequence, line_status: Sequence[str], line_reason: Sequence[str | None],
                     reserved: Sequence[Reserved], plan: Plan) -> tuple[list[str], list[str | None]]:
    """Which open lines the reservations leave unserved, wholly or in part: backordered with
    routing's reason per SKU (in part: saying how many units wait)."""
    status, reason = list(line_status), list(line_reason)
    served: dict[str, int] = {}
    for r in reserved:
        for l in r.alloc.lines:
            served[l.sku] = served.get(l.sku, 0) + l.quantity
    why = {u.sku: u.reason for u in plan.unserved}
    for i, line in enumerate(lines):
        if status[i] != OPEN:
            continue
        got = min(served.get(line.sku, 0), line.quantity)
        served[line.sku] = served.get(line.sku, 0) - got
        if got == 0:
            status[i], reason[i] = BACKORDERED, why.get(line.sku, plan.reason)
        elif got < line.quantity:  # some units wait: the line is retried like a backorder
            status[i] = BACKORDERED
            reason[i] = f"{line.quantity - got} of {line.quantity} waiting: {why.get(line.sku, plan.reason)}"
    return status, reason


def new_order_outcome(line_status: Sequence[str], line_reason: Sequence[str | None], reserved_any: bool,
                      plan_reason: str | None) -> tuple[OrderStatus, str | None]:
    """A paid order's status and reason once routed: allocated when all of it was reserved,
    partially allocated when some lines wait (saying which), else backordered with routing's reason."""
    if not reserved_any:
        return S.BACKORDERED, plan_reason
    if BACKORDERED in line_status:  # the waiting lines are retried on restock
        return S.PARTIALLY_ALLOCATED, "partly backordered: " + "; ".join(sorted({r for r in line_reason if r}))
    return S.ALLOCATED, None


def holds_while_unpaid(channel_status: ChannelStatus, platform_deducts: bool | None, shop_deducts: bool) -> bool:
    """Does an order hold its units before it is paid? Only an unpaid one whose platform already
    took them off its own counter (deducts at order time: Douyin reduce_stock_type 1, Taobao
    拍下减库存): as the order says, else as its shop is set."""
    if channel_status is not ChannelStatus.UNPAID:
        return False
    return platform_deducts if platform_deducts is not None else shop_deducts


def unpaid_outcome(channel_status: ChannelStatus, channel: str) -> tuple[OrderStatus, str | None]:
    """The status of an order first seen in a channel status other than paid: nothing is reserved."""
    status = first_seen_status(channel_status)
    if status in (S.SHIPPED, S.DELIVERED):
        return status, f"reported {channel_status} by {channel} before the OMS saw it; nothing reserved"
    return status, None


# ---- news from a channel about an order we have ---------------------------------------------------
class ChannelAction(enum.StrEnum):
    IGNORE = "ignore"  # older or equal news: nothing changes
    RECORD = "record"  # newer status recorded; our order goes on as it is
    CANCEL = "cancel"  # the platform cancelled it: cancel and release
    ALLOCATE = "allocate"  # it was paid: route and reserve


def is_newer(incoming: ChannelStatus, incoming_at: datetime | None,
             current: ChannelStatus, current_at: datetime | None) -> bool:
    """Statuses apply in order: a higher rank is news unless the platform dates it before what we have."""
    if incoming.rank <= current.rank:
        return False
    return not (incoming_at and current_at and incoming_at < current_at)


def channel_update(incoming: ChannelStatus, incoming_at: datetime | None, current: ChannelStatus,
                   current_at: datetime | None, order_status: OrderStatus | str) -> ChannelAction:
    """What a channel status means for our order."""
    if not is_newer(incoming, incoming_at, current, current_at):
        return ChannelAction.IGNORE
    if incoming is ChannelStatus.CANCELLED:
        return ChannelAction.CANCEL
    if incoming is ChannelStatus.PAID and order_status == S.CREATED:
        return ChannelAction.ALLOCATE
    return ChannelAction.RECORD


class UnknownOrderNews(enum.StrEnum):
    RETRY = "retry"  # a payment for an order not received yet: the platform retries later
    CREATE = "create"  # the message carries the order in a status we may still act on: store it
    NOTE = "note"  # nothing to update: acknowledged with a note


def news_for_unknown_order(status: ChannelStatus, *, is_payment: bool, carries_order: bool) -> UnknownOrderNews:
    """A status message for an order we do not have."""
    if is_payment:
        return UnknownOrderNews.RETRY
    if carries_order and status.rank <= ChannelStatus.PAID.rank:
        return UnknownOrderNews.CREATE
    return UnknownOrderNews.NOTE


def too_late_to_cancel(order_status: OrderStatus | str | None) -> bool:
    """The goods have left our hands: a platform's cancel or refund is noted, not applied."""
    return order_status in HANDED_OVER


# ---- the order follows its fulfilments -------------------------------------------------------------
def order_status_from(mode: str, fulfillments: Sequence[tuple[str, str]]) -> OrderStatus:
    """The order status its fulfilments' (status, role) imply; rejected, cancelled and returned
    ones no longer count.

    A pickup order is ready once the pickup store's part is ready and every transfer to it was
    received there, and collected once the buyer took it there. An order is delivered once every
    part is."""
    act = [(F(s), r) for s, r in fulfillments if s not in GONE_FULFILLMENT]
    if not act:
        return S.BACKORDERED
    if any(s is F.HELD for s, _ in act):
        return S.CREATED  # unpaid: its units are only held
    if mode == "pickup":
        serve = [s for s, r in act if r != "transfer"]
        arrived = all(s is F.RECEIVED for s, r in act if r == "transfer")
        if serve and arrived and all(s is F.COLLECTED for s in serve):
            return S.COLLECTED
        if serve and arrived and all(s in (F.READY_FOR_PICKUP, F.COLLECTED) for s in serve):
            return S.READY_FOR_PICKUP
        return S.ALLOCATED if all(s is F.ALLOCATED for s, _ in act) else S.PICKING
    active = [s for s, _ in act]
    done = {F.SHIPPED, F.COLLECTED, F.DELIVERED}
    if all(s in done for s in active):
        if all(s is F.DELIVERED for s in active):
            return S.DELIVERED
        return S.COLLECTED if F.COLLECTED in active else S.SHIPPED
    if all(s in done | {F.PICKED, F.READY_FOR_PICKUP} for s in active):
        return S.READY_FOR_PICKUP if mode == "pickup" else S.PICKED
    if any(s is not F.ALLOCATED for s in active):
        return S.PICKING
    return S.ALLOCATED


def order_status_with_lines(mode: str, fulfillments: Sequence[tuple[str, str]],
                            lines: Sequence[LineState]) -> OrderStatus:
    """What fulfilments imply, said of the whole order: while a line waits for stock and something
    is served the order is `partially_allocated`; with every line cancelled and nothing handed
    over it is `cancelled`."""
    target = order_status_from(mode, fulfillments)
    if lines and not any(l.live for l in lines):
        return S.CANCELLED if target is S.BACKORDERED else target
    if target is S.CREATED:
        return target  # unpaid: units not held are routed once it is paid, nothing waits yet
    if target is not S.BACKORDERED and any(l.waiting for l in lines):
        return S.PARTIALLY_ALLOCATED
    return target


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
