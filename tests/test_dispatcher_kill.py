"""A real `oms channels sync` process SIGKILLed mid-batch; the next one makes every shop right."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

from shops_testkit import list_sku, make_shop
from tests.fakes.platforms import FakeDouyin, FakeJd, FakeTmall

LAT, LNG = 31.2304, 121.4737


def _start(settings) -> subprocess.Popen:  # noqa: ANN001
    env = dict(os.environ, OMS_DATABASE_URL=settings.database_url, OMS_REDIS_URL=settings.redis_url,
               OMS_DATA_DIR=str(settings.data_dir), OMS_ADMIN_TOKEN=settings.admin_token, OMS_SYNC_LEASE_S="1",
               OMS_SYNC_BACKOFF_S="0.05", OMS_SYNC_BACKOFF_MAX_S="0.3", OMS_SYNC_IDLE_S="0.05",
               OMS_SYNC_RESYNC_EVERY_S="0", OMS_SYNC_BATCH="10")
    return subprocess.Popen([sys.executable, "-m", "oms.cli", "channels", "sync"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def test_sigkilled_dispatcher_restarted_leaves_every_shop_right(client, services, settings, world):
    wh = await world.node("wh", LAT, LNG, kind="warehouse", capabilities=("ship",), radius=0)
    skus = [await world.sku(f"s{i}") for i in range(12)]
    async with FakeTmall(app_key=world.id("tmk")) as tm, FakeJd(app_key=world.id("jdk")) as jd, FakeDouyin(app_key=world.id("dyk")) as dy:
        shops = [(world.id("tm"), "tmall", tm), (world.id("jd"), "jd", jd), (world.id("dy"), "douyin", dy)]
        for shop, channel, fake in shops:
            await make_shop(client, shop, channel, fake)
            for i, sku in enumerate(skus):
                await list_sku(client, shop, sku, str(100 + i), item=str(100 + i) if channel != "jd" else "")
        for fake in (tm, jd, dy):
            fake.delay_next(0.15, n=1000)  # slow platforms: the kill lands mid-batch
        for i, sku in enumerate(skus):
            await world.stock(wh, sku, 10 + i)
        proc = _start(settings)
        try:
            deadline = time.monotonic() + 30
            while len(tm.requests) + len(jd.requests) + len(dy.requests) < 5:
                assert time.monotonic() < deadline and proc.poll() is None, "the dispatcher never started sending"
                await asyncio.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            assert len(tm.requests) + len(jd.requests) + len(dy.requests) < 3 * len(skus)  # it died mid-way
            # stock moves while nobody dispatches
            for i, sku in enumerate(skus[:4]):
                await world.stock(wh, sku, i)
            for fake in (tm, jd, dy):
                fake.faults.clear()
            proc = _start(settings)

            def right() -> bool:
                want = {str(100 + i): (i if i < 4 else 10 + i) for i in range(len(skus))}
                return (all(tm.listings.get((k, None)) == v for k, v in want.items())
                        and all(jd.stock.get((int(k), None)) == v for k, v in want.items())
                        and all(dy.stock.get((int(k), None)) == v for k, v in want.items()))

            deadline = time.monotonic() + 30
            while not right():
                assert time.monotonic() < deadline and proc.poll() is None, "shops did not converge after restart"
                await asyncio.sleep(0.05)
            assert tm.problems == jd.problems == dy.problems == []
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
