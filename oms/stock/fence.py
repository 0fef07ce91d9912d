"""The fence: Redis that lost its stock is noticed, rebuilt from PostgreSQL, and only then used.

Every node carries a generation marker (oms.stock.inventory.GEN_FIELD) written last when it is
installed from PostgreSQL. Scripts that reserve or set stock, and availability reads, refuse a
node without one; the caller then asks the fence to `heal` it, and a periodic `watch` looks for
missing markers too, so a flush is noticed within a second even when nobody orders.

A heal runs under a Redis lock one process holds (others wait for the markers to come back):
    1. read the nodes' on-hand and open reservations from PostgreSQL, install them (no marker yet);
    2. when Redis lost data (all of it, or a node that had open reservations): wait a moment so
       writes in flight — reserved before the loss, committing now — land in PostgreSQL, then
       read again and put back every open reservation the first read missed;
    3. the marker is set with the install, and in step 2's case only after the second read.
Orders arriving meanwhile wait for it (up to `wait_s`) or get 503 StockFenced: never a
backorder for stock that exists, never a reservation decided on an empty Redis. A write that
committed after the second read puts its own reservation back (`Inventory.confirm`), and the
reconciler catches anything later still.

A node split into stock buckets is fenced when any bucket lost its marker (one shard of a
cluster failed over) and is then installed whole, every bucket, since PostgreSQL knows only the
node's totals. `rebucket` re-splits a node whose bucket count changed the same way: its markers
are taken first, so every process waits for the new layout and learns the new count.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Sequence

import asyncpg
import redis.asyncio as aioredis

from oms.errors import StockFenced
from oms.ops import metrics
from oms.stock import inventory
from oms.stock.inventory import GEN_FIELD, Inventory, NodeStock, avail_key, bucket_ids, home_bucket

log = logging.getLogger("oms.fence")

LOCK_KEY = "oms:inv:rebuild-lock"
LOCK_MS = 30_000
#: how long writes in flight get to land before the second read (they normally take milliseconds)
SETTLE_S = 0.5


class Fence:
    def __init__(self, pool: asyncpg.Pool, redis: aioredis.Redis, *, wait_s: float = 8.0,
                 settle_s: float = SETTLE_S) -> None:
        self.pool = pool
        self.redis = redis
        self.wait_s = wait_s
        self.settle_s = settle_s
        self.inventory: Inventory | None = None
        self._running: asyncio.Task | None = None
        #: this process saw a fenced node and has not seen it healed yet
        self.rebuilding = False
        self.rebuilds = 0
        self.last_rebuild_s: float | None = None

    def attach(self, inv: Inventory) -> None:
        self.inventory = inv
        inv.heal = self.heal

    async def heal(self, nodes: Sequence[str]) -> None:
        """Return once `nodes` carry a generation marker again; StockFenced when that takes too long."""
        deadline = time.monotonic() + self.wait_s
        self.rebuilding = True
        try:
            while True:
                if self._running is None or self._running.done():
                    self._running = asyncio.get_running_loop().create_task(self._heal_once(list(nodes)))
                try:
                    await asyncio.wait_for(asyncio.shield(self._running), max(deadline - time.monotonic(), 0.01))
                except TimeoutError:
                    raise StockFenced("stock is being rebuilt from PostgreSQL; retry in a moment") from None
                if not await self._inv().fenced(list(nodes)):
                    return
                if time.monotonic() > deadline:
                    raise StockFenced("stock is being rebuilt from PostgreSQL; retry in a moment")
                await asyncio.sleep(0.05)
        finally:
            if self._running is None or self._running.done():
                self.rebuilding = False

    def _inv(self) -> Inventory:
        if self.inventory is None:
            self.inventory = Inventory(self.redis)
        return self.inventory

    async def _heal_once(self, asked: list[str]) -> None:
        token = secrets.token_hex(8)
        if not await self.redis.set(LOCK_KEY, token, nx=True, px=LOCK_MS):
            await asyncio.sleep(0.05)  # another process rebuilds: heal() polls the markers
            return
        started = time.monotonic()
        try:
            async with self.pool.acquire() as conn:
                all_nodes = [r["id"] for r in await conn.fetch(inventory.Q["node_ids"])]
                # a flush fences every node: rebuild all that are fenced, not just the one asked
                missing = await self._inv().fenced(sorted(set(all_nodes) | set(asked)))
                if not missing:
                    return
                lost_all = not await self.redis.exists(inventory.EPOCH_KEY)
                first = await inventory.stock_of_nodes(conn, missing)
                had_orders = any(st.records for st in first.values())
                await self._drop_extra(first)
                if not (lost_all or had_orders):  # new nodes: nothing can be in flight there
                    await inventory.install(self.redis, first, inventory.new_generation())
                    self._remember(first)
                    return
                log.warning("Redis lost the stock of %d node(s)%s: rebuilding from PostgreSQL",
                            len(missing), " (all of Redis)" if lost_all else "")
                await self._install_settled(conn, first)
                await self.redis.set(inventory.EPOCH_KEY, inventory.new_generation())
            self.rebuilds += 1
            self.last_rebuild_s = time.monotonic() - started
            metrics.inventory_rebuilt(len(missing))
            log.warning("rebuilt %d node(s) from PostgreSQL in %.2f s", len(missing), self.last_rebuild_s)
        finally:
            await _unlock(self.redis, LOCK_KEY, token)

    async def _install_settled(self, conn: asyncpg.Connection, first: dict[str, NodeStock]) -> None:
        """Install without markers, let writes in flight land, add what they reserved, then mark."""
        await inventory.install(self.redis, first, "")
        await asyncio.sleep(self.settle_s)
        second = await inventory.stock_of_nodes(conn, list(first))
        calls = []
        for node, st in second.items():
            before = first.get(node, NodeStock()).records
            calls += [reapply(node, fid, lines, first[node].buckets) for fid, lines in st.records.items()
                      if fid not in before]
        added = len(calls)
        await inventory.run_scripts(self.redis, _CONFIRM, calls)
        pipe = self.redis.pipeline(transaction=False)
        for node, st in first.items():
            gen = inventory.new_generation()  # one per node: every bucket of it has the same
            for b in bucket_ids(node, st.buckets):
                pipe.hset(avail_key(b), GEN_FIELD, gen)
        await pipe.execute()
        self._remember(first)
        if added:
            log.warning("put back %d reservation(s) written while Redis was being rebuilt", added)

    async def _drop_extra(self, nodes: dict[str, NodeStock]) -> None:
        """Buckets past a node's count in PostgreSQL (it went down while Redis was lost)."""
        for node, st in nodes.items():
            if self._inv().buckets.get(node, 1) > st.buckets:
                await inventory.drop_buckets(self.redis, node, st.buckets, self._inv().buckets[node])

    def _remember(self, nodes: dict[str, NodeStock]) -> None:
        for node, st in nodes.items():
            self._inv().remember(node, st.buckets)

    async def rebucket(self, node: str) -> int:
        """Re-split a node's stock over the bucket count PostgreSQL now holds for it (all in one
        bucket for 1), under the rebuild lock; returns the new count. Reservations at the node
        wait (or get StockFenced) for the half second this takes."""
        token = secrets.token_hex(8)
        deadline = time.monotonic() + self.wait_s
        while not await self.redis.set(LOCK_KEY, token, nx=True, px=LOCK_MS):
            if time.monotonic() > deadline:
                raise StockFenced(f"stock at {node} is being rebuilt; retry in a moment")
            await asyncio.sleep(0.05)
        inv = self._inv()
        try:
            old = max(await inv.count(node), await _count_in_redis(self.redis, node))
            # fence every old bucket first: from here nothing reserves at this node until it is
            # marked again below, and each process that tries refreshes its count on the way
            pipe = self.redis.pipeline(transaction=False)
            for b in bucket_ids(node, old):
                pipe.hdel(avail_key(b), GEN_FIELD)
            await pipe.execute()
            async with self.pool.acquire() as conn:
                first = await inventory.stock_of_nodes(conn, [node])
                new = first[node].buckets
                await inventory.drop_buckets(self.redis, node, new, old)
                if first[node].on_hand or first[node].records:
                    await self._install_settled(conn, first)
                else:  # no stock: no reservation can be in flight there
                    await inventory.install(self.redis, first, inventory.new_generation(), force=True)
                    self._remember(first)
            log.warning("stock at %s re-split from %d into %d bucket(s)", node, old, new)
            return new
        finally:
            await _unlock(self.redis, LOCK_KEY, token)

    async def check(self, nodes: Sequence[str]) -> list[str]:
        """The periodic look: heal when any of `nodes` lost its marker; returns those found fenced."""
        missing = await self._inv().fenced(list(nodes))
        if missing:
            log.warning("Redis has no stock for %d node(s) (flushed or failed over?): rebuilding", len(missing))
            try:
                await self.heal(missing)
            except StockFenced:
                pass  # still rebuilding elsewhere: look again next time
        else:
            self.rebuilding = bool(self._running and not self._running.done())
        return missing

    async def watch(self, nodes, interval_s: float = 1.0) -> None:  # noqa: ANN001 - NodeDirectory
        """Run `check` over the directory's nodes every `interval_s` until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.check(sorted(nodes.nodes))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis or PostgreSQL down: look again later
                log.debug("fence check failed: %r", exc)


_CONFIRM = inventory.script("confirm")


def reapply(node: str, fid: str, lines: dict[str, int], buckets: int = 1) -> tuple[list[str], list[str | int]]:
    """(keys, args) of putting back a reservation PostgreSQL holds and Redis lacks (no-op when it
    has it) in its home bucket, for `inventory.run_scripts(redis, _CONFIRM, ...)`."""
    argv: list[str | int] = ["*", "pg", fid]
    for sku, qty in sorted(lines.items()):
        argv += [sku, qty]
    b = inventory.bucket_id(node, home_bucket(fid, buckets))
    return [inventory.avail_key(b), inventory.reserved_key(b), inventory.record_key(b, fid),
            inventory.holders_key(b), inventory.recent_key(b)], argv


async def _count_in_redis(redis: aioredis.Redis, node: str) -> int:
    k = await redis.hget(avail_key(node), inventory.KFIELD)
    return int(k) if k else 1


async def _unlock(redis: aioredis.Redis, key: str, token: str) -> None:
    try:
        if await redis.get(key) == token.encode():
            await redis.delete(key)
    except aioredis.RedisError:  # it expires
        pass
