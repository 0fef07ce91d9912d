"""Wiring: the servers, pools and services one process uses, started and stopped together."""

from __future__ import annotations

import logging
import os

import asyncpg
import redis.asyncio as aioredis

from oms.infra import db, embedded
from oms.infra.db import Q
from oms.infra.reads import Reads
from oms.ops import metrics

from oms.stock import inventory, redis_batch
from oms.config import Settings
from oms.network.directory import NodeDirectory
from oms.network.promise import PromiseClock
from oms.orders.allocate import Allocator
from oms.orders.intake import IntakeService
from oms.orders.writer import OrderWriter
from oms.stock.catalogue import SkuCatalogue
from oms.stock.fence import Fence
from oms.stock.inventory import Inventory
from oms.stock.liveness import Liveness

log = logging.getLogger("oms")


class Services:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, redis: aioredis.Redis,
                 write_pool: asyncpg.Pool | None = None, read_pool: asyncpg.Pool | None = None) -> None:
        self.settings = settings
        self.pool = pool
        self.write_pool = write_pool
        self.read_pool = read_pool
        #: reads that tolerate a little lag: on the read replica when one is configured
        self.reads = Reads(pool, read_pool, on_fallback=metrics.read_replica_fallback)
        self.redis = redis
        #: the one promise clock (at risk, late) every view of an order uses
        self.promise = PromiseClock.from_settings(settings)
        # this process's id on its reservations and claims, kept alive by a heartbeat
        self.liveness = Liveness(redis)
        self.inventory = Inventory(redis, owner=self.liveness.worker_id)
        self.fence = Fence(pool, redis)
        self.fence.attach(self.inventory)
        self.reconciler = None  # oms.stock.reconciler.Reconciler, started with the app (oms.app)
        self.nodes = NodeDirectory(pool)
        self.skus = SkuCatalogue(pool)
        self.allocator = Allocator(settings, pool, self.inventory, self.nodes)
        self.writer = OrderWriter(write_pool or pool, max_batch=settings.write_batch_max,
                                  gather_s=settings.write_gather_ms / 1000)
        self.intake = IntakeService(settings, pool, redis, self.allocator, self.skus, self.writer)

    @classmethod
    async def start(cls, settings: Settings, *, prepare: bool = True) -> "Services":
        """Connect (starting embedded servers when no URL is set); with `prepare`, migrate and
        rebuild Redis when it is empty or out of step with PostgreSQL."""
        db_url, redis_url = embedded.resolve_urls(settings.database_url, settings.redis_url, settings.data_dir)
        pool = await db.create_pool(db_url, settings.pg_pool_size)
        # the group-commit statement is one big CTE: planning it afresh for every batch costs
        # more than running it, so its connections keep one generic plan; they run nothing else,
        # so they skip the reset round trip on release
        write_pool = await db.create_pool(db_url, 3, server_settings={"plan_cache_mode": "force_generic_plan",
                                                                   "application_name": "oms-writer"},
                                          reset_on_release=False)
        # one Redis on a blocking pool (a burst waits for a connection instead of failing), or a
        # RedisCluster for a `redis+cluster://` URL
        redis = redis_batch.client(redis_url, max_connections=64, timeout=10)
        # lag-tolerant reads (pick lists, order reads, the ops summary) on a streaming replica
        read_pool = (await db.create_replica_pool(settings.database_read_url, settings.pg_pool_size)
                     if settings.database_read_url else None)
        svc = cls(settings, pool, redis, write_pool, read_pool)
        if prepare:
            await svc.prepare()
        svc.liveness.start()
        return svc

    async def prepare(self) -> None:
        async with self.pool.acquire() as conn:
            applied = await db.migrate(conn)
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
            await conn.fetchval(Q["partitions_ensure"])
            if await inventory.ensure_in_step(conn, self.redis):
                log.warning("Redis availability was empty or out of step with PostgreSQL: rebuilt")
        # loaded up front: a burst of first reservations all missing the script would each take
        # the NOSCRIPT path (and on a cluster, every primary needs them)
        await self.inventory.batch.load_scripts()

    async def close(self) -> None:
        await self.intake.close()
        await self.liveness.stop()
        await self.pool.close()
        if self.write_pool is not None:
            await self.write_pool.close()
        if self.read_pool is not None:
            await self.read_pool.close()
        await self.redis.aclose()


def prepared_by_parent() -> bool:
    """`oms serve` migrates and checks inventory once before starting workers; they skip it."""
    return os.environ.get("OMS_PREPARED") == "1"
