"""Reading orders back, and the status changes that happen after intake (cancel)."""

from __future__ import annotations

from datetime import datetime, timezone

import asyncpg

from oms import metrics
from oms.db import Q
from oms.domain import (
    OPEN_FULFILLMENT,
    Destination,
    Fulfillment,
    FulfillmentLine,
    FulfillmentStatus,
    HistoryEntry,
    Order,
    OrderLineView,
    OrderStatus,
    check_transition,
)
from oms.errors import NotFound
from oms.inventory import Inventory


def minutes_left(promised_by: datetime | None, status: str, now: datetime | None = None) -> float | None:
    """Minutes until the promise, while the order is still in our hands."""
    if promised_by is None or status in ("shipped", "collected", "delivered", "cancelled"):
        return None
    now = now or datetime.now(timezone.utc)
    return round((promised_by - now).total_seconds() / 60, 1)


#: nominal minutes to pick one order when the store's queue is unknown (the pick list knows better)
PICK_MINUTES = 10


def at_risk(left: float | None, status: str, mode: str, courier_minutes: int) -> bool:
    """True when a delivery cannot make its promise unless it moves now."""
    if left is None or mode != "delivery":
        return False
    if status == OrderStatus.PICKED:
        return left < courier_minutes
    return status in (OrderStatus.ALLOCATED, OrderStatus.PICKING) and left < courier_minutes + PICK_MINUTES


def order_from_rows(row, lines, fulfillments, reservations, history=None, *, with_codes: bool = True,
                    courier_minutes: int = 25) -> Order:
    by_f: dict[str, list[FulfillmentLine]] = {}
    for r in reservations:
        by_f.setdefault(r["fulfillment_id"], []).append(FulfillmentLine(r["sku"], r["quantity"]))
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
                          status=l["status"], reason=l["reason"])
            for l in lines
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
        minutes_left=(left := minutes_left(row["promised_by"], row["status"])),
        at_risk=at_risk(left, row["status"], row["delivery_mode"], courier_minutes),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        history=None if history is None else [
            HistoryEntry(at=h["at"], from_status=h["from_status"], to_status=h["to_status"],
                         cause=h["cause"], detail=h["detail"])
            for h in history
        ],
    )


async def load_order(conn: asyncpg.Connection, order_id: str, *, history: bool = True,
                     courier_minutes: int = 25) -> Order:
    row = await conn.fetchrow(Q["order_by_id"], order_id)
    if row is None:
        raise NotFound(f"no order with id '{order_id}'", field="id")
    return order_from_rows(
        row,
        await conn.fetch(Q["order_lines_by_order"], order_id),
        await conn.fetch(Q["fulfillments_by_order"], order_id),
        await conn.fetch(Q["reservations_by_order"], order_id),
        await conn.fetch(Q["history_by_order"], order_id) if history else None,
        courier_minutes=courier_minutes,
    )


async def list_orders(conn: asyncpg.Connection, *, channel: str | None, external_id: str | None,
                      status: str | None, before: tuple[datetime, str] | None, limit: int) -> list[Order]:
    rows = await conn.fetch(Q["orders_list"], channel, external_id, status,
                            before[0] if before else None, before[1] if before else None, limit)
    out = []
    for row in rows:
        oid = row["id"]
        out.append(order_from_rows(
            row,
            await conn.fetch(Q["order_lines_by_order"], oid),
            await conn.fetch(Q["fulfillments_by_order"], oid),
            await conn.fetch(Q["reservations_by_order"], oid),
        ))
    return out


async def set_status(conn: asyncpg.Connection, order_id: str, current: str, new: OrderStatus, cause: str,
                     *, reason: str | None = None, detail: dict | None = None) -> None:
    """The one writer of orders.status: checks the transition table and records the history."""
    check_transition(current, new)
    await conn.execute(Q["order_set_status"], order_id, str(new), reason)
    await conn.execute(Q["history_insert"], order_id, current, str(new), cause, detail)


async def cancel_order(pool: asyncpg.Pool, inventory: Inventory, order_id: str, cause: str,
                       reason: str | None = None) -> Order:
    """Cancel an order and release its stock; cancelling twice changes nothing; after hand-over: 409."""
    released: list[tuple[str, str]] = []
    async with pool.acquire() as conn:
        async with conn.transaction():
            row = await conn.fetchrow(Q["order_by_id_for_update"], order_id)
            if row is None:
                raise NotFound(f"no order with id '{order_id}'", field="id")
            if row["status"] != OrderStatus.CANCELLED:
                await set_status(conn, order_id, row["status"], OrderStatus.CANCELLED, cause,
                                 reason=reason or "cancelled")
                metrics.order_cancelled(row["channel"])
                for f in await conn.fetch(Q["fulfillments_by_order"], order_id):
                    if f["status"] in OPEN_FULFILLMENT:
                        await conn.execute(Q["fulfillment_set_status"], f["id"], FulfillmentStatus.CANCELLED)
                        if await conn.fetch(Q["reservations_set_state"], f["id"], "released"):
                            released.append((f["node_id"], f["id"]))
        # PostgreSQL first: should Redis fail now, it holds too much back (never oversells)
        # until the next rebuild.
        for node_id, fid in released:
            await inventory.release(node_id, fid)
        return await load_order(conn, order_id)


