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
from litestar import Litestar

import floor_app
from baseline import NormalizedOrder, Settings, main
from floor_app import load_redis_stock
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


class OmsRecorder:
    """The OMS's record of an order, by the OMS's own rows and group commit."""

    def __init__(self, writer: OrderWriter, node: str) -> None:
        self.writer = writer
        self.node = node
        self.clock = PromiseClock()

    async def record(self, order: NormalizedOrder, want: dict[str, int], taken: bool) -> str:
        now = datetime.now(timezone.utc)
        order_id = new_id("o")
        # an in-doubt write is not told apart here: the floor gives the units back on any failure
        await self.writer.write(_new_order_rows(order, order_id, decision(order, want, self.node, taken, now,
                                                                          self.clock), "api:POST /orders", now))
        return order_id


@asynccontextmanager
async def oms_recorder(settings: Settings) -> AsyncIterator[OmsRecorder]:
    # the OMS's writer pool: generic plan for the one big statement, no reset on release
    server = {"plan_cache_mode": "force_generic_plan", "application_name": "record-writer"}
    if os.environ.get("BASELINE_RECORD_BARE") == "1":
        server["session_replication_role"] = "replica"
    pool = await db.create_pool(settings.database_url, 3, server_settings=server, reset_on_release=False)
    try:
        yield OmsRecorder(OrderWriter(pool, max_batch=MAX_BATCH, gather_s=GATHER_S), settings.node)
    finally:
        await pool.close()


def create_app() -> Litestar:
    return floor_app.create_app(oms_recorder)


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
    """floor_app.check on the record: units sold are the units reserved at the node."""
    return await floor_app.check(
        database_url, redis_url, node, stock, external_prefix,
        sold_sql="select sku, sum(quantity)::int as units from reservations where node_id = $1 group by sku",
        statuses_sql="select status, count(*)::int as n from orders where starts_with(external_id, $1) group by status")


if __name__ == "__main__":
    main("record_app:create_app", __doc__)
