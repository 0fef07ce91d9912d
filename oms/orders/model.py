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
    CREATED = "created"  # received, not paid yet: nothing reserved
    ALLOCATED = "allocated"  # stock reserved at one or more nodes
    BACKORDERED = "backordered"  # no node could serve it; reason says why
    PICKING = "picking"
    PICKED = "picked"
    SHIPPED = "shipped"
    READY_FOR_PICKUP = "ready_for_pickup"
    COLLECTED = "collected"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"


S = OrderStatus
#: Every order status change goes through `check_transition`; nothing else writes a status.
ORDER_TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    S.CREATED: frozenset({S.ALLOCATED, S.BACKORDERED, S.CANCELLED}),
    S.BACKORDERED: frozenset({S.ALLOCATED, S.BACKORDERED, S.CANCELLED}),
    S.ALLOCATED: frozenset({S.ALLOCATED, S.PICKING, S.PICKED, S.READY_FOR_PICKUP, S.SHIPPED, S.BACKORDERED, S.CANCELLED}),
    S.PICKING: frozenset({S.ALLOCATED, S.PICKED, S.READY_FOR_PICKUP, S.BACKORDERED, S.CANCELLED}),
    S.PICKED: frozenset({S.ALLOCATED, S.SHIPPED, S.READY_FOR_PICKUP, S.BACKORDERED, S.CANCELLED}),
    S.READY_FOR_PICKUP: frozenset({S.COLLECTED, S.CANCELLED}),
    S.SHIPPED: frozenset({S.DELIVERED}),
    S.COLLECTED: frozenset(),
    S.DELIVERED: frozenset(),
    S.CANCELLED: frozenset(),
}

#: statuses in which the order's goods have left our hands: too late to cancel
HANDED_OVER = frozenset({S.SHIPPED, S.COLLECTED, S.DELIVERED})


def check_transition(current: OrderStatus | str, new: OrderStatus | str) -> OrderStatus:
    """Return `new` if the table allows current -> new, else raise IllegalTransition (409)."""
    cur, nxt = OrderStatus(current), OrderStatus(new)
    if nxt not in ORDER_TRANSITIONS[cur]:
        raise IllegalTransition(
            f"order is '{cur}'; it cannot become '{nxt}'", current=str(cur), requested=str(nxt)
        )
    return nxt


class FulfillmentStatus(enum.StrEnum):
    ALLOCATED = "allocated"  # on the node's pick list
    PICKED = "picked"  # picked, waiting for the courier (delivery / ship)
    READY_FOR_PICKUP = "ready_for_pickup"  # picked, pickup code issued
    SHIPPED = "shipped"  # the courier took it: stock committed
    COLLECTED = "collected"  # the buyer collected it: stock committed
    REJECTED = "rejected"  # the node could not serve it: re-routed
    CANCELLED = "cancelled"


F = FulfillmentStatus
FULFILLMENT_TRANSITIONS: dict[FulfillmentStatus, frozenset[FulfillmentStatus]] = {
    F.ALLOCATED: frozenset({F.PICKED, F.READY_FOR_PICKUP, F.SHIPPED, F.REJECTED, F.CANCELLED}),
    F.PICKED: frozenset({F.SHIPPED, F.READY_FOR_PICKUP, F.REJECTED, F.CANCELLED}),
    F.READY_FOR_PICKUP: frozenset({F.COLLECTED, F.CANCELLED}),
    F.SHIPPED: frozenset(),
    F.COLLECTED: frozenset(),
    F.REJECTED: frozenset(),
    F.CANCELLED: frozenset(),
}
OPEN_FULFILLMENT = frozenset({F.ALLOCATED, F.PICKED, F.READY_FOR_PICKUP})


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
    status: str = "open"
    reason: str | None = None


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