async def cancel_lines(pool: asyncpg.Pool, inventory: Inventory, order_id: str, platform_line_ids: list[str],
                       cause: str, reason: str | None = None) -> tuple[Order, list[str]]:
    """Cancel the lines a channel refunded (named by the platform's line ids) and give back the
    units reserved for them; once every line is cancelled, the whole order is cancelled.

    Returns (order, ids that matched no line). Idempotent: a refunded line is cancelled once, and
    an order whose every line is cancelled is cancelled even if an earlier attempt stopped midway.
    After hand-over: 409 (the goods are with the buyer; a return is another flow).
    """
    from oms.domain import HANDED_OVER, ORDER_TRANSITIONS  # local: keeps this addition self-contained
    from oms.errors import IllegalTransition

    wanted = set(platform_line_ids)
    released: list[tuple[str, str, list[tuple[str, int]] | None]] = []  # (node, fulfilment, lines|all)
    async with pool.acquire() as conn:
        async with conn.transaction():
            row = await conn.fetchrow(Q["order_by_id_for_update"], order_id)
            if row is None:
                raise NotFound(f"no order with id '{order_id}'", field="id")
            lines = await conn.fetch(Q["order_lines_by_order"], order_id)
            unknown = sorted(wanted - {l["platform_line_id"] for l in lines})
            hit = [l for l in lines if l["platform_line_id"] in wanted and l["status"] != "cancelled"]
            live = [l for l in lines if l["status"] != "cancelled" and l not in hit]
            whole = not live and row["status"] != OrderStatus.CANCELLED
            if (hit or whole) and row["status"] in HANDED_OVER:
                raise IllegalTransition(f"order is '{row['status']}': refunded lines can no longer be released",
                                        current=row["status"], requested="cancelled")
            if row["status"] == OrderStatus.CANCELLED or not (hit or whole):
                return await load_order(conn, order_id), unknown
            why = reason or "refunded"
            for l in hit:
                await conn.execute(Q["order_line_set_status"], order_id, l["line_no"], "cancelled", why)
            fulfillments = await conn.fetch(Q["fulfillments_by_order"], order_id)
            if whole:
                await set_status(conn, order_id, row["status"], OrderStatus.CANCELLED, cause, reason=why,
                                 detail={"refunded_lines": sorted(l["platform_line_id"] or "" for l in hit)})
                for f in fulfillments:
                    if f["status"] in OPEN_FULFILLMENT:
                        await conn.execute(Q["fulfillment_set_status"], f["id"], FulfillmentStatus.CANCELLED)
                        if await conn.fetch(Q["reservations_set_state"], f["id"], "released"):
                            released.append((f["node_id"], f["id"], None))
            else:
                # keep what the remaining open lines need, give back the rest of those SKUs
                open_f = {f["id"]: f for f in fulfillments if f["status"] in OPEN_FULFILLMENT}
                need: dict[str, int] = {}
                for l in live:
                    if l["status"] == "open":
                        need[l["sku"]] = need.get(l["sku"], 0) + l["quantity"]
                held: dict[str, list[tuple[str, str, int]]] = {}
                for r in await conn.fetch(Q["reservations_by_order"], order_id):
                    if r["state"] == "reserved" and r["fulfillment_id"] in open_f:
                        held.setdefault(r["sku"], []).append((r["fulfillment_id"], r["node_id"], r["quantity"]))
                gave: list[dict] = []
                for sku in sorted({l["sku"] for l in hit}):
                    excess = sum(q for _, _, q in held.get(sku, [])) - need.get(sku, 0)
                    for fid, node_id, qty in sorted(held.get(sku, [])):
                        if excess <= 0:
                            break
                        n = min(qty, excess)
                        await conn.fetchval(Q["reservation_reduce"], fid, sku, n)
                        released.append((node_id, fid, [(sku, n)]))
                        gave.append({"node_id": node_id, "sku": sku, "quantity": n})
                        excess -= n
                emptied = []
                for fid in sorted({fid for _, fid, _ in released}):
                    if await conn.fetchval(Q["channel_fulfillment_open_units"], fid) == 0:
                        await conn.execute(Q["fulfillment_set_status"], fid, FulfillmentStatus.CANCELLED)
                        emptied.append(fid)
                detail = {"refunded_lines": sorted(l["platform_line_id"] or "" for l in hit), "released": gave}
                still_open = [f for f in open_f if f not in emptied]
                to = OrderStatus.BACKORDERED
                if not still_open and open_f and to in ORDER_TRANSITIONS[OrderStatus(row["status"])]:
                    # what is left of the order is only backordered lines now
                    await set_status(conn, order_id, row["status"], to, cause,
                                     reason="the lines left are backordered", detail=detail)
                else:
                    await conn.execute(Q["history_insert"], order_id, row["status"], row["status"], cause, detail)
        # PostgreSQL first (as cancel_order): should Redis fail now, it holds back, never oversells
        for node_id, fid, named in released:
            await inventory.release(node_id, fid, named)
        return await load_order(conn, order_id), unknown
