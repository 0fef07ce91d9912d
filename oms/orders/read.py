"""Reading orders back: one order with its lines, fulfilments and history, or a page of them."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from oms.errors import NotFound
from oms.infra.db import Q
from oms.network.promise import PromiseClock
from oms.orders.lines import held_units, line_states
from oms.orders.model import (
    Destination,
    Fulfillment,
    FulfillmentLine,
    FulfillmentStatus,
    HistoryEntry,
    Order,
    OrderLineView,
    OrderStatus,
)


def order_from_rows(row, lines, fulfillments, reservations, history=None, *, with_codes: bool = True,
                    queue=(), clock: PromiseClock | None = None) -> Order:
    """The API's order from its rows; `queue` is promise_queue_of_order (the open fulfilments' places)."""
    clock = clock or PromiseClock()
    left = clock.minutes_left(row["promised_by"], row["status"])
    estimates = [clock.estimate(left, q["status"], q["ahead"], q["capacity_per_hour"]) for q in queue]
    # a fulfilment shows what it holds or handed over; one cancelled or rejected, what it held
    by_f: dict[str, list[FulfillmentLine]] = {}
    gone: dict[str, list[FulfillmentLine]] = {}
    for r in reservations:
        into = gone if r["state"] == "released" else by_f
        into.setdefault(r["fulfillment_id"], []).append(FulfillmentLine(r["sku"], r["quantity"]))
    for fid, held in gone.items():
        by_f.setdefault(fid, held)
    return Order(
        id=row["id"],
        channel=row["channel"],
        external_id=row["external_id"],
        status=OrderStatus(row["status"]),
        channel_status=row["channel_status"],
        delivery_mode=row["delivery_mode"],
        destination=Destination(
            lat=row["dest_lat"], lng=row["dest_lng"], address=row["dest_address"],
            approximate=row["dest_approximate"],
        ),
        lines=[
            OrderLineView(sku=l["sku"], quantity=l["quantity"], unit_price=l["unit_price_fen"],
                          status=l["status"], reason=l["reason"], line_no=l["line_no"],
                          cancelled=l["cancelled_qty"], waiting=st.waiting)
            for l, st in zip(lines, line_states(lines, held_units(reservations)))
        ],
        fulfillments=[
            Fulfillment(
                id=f["id"], node_id=f["node_id"], status=FulfillmentStatus(f["status"]),
                lines=sorted(by_f.get(f["id"], []), key=lambda x: x.sku), role=f["role"],
                distance_m=f["distance_m"], pickup_code=f["pickup_code"] if with_codes else None,
                ready_by=f["ready_by"],
            )
            for f in fulfillments
        ],
        reason=row["reason"],
        pickup_node_id=row["pickup_node_id"],
        total_fen=row["total_fen"],
        paid_at=row["paid_at"],
        promised_by=row["promised_by"],
        minutes_left=left,
        at_risk=clock.any_at_risk(estimates),
        late=clock.any_late(estimates),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        history=None if history is None else [
            HistoryEntry(at=h["at"], from_status=h["from_status"], to_status=h["to_status"],
                         cause=h["cause"], detail=h["detail"])
            for h in history
        ],
    )


async def load_order(conn: asyncpg.Connection, order_id: str, *, history: bool = True,
                     clock: PromiseClock | None = None) -> Order:
    row = await conn.fetchrow(Q["order_by_id"], order_id)
    if row is None:
        raise NotFound(f"no order with id '{order_id}'", field="id")
    return order_from_rows(
        row,
        await conn.fetch(Q["order_lines_by_order"], order_id),
        await conn.fetch(Q["fulfillments_by_order"], order_id),
        await conn.fetch(Q["reservations_by_order"], order_id),
        await conn.fetch(Q["history_by_order"], order_id) if history else None,
        queue=await conn.fetch(Q["promise_queue_of_order"], order_id),
        clock=clock,
    )


async def list_orders(conn: asyncpg.Connection, *, channel: str | None, external_id: str | None,
                      status: str | None, before: tuple[datetime, str] | None, limit: int,
                      clock: PromiseClock | None = None) -> list[Order]:
    query = Q["orders_list"] if external_id is None else Q["orders_list_by_external"]
    rows = await conn.fetch(query, channel, external_id, status,
                            before[0] if before else None, before[1] if before else None, limit)
    out = []
    for row in rows:
        oid = row["id"]
        out.append(order_from_rows(
            row,
            await conn.fetch(Q["order_lines_by_order"], oid),
            await conn.fetch(Q["fulfillments_by_order"], oid),
            await conn.fetch(Q["reservations_by_order"], oid),
            queue=await conn.fetch(Q["promise_queue_of_order"], oid),
            clock=clock,
        ))
    return out
