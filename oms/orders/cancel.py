"""Cancelling orders and refunded lines: PostgreSQL first, then the stock goes back in Redis."""

from __future__ import annotations

import asyncpg

from oms.infra.db import Q
from oms.ops import metrics
from oms.orders.model import HANDED_OVER, OPEN_FULFILLMENT, ORDER_TRANSITIONS, FulfillmentStatus, Order, OrderStatus
from oms.errors import IllegalTransition, NotFound
from oms.orders.read import load_order
from oms.orders.status import set_status
from oms.stock.inventory import Inventory


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
