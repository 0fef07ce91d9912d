"""Cancelling orders, lines and fulfilments: PostgreSQL first, then the stock goes back in Redis.

What left the building stays left: a cancel of an order any part of which was handed to the
buyer (shipped, collected, delivered) is refused with 409 naming those fulfilments, unless it
names only lines or fulfilments still open — then those are cancelled (a partial cancel, as
platforms refund unshipped lines) and only their stock is released. Goods transferred to a
pickup store for an order cancelled later go into that store's stock once they are there.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import msgspec

from oms.channels import outbox
from oms.errors import IllegalTransition, NotFound
from oms.infra.db import Q
from oms.ops import metrics
from oms.orders.lines import held_units, line_states
from oms.orders.model import (
    OPEN_FULFILLMENT,
    FulfillmentStatus,
    Order,
    OrderStatus,
    handed_to_buyer,
)
from oms.orders.read import load_order
from oms.orders.status import set_status
from oms.stock.inventory import Inventory
from oms.stores.status import follow

F = FulfillmentStatus
#: a partial cancel takes units from the parts least far along first
_RANK = {F.HELD: 0, F.ALLOCATED: 0, F.PICKED: 1, F.READY_FOR_PICKUP: 2}


class _Released(msgspec.Struct, frozen=True):
    """Stock to give back in Redis once PostgreSQL committed."""

    node_id: str
    fulfillment_id: str
    lines: list[tuple[str, int]] | None = None  # None: the whole reservation


class _Returned(msgspec.Struct, frozen=True):
    node_id: str
    sku: str
    quantity: int


async def cancel_order(pool: asyncpg.Pool, inventory: Inventory, order_id: str, cause: str,
                       reason: str | None = None, *, lines: Sequence[int] | None = None,
                       fulfillments: Sequence[str] | None = None,
                       only_if: frozenset[str] | None = None) -> Order:
    """Cancel an order (or, naming `lines` by line number or `fulfillments` by id, only those
    parts) and release their stock. Cancelling twice changes nothing; a part handed over: 409.
    `only_if`: cancel only an order in one of these statuses (a timer's condition, checked under
    the row lock), else leave it as it is."""
    if lines or fulfillments:
        return await _cancel_parts(pool, inventory, order_id, cause, reason, lines or [], fulfillments or [])
    released: list[_Released] = []
    returned: list[_Returned] = []
    async with pool.acquire() as conn:
        async with conn.transaction():
            row = await _lock(conn, order_id)
            if row["status"] != OrderStatus.CANCELLED and (only_if is None or row["status"] in only_if):
                fs = await conn.fetch(Q["fulfillments_by_order"], order_id)
                _refuse_handed_over(row, [f for f in fs if handed_to_buyer(f["status"], f["role"])])
                why = reason or "cancelled"
                await set_status(conn, order_id, row["status"], OrderStatus.CANCELLED, cause, reason=why)
                # a cancel we decided reaches the platform (or ops) with the cancel, or not at all
                await outbox.cancelled(conn, row, cause, why)
                await conn.execute(Q["order_lines_cancel_all"], order_id, why)
                metrics.order_cancelled(row["channel"])
                for f in fs:
                    if f["status"] in OPEN_FULFILLMENT:
                        await conn.execute(Q["fulfillment_set_status"], f["id"], F.CANCELLED)
                        if await conn.fetch(Q["reservations_set_state"], f["id"], "released"):
                            released.append(_Released(f["node_id"], f["id"]))
                    elif f["role"] == "transfer" and f["status"] == F.RECEIVED:
                        returned += await return_transfer(conn, row, f)
        await _give_back(inventory, released, returned)
        return await load_order(conn, order_id)


async def cancel_lines(pool: asyncpg.Pool, inventory: Inventory, order_id: str, platform_line_ids: list[str],
                       cause: str, reason: str | None = None) -> tuple[Order, list[str]]:
    """Cancel the lines a channel refunded (named by the platform's line ids) and give back the
    units reserved for them; once every line is cancelled and nothing was handed over, the whole
    order is cancelled. Returns (order, ids that matched no line). Idempotent. A refunded line
    whose goods were handed over: 409 (a return is another flow)."""
    wanted = set(platform_line_ids)
    lines = await pool.fetch(Q["order_lines_by_order"], order_id)
    if not lines and not await pool.fetchval(Q["order_exists"], order_id):
        raise NotFound(f"no order with id '{order_id}'", field="id")
    unknown = sorted(wanted - {l["platform_line_id"] for l in lines})
    numbers = [l["line_no"] for l in lines if l["platform_line_id"] in wanted]
    if not numbers:
        async with pool.acquire() as conn:
            return await load_order(conn, order_id), unknown
    order = await _cancel_parts(pool, inventory, order_id, cause, reason or "refunded", numbers, [])
    return order, unknown


async def _cancel_parts(pool: asyncpg.Pool, inventory: Inventory, order_id: str, cause: str,
                        reason: str | None, line_nos: Sequence[int], fulfillment_ids: Sequence[str]) -> Order:
    why = reason or "cancelled"
    released: list[_Released] = []
    async with pool.acquire() as conn:
        async with conn.transaction():
            row = await _lock(conn, order_id)
            lines = await conn.fetch(Q["order_lines_by_order"], order_id)
            fs = await conn.fetch(Q["fulfillments_by_order"], order_id)
            by_no = {l["line_no"]: l for l in lines}
            by_id = {f["id"]: f for f in fs}
            for i, n in enumerate(line_nos):
                if n not in by_no:
                    raise NotFound(f"lines[{i}]: order '{order_id}' has no line {n}", field=f"lines[{i}]")
            for i, fid in enumerate(fulfillment_ids):
                if fid not in by_id:
                    raise NotFound(f"fulfillments[{i}]: order '{order_id}' has no fulfilment '{fid}'",
                                   field=f"fulfillments[{i}]")
            if row["status"] == OrderStatus.CANCELLED:
                return await load_order(conn, order_id)
            reservations = await conn.fetch(Q["reservations_by_order"], order_id)
            plan = _plan_parts(row, lines, fs, reservations, line_nos, fulfillment_ids)
            if not plan.units and not plan.fulfillments:
                return await load_order(conn, order_id)  # named parts already cancelled
            for fid, sku, n in plan.take:
                if await conn.fetchval(Q["reservation_reduce"], fid, sku, n) is not None:
                    released.append(_Released(by_id[fid]["node_id"], fid, [(sku, n)]))
            for line_no, n in plan.units:
                await conn.execute(Q["order_line_cancel_units"], order_id, line_no, n, why)
            emptied = sorted({fid for fid, _, _ in plan.take} | set(plan.fulfillments))
            for fid in emptied:
                if by_id[fid]["status"] in OPEN_FULFILLMENT and not await conn.fetchval(
                        Q["channel_fulfillment_open_units"], fid):
                    await conn.execute(Q["fulfillment_set_status"], fid, F.CANCELLED)
            detail = {"cancelled_lines": [{"line_no": n, "quantity": q} for n, q in plan.units],
                      "cancelled_fulfillments": sorted(plan.fulfillments),
                      "released": [{"node_id": r.node_id, "sku": s, "quantity": q}
                                   for r in released for s, q in (r.lines or [])],
                      "reason": why}
            status = await follow(conn, order_id, cause, detail)
            if status is OrderStatus.CANCELLED:  # nothing was left: the whole order went
                await conn.execute(Q["store_order_set_reason"], order_id, why)
                metrics.order_cancelled(row["channel"])
        await _give_back(inventory, released, [])
        return await load_order(conn, order_id)


class _PartsPlan(msgspec.Struct):
    units: list[tuple[int, int]]  # (line_no, units cancelled)
    take: list[tuple[str, str, int]]  # (fulfilment id, sku, units released)
    fulfillments: list[str]  # named fulfilments cancelled whole


def _plan_parts(row, lines, fs, reservations, line_nos: Sequence[int], fulfillment_ids: Sequence[str]) -> _PartsPlan:
    """Which units a partial cancel takes from where; 409 naming the fulfilments when a named part
    was handed to the buyer (or is on its way to the pickup store)."""
    by_id = {f["id"]: f for f in fs}
    states = {st.line_no: st for st in line_states(lines, held_units(reservations))}
    reserved: dict[str, dict[str, int]] = {}  # fulfilment -> sku -> units still reserved
    for r in reservations:
        if r["state"] == "reserved" and by_id[r["fulfillment_id"]]["status"] in OPEN_FULFILLMENT:
            reserved.setdefault(r["fulfillment_id"], {})[r["sku"]] = r["quantity"]
    handed = [f for f in fs if f["id"] in fulfillment_ids and handed_to_buyer(f["status"], f["role"])]
    moving = [f for f in fs if f["id"] in fulfillment_ids and f["role"] == "transfer"
              and f["status"] in (F.SHIPPED, F.RECEIVED)]
    _refuse_handed_over(row, handed + moving)

    # units per SKU to cancel: whole named lines, and what the named fulfilments hold
    cut: dict[int, int] = {}
    take: list[tuple[str, str, int]] = []
    named_f = [fid for fid in dict.fromkeys(fulfillment_ids) if by_id[fid]["status"] in OPEN_FULFILLMENT]
    for fid in named_f:
        for sku, n in sorted(reserved.pop(fid, {}).items()):
            take.append((fid, sku, n))
            # the units leave the lines of that SKU, last lines first
            for no in sorted((l["line_no"] for l in lines if l["sku"] == sku), reverse=True):
                st = states[no]
                c = min(n, st.live - cut.get(no, 0))
                if c > 0:
                    cut[no] = cut.get(no, 0) + c
                    n -= c
    wanted: dict[str, int] = {}
    for no in dict.fromkeys(line_nos):
        st = states[no]
        c = st.live - cut.get(no, 0)
        if c > 0:
            cut[no] = cut.get(no, 0) + c
            wanted[st.sku] = wanted.get(st.sku, 0) + c
    for sku, n in wanted.items():
        # waiting units first (nothing to release), then reserved ones, least advanced first
        n -= sum(st.waiting for st in states.values() if st.sku == sku)
        for fid in sorted(reserved, key=lambda f: (_RANK[F(by_id[f]["status"])], f)):
            if n <= 0:
                break
            c = min(n, reserved[fid].get(sku, 0))
            if c > 0:
                take.append((fid, sku, c))
                reserved[fid][sku] -= c
                n -= c
        if n > 0:  # the rest of those units left with the buyer (or are on their way)
            out = [f for f in fs if f["id"] in {r["fulfillment_id"] for r in reservations
                                                 if r["sku"] == sku and r["state"] == "committed"}]
            _refuse_handed_over(row, out, sku=sku)
    return _PartsPlan(units=sorted(cut.items()), take=take, fulfillments=named_f)


def _refuse_handed_over(row, handed: Sequence, sku: str | None = None) -> None:
    if not handed:
        return
    names = ", ".join(f"{f['id']} ({f['status']} at {f['node_id']})" for f in handed)
    what = f"units of '{sku}' named here were" if sku else "parts of this order were"
    raise IllegalTransition(
        f"{what} handed over: {names}; a cancel may name only lines or fulfilments still open",
        current=str(row["status"]), requested="cancelled",
        handed_over=[{"fulfillment_id": f["id"], "node_id": f["node_id"], "status": f["status"]} for f in handed],
    )


async def _lock(conn: asyncpg.Connection, order_id: str) -> asyncpg.Record:
    row = await conn.fetchrow(Q["order_by_id_for_update"], order_id)
    if row is None:
        raise NotFound(f"no order with id '{order_id}'", field="id")
    return row


async def return_transfer(conn: asyncpg.Connection, order: asyncpg.Record, f: asyncpg.Record) -> list[_Returned]:
    """A cancelled order's transferred goods are at the pickup store: they join its stock."""
    await conn.execute(Q["fulfillment_set_status"], f["id"], F.RETURNED)
    out = []
    for r in sorted(await conn.fetch(Q["store_fulfillment_lines"], f["id"]), key=lambda r: r["sku"]):
        if r["state"] == "committed":
            await conn.fetchval(Q["store_stock_receive"], order["pickup_node_id"], r["sku"], r["quantity"])
            out.append(_Returned(order["pickup_node_id"], r["sku"], r["quantity"]))
    await conn.execute(Q["history_insert"], order["id"], order["status"], order["status"], "transfer:returned", {
        "fulfillment_id": f["id"], "from_node_id": f["node_id"], "to_node_id": order["pickup_node_id"],
        "lines": [{"sku": r.sku, "quantity": r.quantity} for r in out]})
    return out


async def _give_back(inventory: Inventory, released: list[_Released], returned: list[_Returned]) -> None:
    # PostgreSQL first: should Redis fail now, it holds too much back (never oversells) until the
    # next rebuild
    for r in released:
        await inventory.release(r.node_id, r.fulfillment_id, r.lines)
    for r in returned:
        await inventory.adjust(r.node_id, r.sku, r.quantity)


async def give_back_returned(inventory: Inventory, returned: list[_Returned]) -> None:
    await _give_back(inventory, [], returned)
