"""The classic design: stock rows locked in PostgreSQL, one transaction per order (as Saleor's
`allocate_stocks` does), on the same stack and HTTP edge as the OMS. No Redis.

    BASELINE_DATABASE_URL=... BASELINE_TOKEN=... \\
        .venv/bin/python loadtests/rowlock_app.py --port 8100 --workers 2

Per order, in one transaction on a pooled connection (10 per worker, as the OMS's pool):
  1. `SELECT … FOR UPDATE` the stock rows of the order's SKUs at the one fixed node, in primary
     key order (so two orders never deadlock);
  2. decide: every line fits (on_hand − allocated ≥ wanted), or the order is backordered;
  3. insert the order and its lines (idempotent by channel + external_id: a repeat rolls back
     and answers 200 with the first order);
  4. if it fits, add the units to `allocated`;
  5. commit (synchronous_commit on) — only then are the rows unlocked and the answer sent.
Every statement is prepared once per connection (asyncpg's statement cache). A hot SKU makes
every order wait for the previous one's commit: that is the design being measured.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from litestar import Litestar, Request, Response, post

from baseline import (Accepted, NormalizedOrder, OrderIds, Settings, create_schema, main, merged_lines, require_token,
                      tune_gc)

SCHEMA = """
create table if not exists rl_stock (
    node_id   text not null,
    sku       text not null,
    on_hand   int4 not null,
    allocated int4 not null default 0,
    primary key (node_id, sku)
);
create table if not exists rl_orders (
    id          text primary key,
    channel     text not null,
    external_id text not null,
    node_id     text not null,
    status      text not null,
    total_fen   int8 not null,
    created_at  timestamptz not null default now(),
    unique (channel, external_id)
);
create table if not exists rl_order_lines (
    order_id   text not null references rl_orders (id),
    line_no    int4 not null,
    sku        text not null,
    quantity   int4 not null,
    unit_price int8 not null,
    primary key (order_id, line_no)
);
"""

LOCK_STOCK = """
select sku, on_hand - allocated as available
  from rl_stock
 where node_id = $1 and sku = any($2::text[])
 order by node_id, sku
   for update
"""
INSERT_ORDER = """
with o as (
    insert into rl_orders (id, channel, external_id, node_id, status, total_fen)
    values ($1, $2, $3, $4, $5, $6)
    on conflict (channel, external_id) do nothing
    returning id
), l as (
    insert into rl_order_lines (order_id, line_no, sku, quantity, unit_price)
    select o.id, x.n, x.sku, x.q, x.p
      from o, unnest($7::text[], $8::int4[], $9::int8[]) with ordinality as x(sku, q, p, n)
)
select id from o
"""
ALLOCATE = """
update rl_stock s set allocated = s.allocated + u.q
  from unnest($2::text[], $3::int4[]) as u(sku, q)
 where s.node_id = $1 and s.sku = u.sku
"""
EXISTING = "select id, status, node_id from rl_orders where channel = $1 and external_id = $2"


class _Repeat(Exception):
    """The order exists already: roll this transaction back."""


def create_app() -> Litestar:
    settings = Settings.from_env()
    ids = OrderIds()
    state: dict = {}

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(settings.database_url, min_size=2, max_size=10,
                                         server_settings={"synchronous_commit": "on"})
        async with pool.acquire() as conn:
            await create_schema(conn, SCHEMA)
        state["pool"] = pool
        tune_gc()
        try:
            yield
        finally:
            await pool.close()

    @post("/orders", status_code=201)
    async def submit(request: Request, data: NormalizedOrder) -> Response[Accepted]:
        require_token(request, settings.token)
        want = merged_lines(data)
        skus = sorted(want)
        order_id = ids.next()
        total = sum(line.quantity * line.unit_price for line in data.lines)
        async with state["pool"].acquire() as conn:
            try:
                async with conn.transaction():
                    available = dict(await conn.fetch(LOCK_STOCK, settings.node, skus))
                    fits = all(available.get(sku, 0) >= qty for sku, qty in want.items())
                    status = "allocated" if fits else "backordered"
                    inserted = await conn.fetchval(
                        INSERT_ORDER, order_id, data.channel.value, data.external_id, settings.node, status, total,
                        [ln.sku for ln in data.lines], [ln.quantity for ln in data.lines],
                        [ln.unit_price for ln in data.lines])
                    if inserted is None:
                        raise _Repeat
                    if fits:
                        await conn.execute(ALLOCATE, settings.node, skus, [want[s] for s in skus])
            except _Repeat:
                row = await conn.fetchrow(EXISTING, data.channel.value, data.external_id)
                return Response(Accepted(id=row["id"], status=row["status"], node_id=row["node_id"]),
                                status_code=200)
        return Response(Accepted(id=order_id, status=status, node_id=settings.node), status_code=201)

    return Litestar(route_handlers=[submit], lifespan=[lifespan], openapi_config=None)


# --- set-up and checks for the harness and the tests ------------------------------------------

async def load_stock(database_url: str, node: str, stock: dict[str, int]) -> None:
    """Empty order tables and exactly `stock` at `node`, nothing allocated."""
    conn = await asyncpg.connect(database_url)
    try:
        await create_schema(conn, SCHEMA)
        await conn.execute("truncate rl_order_lines, rl_orders, rl_stock")
        await conn.copy_records_to_table("rl_stock", records=[(node, sku, units) for sku, units in stock.items()],
                                         columns=("node_id", "sku", "on_hand"))
    finally:
        await conn.close()


async def check(database_url: str, node: str, stock: dict[str, int], external_prefix: str = "") -> dict:
    """Units sold per SKU (lines of allocated orders) against the stock given: oversold SKUs,
    whether the `allocated` column equals what the orders sold, units of each SKU sold, and the
    statuses of the orders whose external id starts with external_prefix."""
    conn = await asyncpg.connect(database_url)
    try:
        sold = {r["sku"]: r["units"] for r in await conn.fetch(
            "select l.sku, sum(l.quantity)::int as units from rl_orders o join rl_order_lines l on l.order_id = o.id"
            " where o.status = 'allocated' and o.node_id = $1 group by l.sku", node)}
        allocated = {r["sku"]: r["allocated"] for r in await conn.fetch(
            "select sku, allocated from rl_stock where node_id = $1", node)}
        statuses = {r["status"]: r["n"] for r in await conn.fetch(
            "select status, count(*)::int as n from rl_orders where starts_with(external_id, $1)"
            " group by status", external_prefix)}
    finally:
        await conn.close()
    oversold = sorted(sku for sku, units in sold.items() if units > stock.get(sku, 0))
    in_step = all(allocated.get(sku, 0) == sold.get(sku, 0) for sku in stock)
    return {"oversold": oversold, "in_step": in_step, "statuses": statuses, "sold": sold}


if __name__ == "__main__":
    main("rowlock_app:create_app", __doc__)
