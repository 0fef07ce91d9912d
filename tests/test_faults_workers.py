"""kill -9 of a worker of `oms serve --workers 2` in the middle of 48 concurrent orders: Redis and
PostgreSQL agree again by themselves (no restart, no manual rebuild), and retries succeed."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import asyncpg
import httpx

from faultkit import Serve
from oms.stock import inventory

LAT, LNG = 30.2741, 120.1551  # Hangzhou: away from the other tests' Shanghai stores


async def agree(services, nodes: list[str]) -> bool:
    """Redis holds exactly what PostgreSQL implies at these nodes (levels and reservation records)."""
    async with services.pool.acquire() as conn:
        levels, records = await inventory.expected_from_postgres(conn)
    for node in nodes:
        held = {k.decode() for k in await services.redis.hkeys(inventory.holders_key(node))}
        if held != {f for n, f in records if n == node}:
            return False
    return await services.inventory.snapshot(nodes) == {k: v for k, v in levels.items() if k[0] in nodes}


async def test_kill_9_of_a_worker_mid_burst_settles_by_itself_and_retries_succeed(settings, world, services, tmp_path):
    a = await world.node("kill-a", LAT, LNG)
    b = await world.node("kill-b", LAT + 0.005, LNG)
    sku = await world.sku("kill")
    await world.stock(a, sku, 20)
    await world.stock(b, sku, 20)
    server = Serve({"OMS_DATABASE_URL": settings.database_url, "OMS_REDIS_URL": settings.redis_url,
                    "OMS_ADMIN_TOKEN": settings.admin_token, "OMS_DATA_DIR": str(tmp_path / "data"),
                    "OMS_RECONCILE_INTERVAL_S": "1"}, tmp_path / "serve.log", workers=2)
    lock = await asyncpg.connect(settings.database_url)
    try:
        await server.wait_ready()
        headers = {"Authorization": f"Bearer {settings.admin_token}"}
        bodies = [world.order(f"kill-{i}", [(sku, 1)], lat=LAT, lng=LNG) for i in range(48)]

        # order writes wait on a table lock, so requests pile up between reserve and write
        tx = lock.transaction()
        await tx.start()
        await lock.execute("lock table orders in exclusive mode")

        async def post(body: dict, client: httpx.AsyncClient) -> int:
            try:
                return (await client.post(server.url + "/orders", json=body, headers=headers)).status_code
            except httpx.HTTPError:
                return 0  # the worker died under the request

        clients = [httpx.AsyncClient(timeout=30) for _ in range(8)]  # connections spread over both workers
        burst = [asyncio.ensure_future(post(body, clients[i % 8])) for i, body in enumerate(bodies)]
        deadline = time.monotonic() + 10
        workers = set(server.workers())
        while time.monotonic() < deadline:  # until a worker holds reservations it cannot write yet
            owners = [w.decode() for n in (a, b) for w in await services.redis.hvals(inventory.holders_key(n))]
            pids = [int(w[1:].split(".")[0]) for w in owners if w.startswith("w")]
            if len(pids) >= 24 and set(pids) & workers:
                break
            await asyncio.sleep(0.05)
        assert await services.pool.fetchval("select count(*) from orders where external_id = any($1)",
                                            [b_["external_id"] for b_ in bodies]) == 0
        victim = max(set(pids) & workers, key=pids.count)
        os.kill(victim, signal.SIGKILL)
        await asyncio.sleep(0.3)
        await tx.rollback()
        first = await asyncio.gather(*burst)
        assert 0 in first, first  # the victim had requests in flight

        # retries (what a channel does) until every order is in
        pending = [body for body, status in zip(bodies, first) if status not in (200, 201)]
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            statuses = await asyncio.gather(*(post(body, clients[0]) for body in pending))
            pending = [body for body, status in zip(pending, statuses) if status not in (200, 201)]
            if pending:
                await asyncio.sleep(0.5)
        assert not pending, f"{len(pending)} orders never went in:\n{server.output()}"
        for c in clients:
            await c.aclose()

        # within the grace period Redis and PostgreSQL agree again, without a restart or a rebuild
        deadline = time.monotonic() + 30
        while not await agree(services, [a, b]):
            assert time.monotonic() < deadline, server.output()
            await asyncio.sleep(0.5)
        ids = [r["external_id"] for r in await services.pool.fetch(
            "select external_id from orders where external_id = any($1)", [b_["external_id"] for b_ in bodies])]
        assert sorted(ids) == sorted(b_["external_id"] for b_ in bodies)  # each order exactly once
        reserved = await services.pool.fetchval(
            "select coalesce(sum(quantity), 0) from reservations where sku = $1 and state = 'reserved'", sku)
        assert reserved == 40  # 48 orders for 40 units: all 40 sold, none twice
    finally:
        await lock.close()
        server.stop()
