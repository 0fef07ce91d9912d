"""Orders: statuses, the transition tables, and the shapes the API returns."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import NewType

import msgspec

from adapters.normalized import (  # noqa: F401  re-exported: the intake's input
    Buyer,
    Channel,
    ChannelStatus,
    DeliveryMode,
    Destination,
    NormalizedOrder,
    OrderLine,
)
from oms.errors import IllegalTransition

OrderId = NewType("OrderId", str)
NodeId = NewType("NodeId", str)
FulfillmentId = NewType("FulfillmentId", str)


class OrderStatus(enum.StrEnum):
    #: received, not paid yet: nothing reserved, or (a platform that deducts at order time) its
    #: units held in `held` fulfilments until paid or expired
    CREATED = "created"
    ALLOCATED = "allocated"  # stock reserved at one or more nodes
    #: some lines are served, some wait for stock (retried like a backorder); lines say which and why
    PARTIALLY_ALLOCATED = "partially_allocated"
    BACKORDERED = "backordered"  # no node could serve it; reason says why
    PICKING = "picking"
    PICKED = "picked"
    SHIPPED = "shipped"
    READY_FOR_PICKUP = "ready_for_pickup"
    COLLECTED = "collected"
    DELIVERED = "delivered"
    COMPLETED = "completed"  # delivered or collected, and closed (buyer confirmed, or by the admin)
    CANCELLED = "cancelled"


S = OrderStatus
_WORK = frozenset({S.ALLOCATED, S.PARTIALLY_ALLOCATED, S.PICKING, S.PICKED, S.READY_FOR_PICKUP})
#: Every order status change goes through `check_transition`; nothing else writes a status.
#: While a line waits for stock the order is `partially_allocated`, whatever its served parts do,
#: so that status reaches (and is reached from) every step of the served parts' work.
ORDER_TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    S.CREATED: frozenset({S.ALLOCATED, S.PARTIALLY_ALLOCATED, S.BACKORDERED, S.CANCELLED}),
    S.BACKORDERED: frozenset({S.ALLOCATED, S.PARTIALLY_ALLOCATED, S.BACKORDERED, S.CANCELLED}),
    S.ALLOCATED: _WORK | {S.SHIPPED, S.BACKORDERED, S.CANCELLED},
    S.PARTIALLY_ALLOCATED: _WORK | {S.SHIPPED, S.COLLECTED, S.DELIVERED, S.BACKORDERED, S.CANCELLED},
    S.PICKING: frozenset({S.ALLOCATED, S.PARTIALLY_ALLOCATED, S.PICKED, S.READY_FOR_PICKUP, S.BACKORDERED,
                          S.CANCELLED}),
    S.PICKED: frozenset({S.ALLOCATED, S.PARTIALLY_ALLOCATED, S.SHIPPED, S.READY_FOR_PICKUP, S.BACKORDERED,
                         S.CANCELLED}),
    S.READY_FOR_PICKUP: frozenset({S.COLLECTED, S.PARTIALLY_ALLOCATED, S.CANCELLED}),
    S.SHIPPED: frozenset({S.DELIVERED}),
    S.COLLECTED: frozenset({S.COMPLETED}),
    S.DELIVERED: frozenset({S.COMPLETED}),
    S.COMPLETED: frozenset(),
    S.CANCELLED: frozenset(),
}

#: statuses in which the order's goods have left our hands: too late to cancel
HANDED_OVER = frozenset({S.SHIPPED, S.COLLECTED, S.DELIVERED, S.COMPLETED})
#: statuses an order never leaves
TERMINAL = frozenset({S.COMPLETED, S.CANCELLED})
#: orders with lines waiting for stock: restock and POST /orders/{id}/allocate route them again
WAITING = frozenset({S.BACKORDERED, S.PARTIALLY_ALLOCATED})


def check_transition(current: OrderStatus | str, new: OrderStatus | str) -> OrderStatus:
    """Return `new` if the table allows current -> new, else raise IllegalTransition (409)."""
    cur, nxt = OrderStatus(current), OrderStatus(new)
    if nxt not in ORDER_TRANSITIONS[cur]:
        raise IllegalTransition(
            f"order is '{cur}'; it cannot become '{nxt}'", current=str(cur), requested=str(nxt)
        )
    return nxt


class FulfillmentStatus(enum.StrEnum):
    #: an unpaid order's units, reserved because its platform already took them off its own
    #: counter (deducts at order time); not on the pick list until paid, released at its expiry
    HELD = "held"
    ALLOCATED = "allocated"  # on the node's pick list
    PICKED = "picked"  # picked, waiting for the courier (delivery / ship / transfer)
    READY_FOR_PICKUP = "ready_for_pickup"  # picked, pickup code issued
    SHIPPED = "shipped"  # the courier took it (a transfer: on its way): stock committed
    COLLECTED = "collected"  # the buyer collected it: stock committed
    DELIVERED = "delivered"  # at the buyer's door (courier or store confirmed)
    RECEIVED = "received"  # a transfer arrived at the pickup store
    #: a transfer whose order was cancelled: its goods went into the pickup store's stock
    RETURNED = "returned"
    REJECTED = "rejected"  # the node could not serve it: re-routed
    CANCELLED = "cancelled"


F = FulfillmentStatus
#: picked before handed over: `shipped` straight from `allocated` is refused (the store's
#: `handover` call does both steps, recorded as both)
FULFILLMENT_TRANSITIONS: dict[FulfillmentStatus, frozenset[FulfillmentStatus]] = {
    F.HELD: frozenset({F.ALLOCATED, F.CANCELLED}),  # paid, or cancelled / expired unpaid
    F.ALLOCATED: frozenset({F.PICKED, F.READY_FOR_PICKUP, F.REJECTED, F.CANCELLED}),
    F.PICKED: frozenset({F.SHIPPED, F.READY_FOR_PICKUP, F.REJECTED, F.CANCELLED}),
    F.READY_FOR_PICKUP: frozenset({F.COLLECTED, F.CANCELLED}),
    F.SHIPPED: frozenset({F.DELIVERED, F.RECEIVED}),
    F.RECEIVED: frozenset({F.RETURNED}),
    F.COLLECTED: frozenset(),
    F.DELIVERED: frozenset(),
    F.RETURNED: frozenset(),
    F.REJECTED: frozenset(),
    F.CANCELLED: frozenset(),
}
#: units reserved and still ours to give back on a cancel
OPEN_FULFILLMENT = frozenset({F.HELD, F.ALLOCATED, F.PICKED, F.READY_FOR_PICKUP})
#: a fulfilment in one of these handed goods to the buyer (a transfer's `shipped` only moved
#: them between our own nodes)
HANDED_OVER_FULFILLMENT = frozenset({F.SHIPPED, F.COLLECTED, F.DELIVERED})
#: no longer part of the order's work
GONE_FULFILLMENT = frozenset({F.REJECTED, F.CANCELLED, F.RETURNED})


def handed_to_buyer(status: str, role: str) -> bool:
    """Did this fulfilment put goods in the buyer's (or courier's) hands?"""
    return role != "transfer" and status in HANDED_OVER_FULFILLMENT


def check_fulfillment_transition(current: FulfillmentStatus | str, new: FulfillmentStatus | str) -> FulfillmentStatus:
    """Return `new` if a fulfilment may move current -> new, else raise IllegalTransition (409)."""
    cur, nxt = FulfillmentStatus(current), FulfillmentStatus(new)
    if nxt not in FULFILLMENT_TRANSITIONS[cur]:
        raise IllegalTransition(
            f"fulfilment is '{cur}'; it cannot become '{nxt}'", current=str(cur), requested=str(nxt)
        )
    return nxt


class FulfillmentLine(msgspec.Struct, frozen=True):
    sku: str
    quantity: int


class Fulfillment(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    node_id: str
    status: FulfillmentStatus
    lines: list[FulfillmentLine]
    role: str = "serve"
    distance_m: float | None = None
    pickup_code: str | None = None
    ready_by: datetime | None = None


class OrderLineView(msgspec.Struct, frozen=True, kw_only=True):
    sku: str
    quantity: int
    unit_price: int
    #: open (served or being served), backordered (some units wait: `waiting`), cancelled
    status: str = "open"
    reason: str | None = None
    #: 1-based; a partial cancel names lines by it
    line_no: int = 0
    #: units cancelled (partial cancel / refund) and units still waiting for stock
    cancelled: int = 0
    waiting: int = 0


class HistoryEntry(msgspec.Struct, frozen=True, kw_only=True):
    at: datetime
    from_status: str | None
    to_status: str
    cause: str
    detail: dict | None = None


class Order(msgspec.Struct, frozen=True, kw_only=True):
    """An order as the API returns it."""

    id: str
    channel: str
    external_id: str
    status: OrderStatus
    channel_status: str
    delivery_mode: DeliveryMode
    destination: Destination
    lines: list[OrderLineView]
    fulfillments: list[Fulfillment]
    reason: str | None = None
    pickup_node_id: str | None = None
    total_fen: int = 0
    paid_at: datetime | None = None
    promised_by: datetime | None = None
    minutes_left: float | None = None
    #: the promise clock's verdict on its open fulfilments (oms/network/promise.py)
    at_risk: bool = False
    #: a one-hour promise already passed while the order is still in our hands
    late: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None
    history: list[HistoryEntry] | None = None


#: the status of an order whose first news is not "paid": nothing is reserved for it
_FIRST_SEEN_AS = {
    ChannelStatus.UNPAID: OrderStatus.CREATED,
    ChannelStatus.CANCELLED: OrderStatus.CANCELLED,
    ChannelStatus.SHIPPED: OrderStatus.SHIPPED,
    ChannelStatus.COMPLETED: OrderStatus.DELIVERED,
}


def first_seen_status(channel_status: ChannelStatus) -> OrderStatus:
    """Our status for an order first seen in a channel status other than paid."""
    return _FIRST_SEEN_AS[channel_status]
