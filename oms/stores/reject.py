"""A store rejects (part of) its share: the units leave its stock and go to the next best node."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import redis.asyncio as aioredis

from oms.errors import Conflict, InvalidInput
from oms.infra.db import Q
from oms.orders.model import (
    FulfillmentStatus,
    check_fulfillment_transition,
)
from oms.orders.rows import Reserved, columns, fulfillment_rows
from oms.stores.model import (
    OUT_OF_STOCK_REASONS,
    StoreLine,
    StoreOrder,
    utcnow,
)
from oms.stores.status import follow
from oms.stores.work import advance, locate, refuse_if_cancelled, store_view
from routing import RouteLine

if TYPE_CHECKING:
    from oms.wiring import Services

log = logging.getLogger("oms.stores")

F = FulfillmentStatus


# ---- reject and re-route -------------------------------------------------------------------
def _rejected_units(held: dict[str, int], lines: Sequence[tuple[str, int]] | None) -> dict[str, int]:
    if lines is None:
        return dict(held)
    if not lines:
        raise InvalidInput("lines: name at least one line, or leave lines out to reject all of it", field="lines")
    out: dict[str, int] = defaultdict(int)
    for i, (sku, qty) in enumerate(lines):
        if sku not in held:
            raise InvalidInput(f"lines[{i}].sku: '{sku}' is not part of this store's share of the order",
                               field=f"lines[{i}].sku")
        out[sku] += qty
        if out[sku] > held[sku]:
            raise InvalidInput(f"lines[{i}].quantity: this store holds only {held[sku]} of '{sku}' for the order",
                               field=f"lines[{i}].quantity")
    return dict(out)


async def reject(svc: Services, node_id: str, order_id: str, reason: str,
                 lines: Sequence[tuple[str, int]] | None = None) -> StoreOrder:
    """The store cannot serve (some of) its part: those units leave the node's availability and
    its reservation, and go to the next best node in this same request (or are backordered).
    Lines not named stay on this store's pick list."""
    reason = reason.strip()
    if not reason:
        raise InvalidInput("reason: say why the store cannot serve it (e.g. out_of_stock, damaged)", field="reason")
    out_of_stock = reason.lower() in OUT_OF_STOCK_REASONS
    await svc.nodes.refresh()
    new: list[Reserved] = []
    async with svc.pool.acquire() as conn:
        try:
            async with conn.transaction():
                order, f = await locate(conn, order_id, node_id)
                refuse_if_cancelled(order, f, "rejected")
                check_fulfillment_transition(f["status"], F.REJECTED)
                held = {r["sku"]: r["quantity"] for r in await conn.fetch(Q["store_fulfillment_lines"], f["id"])
                        if r["state"] == "reserved"}
                rejected = _rejected_units(held, lines)
                kept = {s: q - rejected.get(s, 0) for s, q in held.items() if q > rejected.get(s, 0)}

                # 1. this node: the units leave the reservation and on-hand (PostgreSQL now, Redis below)
                deltas: dict[str, int] = {}
                for sku in sorted(rejected):
                    before = await conn.fetchval(Q["store_stock_get_for_update"], node_id, sku) or 0
                    if await conn.fetchval(Q["reservation_reduce"], f["id"], sku, rejected[sku]) is None:
                        raise Conflict("the reservation changed at the same moment; reload and retry", field="lines")
                    await conn.execute(Q["stock_add"], node_id, sku, -rejected[sku])
                    if out_of_stock:
                        await conn.fetchval(Q["store_stock_zero_available"], node_id, sku)
                    after = await conn.fetchval(Q["store_stock_get"], node_id, sku) or 0
                    deltas[sku] = after - before
                if kept:
                    await conn.execute(Q["store_fulfillment_touch"], f["id"], reason)
                else:
                    await advance(conn, f, F.REJECTED, reason=reason)
                rejected_lines = [{"sku": s, "quantity": q} for s, q in sorted(rejected.items())]
                await conn.execute(Q["history_insert"], order_id, order["status"], order["status"], "store:rejected", {
                    "node_id": node_id, "fulfillment_id": f["id"], "reason": reason, "lines": rejected_lines,
                    "kept": [{"sku": s, "quantity": q} for s, q in sorted(kept.items())],
                    "on_hand_change": deltas,
                })

                # 2. re-route the rejected units, avoiding every node that turned this order down
                exclude = {r["node_id"] for r in await conn.fetch(Q["store_fulfillment_nodes_rejected"], order_id)}
                exclude.add(node_id)
                need = [RouteLine(s, q) for s, q in sorted(rejected.items())]
                plan_reason = "nothing to re-route"
                if need:
                    new, plan = await svc.allocator.place(
                        order["delivery_mode"], order["dest_lat"], order["dest_lng"], order["pickup_node_id"], need,
                        exclude=frozenset(exclude), promised_by=order["promised_by"],
                        approximate=order["dest_approximate"], ref=order["external_id"],
                    )
                    plan_reason = plan.reason
                if new:
                    f_rows, r_rows = fulfillment_rows(order_id, new, utcnow())
                    await conn.execute(Q["fulfillments_insert_many"], *columns(f_rows))
                    await conn.execute(Q["reservations_insert_many"], *columns(r_rows))
                served: dict[str, int] = defaultdict(int)
                for r in new:
                    for l in r.alloc.lines:
                        served[l.sku] += l.quantity
                rerouted = [StoreLine(s, min(q, served[s])) for s, q in sorted(rejected.items()) if served[s]]
                unserved = {s: q - served[s] for s, q in rejected.items() if q > served[s]}
                why = None
                if unserved:
                    why = f"rejected at {node_id} ({reason}); {plan_reason}"
                    for line in await conn.fetch(Q["order_lines_by_order"], order_id):
                        if line["sku"] in unserved and line["status"] == "open":
                            await conn.execute(Q["order_line_set_status"], order_id, line["line_no"], "backordered", why)
                await follow(conn, order_id, "store:rerouted", {
                    "from_node_id": node_id, "plan": plan_reason,
                    "rerouted_to": [{"node_id": r.alloc.node_id, "fulfillment_id": r.fulfillment_id,
                                     "lines": [{"sku": l.sku, "quantity": l.quantity} for l in r.alloc.lines]}
                                    for r in new],
                    "backordered": [{"sku": s, "quantity": q} for s, q in sorted(unserved.items())],
                }, backorder_reason=why)

                # 3. Redis on-hand for this node, while its stock rows are still locked
                for sku, delta in sorted(deltas.items()):
                    if delta:
                        await svc.inventory.adjust(node_id, sku, delta)
        except BaseException:
            for r in new:  # the new reservations were never recorded: give them back
                try:
                    await svc.inventory.release(r.alloc.node_id, r.fulfillment_id)
                except aioredis.RedisError:
                    log.exception("could not release %s at %s; rebuild-inventory will", r.fulfillment_id, r.alloc.node_id)
            raise
        # 4. committed: this node's reservation gives the rejected units back (they left on-hand above)
        try:
            await svc.inventory.release(node_id, f["id"], list(rejected.items()))
        except aioredis.RedisError:  # reserved stays high: holds back, never oversells
            log.exception("could not release %s at %s in Redis; rebuild-inventory will", f["id"], node_id)
        return await store_view(conn, order_id, f["id"], rerouted=rerouted,
                           backordered=[StoreLine(s, q) for s, q in sorted(unserved.items())])
