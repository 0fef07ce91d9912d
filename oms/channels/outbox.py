"""Writing to the outbox, its dead letters, and the figures /ops shows about it.

Stock changes need no call here: the triggers of 014_outbox.sql add a row for every write to
`stock` or `reservations` in that write's transaction. What is written from code:
    handover(conn, ...)   in the hand-over's transaction (oms/stores/handover.py)
    cancelled(conn, ...)  in the cancel's transaction, for a cancel we decided (oms/orders/cancel.py)
    sku_changed(...)      a change decided outside PostgreSQL (Redis only)
    resync(pool, shop)    a full resync of a shop (admin call; the dispatcher also schedules them)
"""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

from oms.infra.db import Q


async def handover(conn: asyncpg.Connection, *, shop_id: str | None, order_id: str, fulfillment_id: str,
                   node_id: str, mode: str, carrier: str | None, tracking_no: str | None) -> None:
    """The confirmation of one hand-over, in the caller's transaction."""
    await conn.execute(Q["fulfillment_set_handover_info"], fulfillment_id, carrier, tracking_no)
    await conn.execute(Q["outbox_handover_insert"], "handover", shop_id, order_id, fulfillment_id,
                       {"node_id": node_id, "mode": mode, "carrier": carrier, "tracking_no": tracking_no})


async def cancelled(conn: asyncpg.Connection, order: Any, cause: str, reason: str) -> bool:
    """A cancel we decided (an expired pickup, an admin), in the caller's transaction: the
    platform must hear it, or ops must do it there. Nothing when the platform itself cancelled
    (its channel status says so), for an order never paid (the platform closes unpaid orders at
    its own expiry, as our timer does), or for an order from no platform. True when written."""
    from oms.channels.shops import default_shop_id

    shop_id = order["shop_id"] or default_shop_id(order["channel"])
    if shop_id is None or order["channel_status"] == "cancelled" or order["paid_at"] is None:
        return False
    await conn.execute(Q["outbox_cancel_insert"], shop_id, order["id"], {"cause": cause, "reason": reason})
    return True


async def sku_changed(pool_or_conn: Any, skus: list[str]) -> None:
    await pool_or_conn.execute(Q["outbox_sku_changed"], skus)


async def resync(pool: asyncpg.Pool, shop_id: str) -> int:
    return await pool.fetchval(Q["outbox_resync_enqueue"], shop_id)


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    source: str  # message (hand-over / cancel) | stock
    ref: str
    kind: str
    shop_id: str | None
    sku: str | None
    order_id: str | None
    status: str  # dead | blocked (refund pending) | manual (ops must act)
    attempts: int
    code: str | None
    error: str | None


async def dead_letters(pool: asyncpg.Pool) -> list[DeadLetter]:
    return [DeadLetter(source=r["source"], ref=r["ref"], kind=r["kind"], shop_id=r["shop_id"], sku=r["sku"],
                       order_id=r["order_id"], status=r["status"], attempts=r["attempts"], code=r["last_code"],
                       error=r["last_error"])
            for r in await pool.fetch(Q["outbox_dead_list"])]


async def resend_dead(pool: asyncpg.Pool, shop_id: str | None = None) -> dict[str, int]:
    r = await pool.fetchrow(Q["outbox_dead_resend"], shop_id)
    return {"messages": r["messages"], "stock": r["stock"]}


# ---- ops ----------------------------------------------------------------------------------------
class ChannelSync(msgspec.Struct, frozen=True, kw_only=True):
    channel: str
    stock_lag_p50_ms: float | None
    stock_lag_p99_ms: float | None
    confirm_lag_p50_ms: float | None
    confirm_lag_p99_ms: float | None
    stock_pending: int
    stock_dead: int
    confirmations_pending: int
    confirmations_failed: int
    oldest_unconfirmed_s: float | None


class ShopSync(msgspec.Struct, frozen=True, kw_only=True):
    shop_id: str
    channel: str
    last_full_resync_at: str | None
    paused_until: str | None


class CancelForOps(msgspec.Struct, frozen=True, kw_only=True):
    """An order we cancelled whose platform has no call for it: cancel or refund it there."""

    message_id: int
    order_id: str
    channel: str
    external_id: str
    shop_id: str | None
    cause: str | None
    reason: str | None
    what_to_do: str | None
    since: str


class SyncFigures(msgspec.Struct, frozen=True, kw_only=True):
    channels: list[ChannelSync]
    shops: list[ShopSync]
    outbox_pending: int
    cancels_for_ops: int
    #: the oldest of them (at most 50), for the ops list
    cancels: list[CancelForOps] = []


async def figures(db: asyncpg.Pool | asyncpg.Connection, window_s: float = 900.0) -> SyncFigures:
    """Sync lag percentiles over the last `window_s`, queues and failures per channel, per shop
    (on a connection of the caller's, e.g. the read replica's, or one of the pool's)."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            return await figures(conn, window_s)
    conn = db
    lags = {(r["channel"], r["kind"]): r for r in await conn.fetch(Q["ops_sync_lag"], window_s)}
    queues = {r["channel"]: r for r in await conn.fetch(Q["ops_sync_queues"])}
    shop_rows = await conn.fetch(Q["ops_sync_shops"])
    pending = await conn.fetchval(Q["ops_outbox_pending"])
    cancels = await conn.fetchval(Q["ops_cancels_for_ops"])
    cancel_rows = await conn.fetch(Q["ops_cancels_list"], 50) if cancels else []
    channels = sorted({c for c, _ in lags} | set(queues))

    def lag(channel: str, kind: str, q: str) -> float | None:
        r = lags.get((channel, kind))
        return None if r is None or r[q] is None else round(float(r[q]), 1)

    out = []
    for c in channels:
        q = queues.get(c)
        out.append(ChannelSync(
            channel=c, stock_lag_p50_ms=lag(c, "stock", "p50"), stock_lag_p99_ms=lag(c, "stock", "p99"),
            confirm_lag_p50_ms=lag(c, "handover", "p50"), confirm_lag_p99_ms=lag(c, "handover", "p99"),
            stock_pending=q["stock_pending"] if q else 0, stock_dead=q["stock_dead"] if q else 0,
            confirmations_pending=q["confirm_pending"] if q else 0, confirmations_failed=q["confirm_failed"] if q else 0,
            oldest_unconfirmed_s=(round(float(q["oldest_s"]), 1) if q and q["oldest_s"] is not None else None)))
    return SyncFigures(
        channels=out,
        shops=[ShopSync(shop_id=r["id"], channel=r["channel"],
                        last_full_resync_at=r["last_full_resync_at"].isoformat() if r["last_full_resync_at"] else None,
                        paused_until=r["sync_paused_until"].isoformat() if r["sync_paused_until"] else None)
               for r in shop_rows],
        outbox_pending=pending, cancels_for_ops=cancels,
        cancels=[CancelForOps(message_id=r["id"], order_id=r["order_id"], channel=r["channel"],
                              external_id=r["external_id"], shop_id=r["shop_id"], cause=r["cause"],
                              reason=r["reason"], what_to_do=r["last_error"], since=r["created_at"].isoformat())
                 for r in cancel_rows])
