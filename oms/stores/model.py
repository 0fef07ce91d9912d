"""Store operations: the shapes store staff see, and the rules their work follows."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import msgspec


if TYPE_CHECKING:
    pass


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


TOKEN_PREFIX = "oms_store_"
PICKUP_CODE_DIGITS = 6
PICKUP_CODE_RE = re.compile(r"[0-9]{6,12}")
#: a code given out at a store is not given out again there for this long (open or used)
PICKUP_CODE_QUARANTINE = timedelta(days=30)
#: wrong pickup codes tolerated per store and window before answering 429
WRONG_CODE_LIMIT = 10
WRONG_CODE_WINDOW_S = 600
#: a store step repeated (an app retry) answers 200 with the same view when the fulfilment is
#: already here: the step and its retry are one request
ALREADY_DONE: dict[str, frozenset[str]] = {
    "picked": frozenset({"picked", "ready_for_pickup", "shipped", "collected", "delivered", "received", "returned"}),
    "shipped": frozenset({"shipped", "delivered", "received", "returned"}),
    "delivered": frozenset({"delivered"}),
}
#: how long a store request's answer is kept for a retry with the same Idempotency-Key
IDEMPOTENCY_TTL_S = 24 * 3600
#: reject reasons meaning "the shelf is empty": the SKU's availability at the node goes to zero
OUT_OF_STOCK_REASONS = frozenset({"out_of_stock", "out-of-stock", "out of stock", "缺货", "无货"})


# ---- shapes --------------------------------------------------------------------------------
class StoreLine(msgspec.Struct, frozen=True, omit_defaults=True):
    sku: str
    quantity: int
    #: the product's name from the catalogue (pick lists), so staff need no code book
    name: str | None = None


class IssuedToken(msgspec.Struct, kw_only=True):
    token: str
    id: str
    node_id: str
    label: str
    created_at: datetime


class TokenInfo(msgspec.Struct, kw_only=True):
    id: str
    node_id: str
    label: str
    created_at: datetime
    revoked_at: datetime | None = None


class StoreOrder(msgspec.Struct, kw_only=True):
    """One order as a store sees it: its own part, no buyer details, no pickup code."""

    order_id: str
    order_status: str
    fulfillment_id: str
    node_id: str
    status: str  # this store's fulfilment
    delivery_mode: str
    lines: list[StoreLine]
    promised_by: datetime | None = None
    minutes_left: float | None = None
    pickup_code_issued: bool = False
    reason: str | None = None
    #: reject only: units sent to another node, and units no node could take
    rerouted: list[StoreLine] = []
    backordered: list[StoreLine] = []
    #: pickup store: the goods other nodes transfer in for this order (handed over here too)
    transferred_in: list[StoreLine] = []


class PickEntry(msgspec.Struct, kw_only=True):
    fulfillment_id: str
    order_id: str
    channel: str
    external_id: str
    delivery_mode: str
    status: str
    lines: list[StoreLine]
    allocated_at: datetime
    paid_at: datetime | None = None
    promised_by: datetime | None = None
    #: minutes until the one-hour promise (delivery orders)
    minutes_left: float | None = None
    #: estimated minutes until this one is picked, given its place in the queue and capacity
    pick_minutes: float | None = None
    #: the promise clock's verdict (oms/network/promise.py)
    at_risk: bool = False
    picked_at: datetime | None = None
    #: ready pickups: when an uncollected one is cancelled and its stock returned
    expires_at: datetime | None = None
    #: "serve" (for the buyer) or "transfer" (send to the pickup store `transfer_to`, then mark shipped)
    role: str = "serve"
    transfer_to: str | None = None
    #: a pickup: goods other nodes transferred in and this store received (handed over with `lines`)
    transferred_in: list[StoreLine] = []


class IncomingTransfer(msgspec.Struct, kw_only=True):
    """Goods another node sends to this pickup store for one order."""

    fulfillment_id: str
    order_id: str
    channel: str
    external_id: str
    from_node_id: str
    status: str  # allocated / picked at the source, shipped = on its way: POST .../received when here
    lines: list[StoreLine]
    shipped_at: datetime | None = None
    #: "cancelled": the order is gone; received, the goods join this store's stock
    order_status: str = ""


class SkuWork(msgspec.Struct, kw_only=True, omit_defaults=True):
    sku: str
    quantity: int
    orders: list[str]
    name: str | None = None


class Intercepted(msgspec.Struct, frozen=True, kw_only=True):
    """A hand-over the platform refused (e.g. Douyin: refund pending): stop the parcel."""

    order_id: str
    fulfillment_id: str
    channel: str
    external_id: str
    reason: str | None
    refused_at: datetime | None


class PickList(msgspec.Struct, kw_only=True):
    node_id: str
    as_of: datetime
    #: allocated here, not yet picked: most urgent first
    items: list[PickEntry]
    #: the same work by SKU, so staff walk the shelves once
    by_sku: list[SkuWork]
    #: picked and waiting for the courier, or ready and waiting for the buyer
    awaiting_handover: list[PickEntry]
    #: pickup orders whose goods other nodes transfer here; POST .../received as they arrive
    incoming: list[IncomingTransfer] = []
    at_risk: int = 0
    #: handed over, but the platform refuses the shipment (refund pending): get the parcel back
    intercepted: list[Intercepted] = []
