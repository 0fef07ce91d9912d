"""The stack's floor: what `POST /orders` costs on this stack with nothing but the essentials.

    BASELINE_DATABASE_URL=... BASELINE_REDIS_URL=... BASELINE_TOKEN=... \\
        .venv/bin/python loadtests/floor_app.py --port 8100 --workers 2

Per order: Litestar + msgspec decode the OMS's own body type, one Redis Lua call takes every
line at one fixed node or none (no routing, no idempotency claim), and the order goes into one
PostgreSQL table by a COPY shared by all the orders that arrived in the same event-loop turn
(asyncpg `copy_records_to_table`, synchronous_commit on: the answer waits for a durable commit).
It answers 201 with {id, status, node_id}; an order that does not fit is recorded as
`backordered`, as the OMS does. If the write fails, the units are given back before answering
503, so it never sells stock it did not record.

Stock lives only in Redis (hash `floor:{<node>}:available`, SKU -> units): `load_stock` sets it,
`check` compares it with what PostgreSQL recorded as sold.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

import asyncpg
import redis.asyncio as aioredis
from litestar import Litestar, Request, post
from litestar.exceptions import HTTPException

from baseline import (Accepted, NormalizedOrder, OrderIds, Settings, create_schema, main, merged_lines, require_token,
                      tune_gc)

SCHEMA = """
create table if not exists floor_orders (
    id          text primary key,
    channel     text not null,
    external_id text not null,
    node_id     text not null,
    status      text not null,
    skus        text[] not null,
    quantities  int4[] not null,
    total_fen   int8 not null,
    created_at  timestamptz not null default now()
)
"""
COLUMNS = ("id", "channel", "external_id", "node_id", "status", "skus", "quantities", "total_fen")

# KEYS[1] the node's available hash; ARGV sku1, qty1, sku2, qty2, ... -> 1 all taken, 0 none
TAKE = """
for i = 1, #ARGV, 2 do
  if tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0') < tonumber(ARGV[i + 1]) then
    return 0
  end
end
for i = 1, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], -ARGV[i + 1])
end
return 1
"""
GIVE_BACK = """
for i = 1, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
return 1
"""


def stock_key(node: str) -> str:
    return f"floor:{{{node}}}:available"


class CopyWriter:
    """Group commit by COPY: rows handed in during one event-loop turn (and while the previous
    COPY is in flight) go to PostgreSQL as one COPY; each caller awaits that COPY's commit."""

    def __init__(self, pool: asyncpg.Pool, max_batch: int = 1024) -> None:
        self.pool = pool
        self.max_batch = max_batch
        self._queue: deque[tuple[tuple, asyncio.Future[None]]] = deque()
        self._draining = False

    async def write(self, row: tuple) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._queue.append((row, fut))
        if not self._draining:
            self._draining = True
            loop.create_task(self._drain())
        await fut

    async def _drain(self) -> None:
        try:
            await asyncio.sleep(0)  # the rest of this turn's requests join the batch
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
                try:
                    async with self.pool.acquire() as conn:
                        await conn.copy_records_to_table("floor_orders", records=[r for r, _ in batch],
                                                         columns=COLUMNS)
                except Exception as exc:  # noqa: BLE001 - each caller gets it
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                else:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_result(None)
        finally:
            self._draining = False


class Recorder(Protocol):
    """How a floor app records an order whose stock was taken (or not): returns the order's id,
    raises when nothing was kept."""

    async def record(self, order: NormalizedOrder, want: dict[str, int], taken: bool) -> str: ...


class CopyRecorder:
    """The floor's record: one row an order in `floor_orders`, by the turn's shared COPY."""

    def __init__(self, pool: asyncpg.Pool, node: str) -> None:
        self.writer = CopyWriter(pool)
        self.ids = OrderIds()
        self.node = node

    async def record(self, order: NormalizedOrder, want: dict[str, int], taken: bool) -> str:
        order_id = self.ids.next()
        total = sum(line.quantity * line.unit_price for line in order.lines)
        # COPY is one statement: a failure is not in doubt
        await self.writer.write((order_id, order.channel.value, order.external_id, self.node,
                                 "allocated" if taken else "backordered", list(want), list(want.values()), total))
        return order_id


