"""The floor with the OMS's record: the stack's floor (floor_app.py) writing each order as the OMS does.

    BASELINE_DATABASE_URL=... BASELINE_REDIS_URL=... BASELINE_TOKEN=... \\
        .venv/bin/python loadtests/record_app.py --port 8100 --workers 2

Per order, as the floor: Litestar + msgspec decode the OMS's own body type, the same token
check, one Redis Lua call takes every line at one fixed node or none (no routing, no idempotency
claim), a small answer. Unlike the floor, the order is recorded as DESIGN.md's record: order
key, order, lines, fulfilment, reservations and history rows, in one transaction with the
outbox and ops-rollup triggers and the foreign keys, built by the OMS's own code
(oms.orders.intake's rows) and written by its own group commit (oms.orders.writer, the
`orders_write_batch` statement, the same gather and generic plan as `oms serve`).

So this app is what the OMS would cost if routing, the claim, the reservation records in Redis
and the order view in the answer were free: `loadtests/compare.py` runs it as `record-floor`,
an upper bound for the OMS on the same box. `load_stock` migrates the database and adds the node
and the SKUs.

BASELINE_RECORD_BARE=1 writes the same rows with every trigger and foreign-key check off
(`session_replication_role = replica`, which needs a superuser, as the embedded server's is):
the record's bound without the outbox, the ops rollups and the keys, for measuring only.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone

import asyncpg
import redis.asyncio as aioredis
from litestar import Litestar, Request, post
from litestar.exceptions import HTTPException

from baseline import Accepted, NormalizedOrder, Settings, main, merged_lines, require_token, tune_gc
from floor_app import GIVE_BACK, TAKE, load_redis_stock, stock_key
from oms.infra import db
from oms.infra.ids import new_id
from oms.network.promise import PromiseClock
from oms.orders.intake import _Decision, _new_order_rows
from oms.orders.model import OrderStatus
from oms.orders.rows import Reserved
from oms.orders.writer import OrderWriter
from routing import Allocation, RouteLine
from routing.geo import cell_of

#: as `oms serve` (oms.config: OMS_WRITE_GATHER_MS, OMS_WRITE_BATCH_MAX defaults)
GATHER_S, MAX_BATCH = 0.002, 256


def decision(order: NormalizedOrder, want: dict[str, int], node: str, taken: bool, now: datetime,
             clock: PromiseClock) -> _Decision:
    """What intake decides for a paid order whose units (`want`, per SKU) `node` serves whole
    (taken) or nobody does."""
    reserved = [Reserved(new_id("f"), Allocation(node, tuple(RouteLine(sku, q) for sku, q in want.items()),
                                                 0.0))] if taken else []
    return _Decision(status=OrderStatus.ALLOCATED if taken else OrderStatus.BACKORDERED,
                     line_status=["open" if taken else "backordered"] * len(order.lines),
                     line_reason=[None if taken else f"no stock at {node}"] * len(order.lines),
                     reserved=reserved, reason=None if taken else "no node holds the stock",
                     plan_reason=f"one node: {node}", paid_at=now,
                     promised_by=clock.promised_by(order.promised_by, now, order.delivery_mode))


def create_app() -> Litestar:
    settings = Settings.from_env()
    key = stock_key(settings.node)
    clock = PromiseClock()
    state: dict = {}

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # the OMS's writer pool: generic plan for the one big statement, no reset on release
        server = {"plan_cache_mode": "force_generic_plan", "application_name": "record-writer"}
        if os.environ.get("BASELINE_RECORD_BARE") == "1":
            server["session_replication_role"] = "replica"
        pool = await db.create_pool(settings.database_url, 3, server_settings=server, reset_on_release=False)
        redis = aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=64, timeout=10))
        state.update(writer=OrderWriter(pool, max_batch=MAX_BATCH, gather_s=GATHER_S),
                     take=redis.register_script(TAKE), give_back=redis.register_script(GIVE_BACK))
        tune_gc()
        try:
            yield
        finally:
            await redis.aclose()
            await pool.close()

    @post("/orders", status_code=201)
    async def submit(request: Request, data: NormalizedOrder) -> Accepted:
        require_token(request, settings.token)
        want = merged_lines(data)
        args = [x for sku, qty in want.items() for x in (sku, qty)]
        taken = await state["take"](keys=[key], args=args) == 1
        now = datetime.now(timezone.utc)
        order_id = new_id("o")
        rows = _new_order_rows(data, order_id, decision(data, want, settings.node, taken, now, clock),
                               "api:POST /orders", now)
        try:
            await state["writer"].write(rows)
        except Exception:
            if taken:  # nothing of a failed batch was kept (an in-doubt write is not told apart here)
                await state["give_back"](keys=[key], args=args)
            raise HTTPException(status_code=503, detail="order not recorded; retry") from None
        return Accepted(id=order_id, status="allocated" if taken else "backordered", node_id=settings.node)

    return Litestar(route_handlers=[submit], lifespan=[lifespan], openapi_config=None)


# --- set-up and checks for the harness ------------------------------------------------------

async def load_stock(database_url: str, redis_url: str, node: str, stock: dict[str, int]) -> None:
    """A migrated database without orders, holding `node` and the SKUs of `stock`, and exactly
    `stock` at `node` in Redis. (Orders go with TRUNCATE, which the ops rollups do not see: they
    are not read here.)"""
    conn = await asyncpg.connect(database_url)
    try:
        await db.migrate(conn)
        await conn.execute("truncate orders, order_keys cascade")
        await conn.execute(
            "insert into nodes (id, kind, name, lat, lng, h3_cell, capabilities)"
            " values ($1, 'warehouse', $1, 31.23, 121.47, $2, '{ship}') on conflict (id) do nothing",
            node, format(cell_of(31.23, 121.47), "x"))
        await conn.execute("insert into skus (sku) select unnest($1::text[]) on conflict (sku) do nothing",
                           list(stock))
    finally:
        await conn.close()
    await load_redis_stock(redis_url, node, stock)


async def check(database_url: str, redis_url: str, node: str, stock: dict[str, int], external_prefix: str = "") -> dict:
    """As floor_app.check, from the record: units reserved per SKU at the node against the stock
    given, whether Redis holds exactly stock − reserved, and the statuses of the orders whose
    external id starts with external_prefix."""
    conn = await asyncpg.connect(database_url)
    try:
        sold = {r["sku"]: r["units"] for r in await conn.fetch(
            "select sku, sum(quantity)::int as units from reservations where node_id = $1 group by sku", node)}
        statuses = {r["status"]: r["n"] for r in await conn.fetch(
            "select status, count(*)::int as n from orders where starts_with(external_id, $1) group by status",
            external_prefix)}
    finally:
        await conn.close()
    redis = aioredis.Redis.from_url(redis_url)
    try:
        left = {k.decode(): int(v) for k, v in (await redis.hgetall(stock_key(node))).items()}
    finally:
        await redis.aclose()
    oversold = sorted(sku for sku, units in sold.items() if units > stock.get(sku, 0))
    in_step = all(left.get(sku, 0) == units - sold.get(sku, 0) for sku, units in stock.items())
    return {"oversold": oversold, "in_step": in_step, "statuses": statuses, "sold": sold}


if __name__ == "__main__":
    main("record_app:create_app", __doc__)
