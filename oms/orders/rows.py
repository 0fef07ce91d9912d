"""Typed rows between Python and the order tables, in the column order of sql/queries/orders.sql.

`array_like` Structs encode to JSON arrays, so the group-commit document is the same bytes a
tuple gave, while Python code names every column instead of counting slots.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import msgspec

from oms.orders.model import FulfillmentStatus
from routing import Allocation


class OrderRow(msgspec.Struct, array_like=True, frozen=True, kw_only=True):
    id: str
    channel: str
    external_id: str
    status: str
    channel_status: str
    delivery_mode: str
    buyer: dict | None
    dest_lat: float
    dest_lng: float
    dest_address: str | None
    dest_approximate: bool
    pickup_node_id: str | None
    promised_by: datetime | None
    paid_at: datetime | None
    total_fen: int
    freight_fen: int
    discount_fen: int
    reason: str | None
    channel_updated_at: datetime | None
    shop_id: str | None = None
    pay_by: datetime | None = None


class LineRow(msgspec.Struct, array_like=True, frozen=True, kw_only=True):
    order_id: str
    line_no: int
    sku: str
    quantity: int
    unit_price_fen: int
    platform_line_id: str | None
    platform_sku_id: str | None
    status: str
    reason: str | None


class FulfillmentRow(msgspec.Struct, array_like=True, frozen=True, kw_only=True):
    id: str
    order_id: str
    node_id: str
    status: str
    role: str
    distance_m: float | None
    ready_by: datetime | None


class ReservationRow(msgspec.Struct, array_like=True, frozen=True, kw_only=True):
    fulfillment_id: str
    sku: str
    order_id: str
    node_id: str
    quantity: int


class HistoryRow(msgspec.Struct, array_like=True, frozen=True, kw_only=True):
    order_id: str
    from_status: str | None
    to_status: str
    cause: str
    detail: dict | None


class NewOrderRows(msgspec.Struct, kw_only=True):
    """Everything one new order writes."""

    order: OrderRow
    lines: list[LineRow] = []
    fulfillments: list[FulfillmentRow] = []
    reservations: list[ReservationRow] = []
    history: list[HistoryRow] = []

    @property
    def order_id(self) -> str:
        return self.order.id


class Reserved(msgspec.Struct, frozen=True):
    """A planned allocation whose stock is reserved in Redis under `fulfillment_id`."""

    fulfillment_id: str
    alloc: Allocation
    #: the node's generation in Redis when reserved (oms.stock.inventory): a rebuild since shows
    gen: str = ""


def fulfillment_rows(order_id: str, reserved: Sequence[Reserved], now: datetime,
                     status: FulfillmentStatus = FulfillmentStatus.ALLOCATED
                     ) -> tuple[list[FulfillmentRow], list[ReservationRow]]:
    """The fulfilment and reservation rows of freshly reserved allocations (`held`: an unpaid order's)."""
    f_rows: list[FulfillmentRow] = []
    r_rows: list[ReservationRow] = []
    for r in reserved:
        ready = r.alloc.ready_in_minutes
        f_rows.append(FulfillmentRow(
            id=r.fulfillment_id, order_id=order_id, node_id=r.alloc.node_id, status=str(status),
            role=str(r.alloc.role), distance_m=r.alloc.distance_m,
            ready_by=now + timedelta(minutes=ready) if ready is not None else None))
        for l in r.alloc.lines:
            r_rows.append(ReservationRow(fulfillment_id=r.fulfillment_id, sku=l.sku, order_id=order_id,
                                         node_id=r.alloc.node_id, quantity=l.quantity))
    return f_rows, r_rows


def columns(rows: Sequence[msgspec.Struct]) -> list[list]:
    """Rows as one list per column, for the `unnest($1, $2, ...)` inserts."""
    return [list(c) for c in zip(*(msgspec.structs.astuple(r) for r in rows))]
