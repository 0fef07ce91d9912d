"""The one order shape every channel adapter produces and the service consumes.

It lives in `adapters/` (not `oms/`) because the adapters are a pure library that must
not import the service; `oms.domain` re-exports these names.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated

import msgspec

#: at most 100 million yuan per amount, so any order's sum stays far inside PostgreSQL's bigint
Fen = Annotated[int, msgspec.Meta(ge=0, le=10_000_000_000, description="money in integer fen (1 yuan = 100 fen)")]
Quantity = Annotated[int, msgspec.Meta(ge=1, le=100_000, description="units, at least 1")]
Sku = Annotated[str, msgspec.Meta(min_length=1, max_length=64, description="merchant SKU code")]
Latitude = Annotated[float, msgspec.Meta(ge=-90, le=90)]
Longitude = Annotated[float, msgspec.Meta(ge=-180, le=180)]


class Channel(enum.StrEnum):
    TMALL = "tmall"
    JD = "jd"
    DOUYIN = "douyin"
    MINIPROGRAM = "miniprogram"
    #: a trusted internal caller posting already-normalized orders (POST /orders)
    MANUAL = "manual"


class DeliveryMode(enum.StrEnum):
    DELIVERY = "delivery"  # one-hour delivery from a store (同城1小时达)
    PICKUP = "pickup"  # collected by the buyer at a named store (门店自提)
    SHIP = "ship"  # parcel shipping, any distance


class ChannelStatus(enum.StrEnum):
    """Where the platform says the order is; each adapter maps its own enum onto this."""

    UNPAID = "unpaid"
    PAID = "paid"
    SHIPPED = "shipped"  # the platform says it left (e.g. shipped through another system)
    COMPLETED = "completed"
    CANCELLED = "cancelled"  # closed, refunded in full, or cancelled before shipping

    @property
    def rank(self) -> int:
        """Progress order: an update with a lower rank never moves an order back."""
        return _STATUS_RANK[self]


_STATUS_RANK = {
    ChannelStatus.UNPAID: 0,
    ChannelStatus.PAID: 1,
    ChannelStatus.SHIPPED: 2,
    ChannelStatus.COMPLETED: 3,
    ChannelStatus.CANCELLED: 4,
}


class Destination(msgspec.Struct, frozen=True, kw_only=True):
    """Where the order goes. Coordinates are GCJ-02, the system Chinese maps use (nodes too)."""

    lat: Latitude
    lng: Longitude
    address: str = ""  # masked as the platform sends it; never a full address
    #: True when lat/lng is a district centre from the gazetteer, not the buyer's point
    approximate: bool = False
    province: str | None = None
    city: str | None = None
    district: str | None = None


class Buyer(msgspec.Struct, frozen=True, kw_only=True):
    """Buyer as the platform sends it: masked copies, and encrypted blobs kept opaque."""

    name_masked: str | None = None
    phone_masked: str | None = None
    encrypted: dict[str, str] = msgspec.field(default_factory=dict)


class OrderLine(msgspec.Struct, frozen=True, kw_only=True):
    sku: Sku
    quantity: Quantity
    unit_price: Fen = 0
    #: the platform's own line / SKU ids, kept for refunds and the SKU mapping table
    platform_line_id: str | None = None
    platform_sku_id: str | None = None
    #: set when the platform line had no merchant code and the SKU mapping table had no entry:
    #: `sku` is then a placeholder "<channel>:<platform sku id>" and the core backorders the
    #: line with this reason (the push is not rejected). Added by the channel adapters.
    unmapped_reason: str | None = None


class NormalizedOrder(msgspec.Struct, frozen=True, kw_only=True):
    """A channel order after verification and parsing; input of the intake service."""

    channel: Channel
    external_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    delivery_mode: DeliveryMode
    destination: Destination
    lines: Annotated[list[OrderLine], msgspec.Meta(min_length=1, max_length=200)]
    status: ChannelStatus = ChannelStatus.PAID
    pickup_node_id: str | None = None
    buyer: Buyer = msgspec.field(default_factory=Buyer)
    total_fen: Fen | None = None  # what the buyer pays; defaults to the sum of lines
    freight_fen: Fen = 0
    discount_fen: Fen = 0
    created_at: datetime | None = None
    paid_at: datetime | None = None
    #: platform's own promise (e.g. Douyin target_arrival_time); else paid_at + one hour
    promised_by: datetime | None = None
    #: platform's last-modified time, used to apply status updates in order
    updated_at: datetime | None = None
    #: an unpaid order is cancelled if not paid by then (the platform's order expiry, e.g. Douyin
    #: order_expire_time); without it, OMS_UNPAID_EXPIRY_MINUTES after it arrived
    pay_by: datetime | None = None
    #: the platform took the units off its own counter when the order was placed (Douyin
    #: reduce_stock_type 1, Taobao 拍下减库存): an unpaid order holds them until paid or expired.
    #: None: the platform did not say; the shop's `deducts_at_order` setting decides
    deducts_at_order: bool | None = None
    #: lines the adapter could not map to a merchant SKU: backordered with this reason
    unmapped: list[str] = msgspec.field(default_factory=list)
    #: the shop (account on the platform) it came through; None: the channel's default shop
    shop_id: str | None = None

    def __post_init__(self) -> None:
        if self.delivery_mode is DeliveryMode.PICKUP and not self.pickup_node_id:
            raise ValueError("pickup_node_id: required when delivery_mode is 'pickup'")
        for ts in (self.created_at, self.paid_at, self.promised_by, self.updated_at, self.pay_by):
            if ts is not None and ts.tzinfo is None:
                raise ValueError("timestamps: created_at, paid_at, promised_by, updated_at and pay_by need a "
                                 "timezone offset")

    @property
    def lines_total_fen(self) -> int:
        return sum(line.unit_price * line.quantity for line in self.lines)


class ChannelEventKind(enum.StrEnum):
    """What a channel message asks the service to do."""

    UPSERT = "upsert"  # created / paid / changed: fetch and upsert the order
    CANCEL = "cancel"  # cancelled or refunded in full
    REFUND_LINES = "refund_lines"  # some lines refunded
    STATUS = "status"  # a status-only move (shipped/completed elsewhere)
    IGNORE = "ignore"  # acknowledged, nothing to do (e.g. refund closed)


class ChannelEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One verified message from a platform, before or after the full-order fetch."""

    channel: Channel
    message_id: str  # unique per channel: the inbox key
    kind: ChannelEventKind
    external_id: str
    topic: str  # the platform's own tag/topic, for logs and the inbox
    status: ChannelStatus | None = None
    occurred_at: datetime | None = None
    order: NormalizedOrder | None = None  # present once fetched (or when the push carries it)
    refunded_line_ids: list[str] = msgspec.field(default_factory=list)
    #: money the event itself reports, in fen: WeChat Pay `amount.total` of a payment (the core
    #: checks it against the order) or the refunded amount of a refund. Added by the adapters.
    amount_fen: Fen | None = None
    raw: bytes = b""  # the exact bytes received, stored in the inbox
