"""Store operations: tokens, the pick list, picked / rejected (with re-routing), hand-over
(shipped, pickup codes), expiry of uncollected pickups, and the one-hour clock.

Every change here runs in one PostgreSQL transaction that starts by locking the order row
(`order_by_id_for_update`), so two staff confirming the same order at once are serialized:
the first wins and the second sees the new status, which the transition table refuses (409).
Fulfilment statuses go through `check_fulfillment_transition`; the order's status then follows
its fulfilments (`order_status_from`) through `oms.orders.set_status`, which writes the history.

Redis is brought in step the way the core does it: reservations are released / committed only
after PostgreSQL has committed (should Redis fail in between, it holds back too much, never too
little); on-hand changes are applied as deltas while the stock row is locked.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import asyncpg
import msgspec
import redis.asyncio as aioredis

from oms import placement
from oms.db import Q
from oms.domain import (
    ORDER_TRANSITIONS,
    FulfillmentStatus,
    OrderStatus,
    check_fulfillment_transition,
    check_transition,
)
from oms.errors import Conflict, IllegalTransition, InvalidInput, NotFound, TooManyRequests, Unavailable
from oms.ids import new_id
from oms.intake import Reserved, _fulfillment_rows
from oms.orders import cancel_order, minutes_left, set_status

if TYPE_CHECKING:
    from oms.services import Services

log = logging.getLogger("oms.stores")

F = FulfillmentStatus
S = OrderStatus

TOKEN_PREFIX = "oms_store_"
PICKUP_CODE_DIGITS = 6
PICKUP_CODE_RE = re.compile(r"[0-9]{6,12}")
#: a code given out at a store is not given out again there for this long (open or used)
PICKUP_CODE_QUARANTINE = timedelta(days=30)
#: wrong pickup codes tolerated per store and window before answering 429
WRONG_CODE_LIMIT = 10
WRONG_CODE_WINDOW_S = 600
#: picking time per order when a node states no capacity_per_hour
DEFAULT_PICK_MINUTES = 5.0
#: pick-list polls run the pickup expiry at most this often per store
EXPIRY_CHECK_EVERY_S = 60
#: reject reasons meaning "the shelf is empty": the SKU's availability at the node goes to zero
OUT_OF_STOCK_REASONS = frozenset({"out_of_stock", "out-of-stock", "out of stock", "缺货", "无货"})


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# ---- shapes --------------------------------------------------------------------------------
class StoreLine(msgspec.Struct, frozen=True):
    sku: str
    quantity: int


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
    #: time left < picking estimate + courier minutes (or, once picked, < courier minutes)
    at_risk: bool = False
    picked_at: datetime | None = None
    #: ready pickups: when an uncollected one is cancelled and its stock returned
    expires_at: datetime | None = None
    #: "serve" (for the buyer) or "transfer" (send to the pickup store `transfer_to`, then mark shipped)
    role: str = "serve"
    transfer_to: str | None = None


class IncomingTransfer(msgspec.Struct, kw_only=True):
    """Goods another node sends to this pickup store for one order."""

    fulfillment_id: str
    order_id: str
    channel: str
    external_id: str
    from_node_id: str
    status: str  # allocated / picked at the source, shipped = on its way or arrived
    lines: list[StoreLine]
    shipped_at: datetime | None = None


class SkuWork(msgspec.Struct, kw_only=True):
    sku: str
    quantity: int
    orders: list[str]


class PickList(msgspec.Struct, kw_only=True):
    node_id: str
    as_of: datetime
    #: allocated here, not yet picked: most urgent first
    items: list[PickEntry]
    #: the same work by SKU, so staff walk the shelves once
    by_sku: list[SkuWork]
    #: picked and waiting for the courier, or ready and waiting for the buyer
    awaiting_handover: list[PickEntry]
    #: pickup orders whose goods other nodes transfer here; once all are shipped, mark the order picked
    incoming: list[IncomingTransfer] = []
    at_risk: int = 0


# ---- tokens --------------------------------------------------------------------------------
def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def issue_token(pool: asyncpg.Pool, node_id: str, label: str = "") -> IssuedToken:
    """A new bearer token for one node; only its hash is stored, so this is the one time it is shown."""
    if await pool.fetchrow(Q["node_get"], node_id) is None:
        raise NotFound(f"no node with id '{node_id}'", field="node_id")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = await pool.fetchrow(Q["store_token_insert"], new_id("tok"), node_id, hash_token(token), label)
    return IssuedToken(token=token, id=row["id"], node_id=row["node_id"], label=row["label"],
                       created_at=row["created_at"])


async def list_tokens(pool: asyncpg.Pool, node_id: str) -> list[TokenInfo]:
    return [TokenInfo(**dict(r)) for r in await pool.fetch(Q["store_tokens_by_node"], node_id)]


async def revoke_token(pool: asyncpg.Pool, node_id: str, token_id: str) -> TokenInfo:
    row = await pool.fetchrow(Q["store_token_revoke"], node_id, token_id)
    if row is None:
        raise NotFound(f"node '{node_id}' has no token '{token_id}'", field="token_id")
    return TokenInfo(**dict(row))


async def token_owner(pool: asyncpg.Pool, token: str) -> str | None:
    """The node a live token acts for, or None (unknown or revoked)."""
    return await pool.fetchval(Q["store_token_owner"], hash_token(token))


# ---- the order follows its fulfilments ----------------------------------------------------
def order_status_from(mode: str, fulfillments: Sequence[tuple[str, str]]) -> OrderStatus:
    """The order status its fulfilments' (status, role) imply; rejected and cancelled ones no longer count.

    A pickup order is ready once the pickup store's part is ready and every transfer to it has
    arrived (shipped from its source), and collected once the buyer took it there."""
    act = [(F(s), r) for s, r in fulfillments if s not in (F.REJECTED, F.CANCELLED)]
    if not act:
        return S.BACKORDERED
    if mode == "pickup":
        serve = [s for s, r in act if r != "transfer"]
        arrived = all(s is F.SHIPPED for s, r in act if r == "transfer")
        if serve and arrived and all(s is F.COLLECTED for s in serve):
            return S.COLLECTED
        if serve and arrived and all(s in (F.READY_FOR_PICKUP, F.COLLECTED) for s in serve):
            return S.READY_FOR_PICKUP
        return S.ALLOCATED if all(s is F.ALLOCATED for s, _ in act) else S.PICKING
    active = [s for s, _ in act]
    done = {F.SHIPPED, F.COLLECTED}
    if all(s in done for s in active):
        return S.COLLECTED if F.COLLECTED in active else S.SHIPPED
    if all(s in done | {F.PICKED, F.READY_FOR_PICKUP} for s in active):
        return S.READY_FOR_PICKUP if mode == "pickup" else S.PICKED
    if any(s is not F.ALLOCATED for s in active):
        return S.PICKING
    return S.ALLOCATED


_VIA = (S.PICKED, S.READY_FOR_PICKUP, S.PICKING, S.ALLOCATED)


def status_path(current: str, target: str) -> list[OrderStatus]:
    """Steps from current to target allowed by the transition table (at most one in between,
    e.g. picking -> picked -> shipped when the last fulfilment ships without a separate pick)."""
    cur, tgt = S(current), S(target)
    if tgt in ORDER_TRANSITIONS[cur]:
        return [tgt]
    for via in _VIA:
        if via in ORDER_TRANSITIONS[cur] and tgt in ORDER_TRANSITIONS[via]:
            return [via, tgt]
    check_transition(cur, tgt)  # raises IllegalTransition naming the current status
    return [tgt]


async def _follow(conn: asyncpg.Connection, order_id: str, cause: str, detail: dict,
                  *, backorder_reason: str | None = None) -> OrderStatus:
    """Move the order (row locked by the caller) to what its fulfilments imply; always records the step."""
    row = await conn.fetchrow(Q["order_by_id"], order_id)
    fs = await conn.fetch(Q["fulfillments_by_order"], order_id)
    current = S(row["status"])
    target = order_status_from(row["delivery_mode"], [(f["status"], f["role"]) for f in fs])
    reason = None
    if backorder_reason:
        reason = backorder_reason if target is S.BACKORDERED else f"partly backordered: {backorder_reason}"
    if target is current:
        if reason:
            await conn.execute(Q["store_order_set_reason"], order_id, reason)
        await conn.execute(Q["history_insert"], order_id, str(current), str(current), cause, detail)
        return current
    prev = current
    for step in status_path(current, target):
        await set_status(conn, order_id, str(prev), step, cause,
                         reason=reason if step is target else None, detail=detail)
        prev = step
    return target


# ---- finding a store's part of an order ---------------------------------------------------
async def _locate(conn: asyncpg.Connection, order_id: str, node_id: str, *, pickup_store: bool = False
                  ) -> tuple[asyncpg.Record, asyncpg.Record | None]:
    """Lock the order and this node's fulfilment of it (an open one first). Another store's
    order reads exactly like an unknown one: a store learns nothing about others' work.
    With `pickup_store`, the store a pickup order names may have no fulfilment yet (all its
    goods come by transfer): then the fulfilment is None."""
    order = await conn.fetchrow(Q["order_by_id_for_update"], order_id)
    fs = await conn.fetch(Q["store_fulfillments_at_node_for_update"], order_id, node_id) if order else []
    if fs:
        return order, fs[0]
    if pickup_store and order and order["delivery_mode"] == "pickup" and order["pickup_node_id"] == node_id:
        return order, None
    raise NotFound(f"store '{node_id}' has no order '{order_id}'", field="order_id")


def _refuse_if_cancelled(order: asyncpg.Record, f: asyncpg.Record | None, requested: str) -> None:
    if order["status"] == S.CANCELLED or (f is not None and f["status"] == F.CANCELLED):
        why = order["reason"] or "no reason given"
        raise IllegalTransition(
            f"order '{order['id']}' was cancelled ({why}); it cannot become '{requested}' — put the goods back",
            current="cancelled", requested=requested,
        )


async def _advance(conn: asyncpg.Connection, f: asyncpg.Record, new: FulfillmentStatus,
                   *, code: str | None = None, reason: str | None = None) -> None:
    check_fulfillment_transition(f["status"], new)
    changed = await conn.fetchval(Q["store_fulfillment_advance"], f["id"], f["status"], str(new), code, reason)
    if changed is None:  # the row lock makes this unreachable; kept as the last line of defence
        raise Conflict("this fulfilment changed at the same moment; reload and retry", current=f["status"])


async def _view(conn: asyncpg.Connection, order_id: str, fulfillment_id: str, **extra) -> StoreOrder:
    order = await conn.fetchrow(Q["order_by_id"], order_id)
    f = await conn.fetchrow(Q["store_fulfillment_by_id"], fulfillment_id)
    lines = [StoreLine(r["sku"], r["quantity"]) for r in await conn.fetch(Q["store_fulfillment_lines"], fulfillment_id)]
    if order["delivery_mode"] == "pickup" and f["role"] != "transfer" and "transferred_in" not in extra:
        moved = {x["id"] for x in await conn.fetch(Q["fulfillments_by_order"], order_id)
                 if x["role"] == "transfer" and x["status"] not in (F.REJECTED, F.CANCELLED)}
        extra["transferred_in"] = sorted(
            (StoreLine(r["sku"], r["quantity"]) for r in await conn.fetch(Q["reservations_by_order"], order_id)
             if r["fulfillment_id"] in moved and r["state"] != "released"), key=lambda l: l.sku)
    return StoreOrder(
        order_id=order_id, order_status=order["status"], fulfillment_id=fulfillment_id, node_id=f["node_id"],
        status=f["status"], delivery_mode=order["delivery_mode"], lines=lines,
        promised_by=order["promised_by"], minutes_left=minutes_left(order["promised_by"], order["status"]),
        pickup_code_issued=f["pickup_code"] is not None, reason=f["reason"], **extra,
    )


# ---- picked ------------------------------------------------------------------------------
async def _issue_code(conn: asyncpg.Connection, f: asyncpg.Record, node_id: str) -> str:
    """Mark a pickup ready with a random code unique among the store's open pickups (the unique
    index decides a race) and not handed out there lately."""
    for _ in range(50):
        code = f"{secrets.randbelow(10 ** PICKUP_CODE_DIGITS):0{PICKUP_CODE_DIGITS}d}"
        if await conn.fetchval(Q["store_pickup_code_recent"], node_id, code, PICKUP_CODE_QUARANTINE):
            continue
        try:
            async with conn.transaction():  # a savepoint: a clash retries with another code
                await _advance(conn, f, F.READY_FOR_PICKUP, code=code)
            return code
        except asyncpg.UniqueViolationError:
            continue
    raise Unavailable("no free pickup code found at this store; retry")


async def _live_transfers(conn: asyncpg.Connection, order_id: str) -> list[asyncpg.Record]:
    return [x for x in await conn.fetch(Q["fulfillments_by_order"], order_id)
            if x["role"] == "transfer" and x["status"] not in (F.REJECTED, F.CANCELLED)]


async def _ready_for_transfers(conn: asyncpg.Connection, order: asyncpg.Record, f: asyncpg.Record | None,
                               node_id: str) -> asyncpg.Record:
    """A pickup is ready only when the goods transferred in from other nodes have arrived; when
    all of them come that way, the pickup store gets its own (stock-less) fulfilment to hand over."""
    transfers = await _live_transfers(conn, order["id"])
    waiting = sorted({x["node_id"] for x in transfers if x["status"] != F.SHIPPED})
    if waiting:
        raise IllegalTransition(
            f"order '{order['id']}' is waiting for goods transferred from {', '.join(waiting)}; "
            "mark it ready when they arrive", current=str(order["status"]), requested="ready_for_pickup")
    if f is not None:
        return f
    if not transfers:
        raise NotFound(f"store '{node_id}' has no order '{order['id']}'", field="order_id")
    fid = new_id("f")
    await conn.execute(Q["fulfillments_insert_many"], [fid], [order["id"]], [node_id], [str(F.ALLOCATED)],
                       ["serve"], [0.0], [None])
    return await conn.fetchrow(Q["store_fulfillment_by_id_for_update"], fid)


async def mark_picked(svc: Services, node_id: str, order_id: str) -> StoreOrder:
    """Delivery / ship: ready for the courier. Pickup: ready for the buyer, with a code (sent to
    the buyer through the channel; the store never sees it, it checks the one the buyer shows)."""
    async with svc.pool.acquire() as conn:
        async with conn.transaction():
            order, f = await _locate(conn, order_id, node_id, pickup_store=True)
            _refuse_if_cancelled(order, f, "picked")
            pickup = order["delivery_mode"] == "pickup" and (f is None or f["role"] != "transfer")
            new = F.READY_FOR_PICKUP if pickup else F.PICKED
            if pickup and f is not None and f["status"] == F.REJECTED and await _live_transfers(conn, order_id):
                f = None  # the store turned its own stock down; the goods come by transfer instead
            if f is not None:
                check_fulfillment_transition(f["status"], new)
            if pickup:
                f = await _ready_for_transfers(conn, order, f, node_id)
                await _issue_code(conn, f, node_id)
            else:
                await _advance(conn, f, new)
            await _follow(conn, order_id, "store:picked",
                          {"node_id": node_id, "fulfillment_id": f["id"], "fulfillment_status": str(new)})
        return await _view(conn, order_id, f["id"])


# ---- hand-over ---------------------------------------------------------------------------
async def _hand_over(conn: asyncpg.Connection, order_id: str, node_id: str, f: asyncpg.Record,
                     new: FulfillmentStatus, cause: str) -> list[StoreLine]:
    """Fulfilment shipped/collected, its reservation committed, on-hand down (all in the caller's transaction)."""
    await _advance(conn, f, new)
    committed = sorted(await conn.fetch(Q["reservations_set_state"], f["id"], "committed"), key=lambda r: r["sku"])
    for r in committed:  # SKU order: concurrent hand-overs lock stock rows in the same order
        await conn.execute(Q["stock_add"], node_id, r["sku"], -r["quantity"])
    lines = [StoreLine(r["sku"], r["quantity"]) for r in committed]
    await _follow(conn, order_id, cause, {
        "node_id": node_id, "fulfillment_id": f["id"], "fulfillment_status": str(new),
        "committed": [msgspec.to_builtins(l) for l in lines],
    })
    return lines


async def _commit_in_redis(svc: Services, node_id: str, fulfillment_id: str) -> None:
    try:
        await svc.inventory.commit(node_id, fulfillment_id)
    except aioredis.RedisError:  # on-hand and reserved both stay high: availability is unchanged
        log.exception("could not commit %s at %s in Redis; rebuild-inventory will", fulfillment_id, node_id)


async def mark_shipped(svc: Services, node_id: str, order_id: str) -> StoreOrder:
    async with svc.pool.acquire() as conn:
        async with conn.transaction():
            order, f = await _locate(conn, order_id, node_id)
            _refuse_if_cancelled(order, f, "shipped")
            if order["delivery_mode"] == "pickup" and f["role"] == "serve":
                raise IllegalTransition(
                    f"a pickup order is handed over with its pickup code: POST /stores/{node_id}/pickups/{{code}}",
                    current=f["status"], requested="shipped",
                )
            check_fulfillment_transition(f["status"], F.SHIPPED)
            await _hand_over(conn, order_id, node_id, f, F.SHIPPED, "store:shipped")
        await _commit_in_redis(svc, node_id, f["id"])
        return await _view(conn, order_id, f["id"])


def _wrong_code_key(node_id: str) -> str:
    return f"pickup:wrong:{{{node_id}}}"


async def collect_pickup(svc: Services, node_id: str, code: str) -> StoreOrder:
    """The buyer shows the code: wrong 404 (counted; too many at one store 429), used 409."""
    if not PICKUP_CODE_RE.fullmatch(code):
        raise InvalidInput("code: a pickup code is 6 to 12 digits", field="code")
    key = _wrong_code_key(node_id)
    wrong = int(await svc.redis.get(key) or 0)
    if wrong >= WRONG_CODE_LIMIT:
        ttl = max(int(await svc.redis.ttl(key)), 1)
        raise TooManyRequests(f"too many wrong pickup codes at this store; try again in {ttl} s",
                              field="code", retry_after=ttl)
    async with svc.pool.acquire() as conn:
        hit = await conn.fetchrow(Q["store_pickup_by_code"], node_id, code)
        if hit is None:
            async with svc.redis.pipeline(transaction=True) as pipe:
                pipe.set(key, 0, ex=WRONG_CODE_WINDOW_S, nx=True)
                pipe.incr(key)
                await pipe.execute()
            raise NotFound("no pickup with this code at this store", field="code")
        async with conn.transaction():
            order = await conn.fetchrow(Q["order_by_id_for_update"], hit["order_id"])
            f = await conn.fetchrow(Q["store_fulfillment_by_id_for_update"], hit["id"])
            if f["status"] == F.COLLECTED:
                raise Conflict(f"this code was already used: order '{order['id']}' was collected at "
                               f"{f['handed_over_at'].isoformat()}", field="code", current="collected")
            _refuse_if_cancelled(order, f, "collected")
            check_fulfillment_transition(f["status"], F.COLLECTED)
            await _hand_over(conn, order["id"], node_id, f, F.COLLECTED, "store:collected")
        await _commit_in_redis(svc, node_id, f["id"])
        return await _view(conn, order["id"], f["id"])


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
    await svc.intake.nodes.refresh()
    new: list[Reserved] = []
    async with svc.pool.acquire() as conn:
        try:
            async with conn.transaction():
                order, f = await _locate(conn, order_id, node_id)
                _refuse_if_cancelled(order, f, "rejected")
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
                    await _advance(conn, f, F.REJECTED, reason=reason)
                rejected_lines = [{"sku": s, "quantity": q} for s, q in sorted(rejected.items())]
                await conn.execute(Q["history_insert"], order_id, order["status"], order["status"], "store:rejected", {
                    "node_id": node_id, "fulfillment_id": f["id"], "reason": reason, "lines": rejected_lines,
                    "kept": [{"sku": s, "quantity": q} for s, q in sorted(kept.items())],
                    "on_hand_change": deltas,
                })

                # 2. re-route the rejected units, avoiding every node that turned this order down
                exclude = {r["node_id"] for r in await conn.fetch(Q["store_fulfillment_nodes_rejected"], order_id)}
                exclude.add(node_id)
                need = [placement.PlanLine(s, q) for s, q in sorted(rejected.items())]
                plan_reason = "nothing to re-route"
                if need:
                    new, plan = await svc.intake.place(
                        order["delivery_mode"], order["dest_lat"], order["dest_lng"], order["pickup_node_id"], need,
                        exclude=frozenset(exclude), minutes_left=minutes_left(order["promised_by"], order["status"]),
                        approximate=order["dest_approximate"], ref=order["external_id"],
                    )
                    plan_reason = plan.reason
                if new:
                    f_rows, r_rows = _fulfillment_rows(order_id, new, utcnow())
                    await conn.execute(Q["fulfillments_insert_many"], *[list(c) for c in zip(*f_rows)])
                    await conn.execute(Q["reservations_insert_many"], *[list(c) for c in zip(*r_rows)])
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
                await _follow(conn, order_id, "store:rerouted", {
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
        return await _view(conn, order_id, f["id"], rerouted=rerouted,
                           backordered=[StoreLine(s, q) for s, q in sorted(unserved.items())])


# ---- uncollected pickups -------------------------------------------------------------------
async def expire_uncollected_pickups(svc: Services, *, now: datetime | None = None, node_id: str | None = None,
                                     limit: int = 200) -> list[str]:
    """Cancel pickup orders ready for longer than Settings.pickup_expiry_hours, returning their
    stock; returns the cancelled order ids. Safe to run anywhere, any number of times at once."""
    now = now or utcnow()
    hours = svc.settings.pickup_expiry_hours
    rows = await svc.pool.fetch(Q["store_pickups_expired"], now - timedelta(hours=hours), node_id, limit)
    cancelled = []
    for r in rows:
        try:
            await cancel_order(svc.pool, svc.inventory, r["order_id"], "store:pickup-expired",
                               reason=f"not collected within {hours} hours")
        except IllegalTransition:  # collected in the meantime
            continue
        cancelled.append(r["order_id"])
    if cancelled:
        log.info("expired %d uncollected pickup(s)%s", len(cancelled), f" at {node_id}" if node_id else "")
    return cancelled


async def expire_pickups_now_and_then(svc: Services, node_id: str) -> None:
    """Run the expiry for one store at most once a minute (called from its pick-list polls)."""
    try:
        if await svc.redis.set(f"pickup:expiry-check:{{{node_id}}}", 1, nx=True, ex=EXPIRY_CHECK_EVERY_S):
            await expire_uncollected_pickups(svc, node_id=node_id)
    except Exception:  # noqa: BLE001 - the pick list must answer regardless
        log.exception("pickup expiry at %s failed; the next poll retries", node_id)


# ---- the pick list ---------------------------------------------------------------------------
async def pick_list_etag(svc: Services, node_id: str, now: datetime | None = None) -> str:
    """Changes when the store's open work changes, and each minute (minutes left move on)."""
    now = now or utcnow()
    r = await svc.pool.fetchrow(Q["store_picklist_fingerprint"], node_id)
    raw = "|".join(str(x) for x in (r["n"], r["digest"], r["incoming"], r["node_version"], int(now.timestamp() // 60),
                                    svc.settings.courier_minutes, svc.settings.pickup_expiry_hours))
    return f'W/"{hashlib.sha256(raw.encode()).hexdigest()[:24]}"'


async def pick_list(svc: Services, node_id: str, now: datetime | None = None) -> PickList:
    now = now or utcnow()
    node = await svc.pool.fetchrow(Q["node_get"], node_id)
    capacity = node["capacity_per_hour"] if node else 0
    per_order = 60.0 / capacity if capacity > 0 else DEFAULT_PICK_MINUTES
    courier = svc.settings.courier_minutes
    expiry = timedelta(hours=svc.settings.pickup_expiry_hours)
    items: list[PickEntry] = []
    handover: list[PickEntry] = []
    by_sku: dict[str, SkuWork] = {}
    for r in await svc.pool.fetch(Q["store_picklist"], node_id):
        left = minutes_left(r["promised_by"], "allocated", now)
        lines = [StoreLine(l["sku"], l["quantity"]) for l in r["lines"]]
        entry = dict(
            fulfillment_id=r["id"], order_id=r["order_id"], channel=r["channel"], external_id=r["external_id"],
            delivery_mode=r["delivery_mode"], status=r["status"], lines=lines, allocated_at=r["created_at"],
            paid_at=r["paid_at"], promised_by=r["promised_by"], minutes_left=left, picked_at=r["picked_at"],
            role=r["role"], transfer_to=r["pickup_node_id"] if r["role"] == "transfer" else None,
        )
        if r["status"] == F.ALLOCATED:
            pick = round((len(items) + 1) * per_order, 1)
            items.append(PickEntry(**entry, pick_minutes=pick, at_risk=left is not None and left < pick + courier))
            for l in lines:
                w = by_sku.setdefault(l.sku, SkuWork(sku=l.sku, quantity=0, orders=[]))
                w.quantity += l.quantity
                w.orders.append(r["order_id"])
        else:
            handover.append(PickEntry(
                **entry, pick_minutes=0.0,
                at_risk=r["status"] == F.PICKED and left is not None and left < courier,
                expires_at=r["picked_at"] + expiry if r["status"] == F.READY_FOR_PICKUP and r["picked_at"] else None,
            ))
    incoming = [
        IncomingTransfer(fulfillment_id=r["id"], order_id=r["order_id"], channel=r["channel"],
                         external_id=r["external_id"], from_node_id=r["from_node_id"], status=r["status"],
                         lines=[StoreLine(l["sku"], l["quantity"]) for l in r["lines"]], shipped_at=r["handed_over_at"])
        for r in await svc.pool.fetch(Q["store_incoming_transfers"], node_id)
    ]
    return PickList(node_id=node_id, as_of=now, items=items, by_sku=[by_sku[s] for s in sorted(by_sku)],
                    awaiting_handover=handover, incoming=incoming, at_risk=sum(e.at_risk for e in items + handover))
