"""In-doubt writes: checked, never guessed.

When the connection is lost during or after a COMMIT, the write may or may not have been kept.
Releasing its reservations then (as if nothing was kept) oversells when it was; keeping them
for ever leaks stock when it was not. So the reservations stay, the caller is answered 503
(its retry finds the order, or waits for the answer), and this resolver reads the rows back by
id as soon as PostgreSQL answers again:
    kept      -> the reservations stay (and are put back should a Redis rebuild have lost them);
    not kept  -> the reservations are released and the order's claim let go, so a retry starts afresh.
Should this process die first, the reconciler settles the same reservations from PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import asyncpg
import msgspec
import redis.asyncio as aioredis

from oms.infra.db import Q
from oms.ops import metrics
from oms.orders import claims
from oms.orders.rows import Reserved
from oms.stock.liveness import stop_task

log = logging.getLogger("oms.doubt")

#: how often PostgreSQL is asked again while it does not answer
_RETRY_S = 0.2


class Doubt(msgspec.Struct):
    """One write whose outcome is unknown: an order (new: check the order row) or the
    fulfilments of an existing order (check their reservation rows)."""

    order_id: str
    reserved: list[Reserved]
    new_order: bool = True
    claim: tuple[str, str] | None = None  # (key, value) to let go when the order was not kept


class DoubtResolver:
    def __init__(self, pool: asyncpg.Pool, redis: aioredis.Redis,
                 release: Callable[[list[Reserved]], Awaitable[None]],
                 confirm: Callable[[list[Reserved]], Awaitable[None]]) -> None:
        self.pool = pool
        self.redis = redis
        self.release = release
        self.confirm = confirm
        self.pending: dict[str, Doubt] = {}
        self._task: asyncio.Task | None = None
        self._settled: dict[str, asyncio.Future[bool]] = {}

    def hold(self, doubt: Doubt) -> None:
        """Keep the reservations until PostgreSQL says whether the write was kept."""
        log.warning("write of order %s is in doubt: keeping %d reservation(s) until PostgreSQL answers",
                    doubt.order_id, len(doubt.reserved))
        self.pending[doubt.order_id] = doubt
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def settled(self, order_id: str, timeout: float) -> bool | None:
        """Wait up to `timeout` for the answer about one order: True kept, False not, None unknown."""
        if order_id not in self.pending:
            return None
        fut = self._settled.setdefault(order_id, asyncio.get_running_loop().create_future())
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            return None

    async def _run(self) -> None:
        while self.pending:
            try:
                await self.resolve_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - PostgreSQL still away: ask again shortly
                log.debug("in-doubt check failed, retrying: %r", exc)
            if self.pending:
                await asyncio.sleep(_RETRY_S)

    async def resolve_once(self) -> None:
        batch = list(self.pending.values())
        orders = [d.order_id for d in batch if d.new_order]
        fids = [d.reserved[0].fulfillment_id for d in batch if not d.new_order and d.reserved]
        async with self.pool.acquire() as conn:
            stored_orders = {r["id"] for r in await conn.fetch(Q["orders_existing"], orders)} if orders else set()
            stored_fids = ({r["fulfillment_id"] for r in await conn.fetch(Q["reservations_by_fulfillments"], fids)}
                           if fids else set())
        for d in batch:
            kept = d.order_id in stored_orders if d.new_order else (
                bool(d.reserved) and d.reserved[0].fulfillment_id in stored_fids)
            if kept:
                await self.confirm(d.reserved)
            else:
                await self.release(d.reserved)
                if d.claim is not None:
                    await claims.drop_claim(self.redis, *d.claim)
            log.warning("in-doubt write of order %s: %s", d.order_id,
                        "it was kept; its reservations stay" if kept else "it was not kept; reservations released")
            metrics.in_doubt_resolved(kept)
            del self.pending[d.order_id]
            fut = self._settled.pop(d.order_id, None)
            if fut is not None and not fut.done():
                fut.set_result(kept)

    async def close(self) -> None:
        if self._task is not None:
            await stop_task(self._task)