@asynccontextmanager
async def copy_recorder(settings: Settings) -> AsyncIterator[Recorder]:
    pool = await asyncpg.create_pool(settings.database_url, min_size=2, max_size=4,
                                     server_settings={"synchronous_commit": "on"})
    try:
        async with pool.acquire() as conn:
            await create_schema(conn, SCHEMA)
        yield CopyRecorder(pool, settings.node)
    finally:
        await pool.close()


def create_app(open_recorder: Callable[[Settings], AbstractAsyncContextManager[Recorder]] = copy_recorder
               ) -> Litestar:
    """The floor's `POST /orders`: take every line at the one node or none, record, answer."""
    settings = Settings.from_env()
    key = stock_key(settings.node)
    state: dict = {}

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with open_recorder(settings) as recorder:
            redis = aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
                settings.redis_url, max_connections=64, timeout=10))
            state.update(recorder=recorder, take=redis.register_script(TAKE),
                         give_back=redis.register_script(GIVE_BACK))
            tune_gc()
            try:
                yield
            finally:
                await redis.aclose()

    @post("/orders", status_code=201)
    async def submit(request: Request, data: NormalizedOrder) -> Accepted:
        require_token(request, settings.token)
        want = merged_lines(data)
        args = [x for sku, qty in want.items() for x in (sku, qty)]
        taken = await state["take"](keys=[key], args=args) == 1
        try:
            order_id = await state["recorder"].record(data, want, taken)
        except Exception:
            if taken:  # nothing was kept: give the units back
                await state["give_back"](keys=[key], args=args)
            raise HTTPException(status_code=503, detail="order not recorded; retry") from None
        return Accepted(id=order_id, status="allocated" if taken else "backordered", node_id=settings.node)

    return Litestar(route_handlers=[submit], lifespan=[lifespan], openapi_config=None)


# --- set-up and checks for the harness and the tests ------------------------------------------

async def load_stock(database_url: str, redis_url: str, node: str, stock: dict[str, int]) -> None:
    """An empty order table and exactly `stock` at `node` (other SKUs: none)."""
    conn = await asyncpg.connect(database_url)
    try:
        await create_schema(conn, SCHEMA)
        await conn.execute("truncate floor_orders")
    finally:
        await conn.close()
    await load_redis_stock(redis_url, node, stock)


async def load_redis_stock(redis_url: str, node: str, stock: dict[str, int]) -> None:
    """Exactly `stock` at `node` in Redis (other SKUs: none)."""
    redis = aioredis.Redis.from_url(redis_url)
    try:
        pipe = redis.pipeline()
        pipe.delete(stock_key(node))
        for i in range(0, len(stock), 1000):
            pipe.hset(stock_key(node), mapping=dict(list(stock.items())[i:i + 1000]))
        await pipe.execute()
    finally:
        await redis.aclose()


SOLD = ("select s.sku, sum(s.q)::int as units from floor_orders o, unnest(o.skus, o.quantities) as s(sku, q)"
        " where o.status = 'allocated' and o.node_id = $1 group by s.sku")
STATUSES = ("select status, count(*)::int as n from floor_orders where starts_with(external_id, $1)"
            " group by status")


async def check(database_url: str, redis_url: str, node: str, stock: dict[str, int], external_prefix: str = "",
                *, sold_sql: str = SOLD, statuses_sql: str = STATUSES) -> dict:
    """Units sold per SKU (from PostgreSQL, by `sold_sql`) against the stock given: oversold SKUs
    (sold > stock), whether Redis holds exactly stock − sold, units of each SKU sold, and the
    statuses of the orders whose external id starts with external_prefix (`statuses_sql`)."""
    conn = await asyncpg.connect(database_url)
    try:
        sold = {r["sku"]: r["units"] for r in await conn.fetch(sold_sql, node)}
        statuses = {r["status"]: r["n"] for r in await conn.fetch(statuses_sql, external_prefix)}
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
    main("floor_app:create_app", __doc__)
