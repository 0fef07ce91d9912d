"""The channel workers feeding the real ServiceIntake (PostgreSQL + Redis): the Taobao TMC consumer
against a fake TMC WebSocket + TOP API on 127.0.0.1, the JD poller with its watermark in
PostgreSQL across restarts, and `oms channels jd` as a process stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent / "channels"))
sys.path.insert(0, str(Path(__file__).parent / "adapters"))

import test_adapter_jd as jdt  # noqa: E402
import test_adapter_tmall as tmt  # noqa: E402
from channel_fakes import FakeHttpServer, Request  # noqa: E402
from test_channel_jd_worker import Clock, FakeJos, at  # noqa: E402
from test_channel_tmall_worker import FakeTmc, wait_until  # noqa: E402

from oms.channels.inbox import PgWatermarkStore, ServiceIntake  # noqa: E402
from oms.channels.backoff import Backoff  # noqa: E402
from oms.channels.config import JdConfig, TmallConfig  # noqa: E402
from oms.channels.jd_worker import WATERMARK_KEY, JdPoller  # noqa: E402
from oms.channels.tmall_worker import TmallWorker  # noqa: E402

BJ = timezone(timedelta(hours=8))
BIN = Path(sys.executable).parent


_CREATED: list[tuple[str, str]] = []  # (node, sku) this module stocked


@pytest.fixture(scope="module", autouse=True)
async def leave_the_catalogue_as_found(services):
    """This module runs before tests/test_cli.py, which seeds the demo city only into an empty
    catalogue: at the end, cancel our orders (their stock released) and remove our SKUs again."""
    yield
    from oms.orders.cancel import cancel_order

    for node, sku in _CREATED:
        for oid in {r["order_id"] for r in await services.pool.fetch(
                "select order_id from reservations where sku = $1 and state = 'reserved'", sku)}:
            await cancel_order(services.pool, services.inventory, oid, "test:cleanup")
        await services.inventory.set_on_hand(node, sku, 0)
        await services.pool.execute("delete from sku_map where sku = $1", sku)
        await services.pool.execute("delete from stock where sku = $1", sku)
        await services.pool.execute("delete from skus where sku = $1", sku)
    _CREATED.clear()


async def warehouse_with(world, units: int) -> tuple[str, str]:
    wh = await world.node("wh", 31.2, 121.5, kind="warehouse", capabilities=("ship",), radius=0)
    tea = await world.sku("tea")
    await world.stock(wh, tea, units)
    _CREATED.append((wh, tea))
    return wh, tea


async def orders_for(services, channel: str, external_id: str) -> list:
    return await services.pool.fetch("select * from orders where channel = $1 and external_id = $2",
                                     channel, external_id)


async def reserved(services, sku: str) -> int:
    return await services.pool.fetchval(
        "select coalesce(sum(quantity), 0) from reservations where sku = $1 and state = 'reserved'", sku)


async def history_len(services, order_id: str) -> int:
    return await services.pool.fetchval("select count(*) from order_history where order_id = $1", order_id)


# ------------------------------------------------------------------ Taobao TMC


def top_api(sku: str, fetched: list[str]):
    """taobao.trade.fullinfo.get: the TOP signature checked independently; a paid trade of 3 x sku."""

    async def handler(request: Request) -> tuple[int, bytes]:
        form = request.form()
        if form.get("sign") != tmt.independent_top_md5(form, tmt.APP_SECRET):
            return 200, json.dumps({"error_response": {"code": 25, "msg": "Invalid signature"}}).encode()
        tid = form["tid"]
        fetched.append(tid)
        trade = tmt.trade_json(
            tid=int(tid), tid_str=tid, payment="38.70", total_fee="38.70", post_fee="0.00", discount_fee="0.00",
            receiver_state="上海", receiver_city="上海市", receiver_district="黄浦区",
            orders=[{"oid": int(tid) + 1, "num_iid": 600000001, "sku_id": "4500000001", "outer_sku_id": sku,
                     "num": 3, "price": "12.90", "payment": "38.70", "title": "乌龙茶",
                     "status": "WAIT_SELLER_SEND_GOODS", "refund_status": "NO_REFUND"}],
        )
        return 200, json.dumps(trade, ensure_ascii=False).encode()

    return handler


async def run_tmc(fake: FakeTmc, top: FakeHttpServer, intake: ServiceIntake) -> TmallWorker:
    config = TmallConfig(credentials=tmt.CREDS, top_url=top.url, tmc_url=fake.url)
    async with httpx.AsyncClient() as client:
        worker = TmallWorker(config, intake, client=client, backoff=Backoff(initial=0.02, maximum=0.05),
                             pull_interval=0.1)
        task = asyncio.create_task(worker.run())
        try:
            await wait_until(lambda: not fake.pending, timeout=15)
        finally:
            worker.stop()
            await asyncio.wait_for(task, 5)
    return worker


async def test_tmc_worker_creates_the_order_and_a_duplicate_delivery_makes_no_second(services, world):
    wh, tea = await warehouse_with(world, 10)
    t1 = str(2231958349000000000 + secrets.randbelow(10**15))
    t2 = str(int(t1) + 7)
    base = 8_000_000_000_000 + secrets.randbelow(10**12)
    pay = {"tid": int(t1), "oid": int(t1) + 1, "status": "WAIT_SELLER_SEND_GOODS", "payment": "38.70"}
    fetched: list[str] = []
    intake = ServiceIntake(services)
    async with FakeHttpServer(top_api(tea, fetched)) as top:
        # the pay message, the same trade under another message id, and another trade's close
        async with FakeTmc([(base + 1, "taobao_trade_TradeBuyerPay", pay),
                            (base + 2, "taobao_trade_TradeBuyerPay", pay),
                            (base + 3, "taobao_trade_TradeClose", {"tid": int(t2), "oid": int(t2),
                                                                   "status": "TRADE_CLOSED_BY_TAOBAO"})]) as fake:
            worker = await run_tmc(fake, top, intake)
        assert worker.stats.confirmed >= 3 and worker.stats.failed == 0
        assert set(fetched) == {t1} and len(fetched) >= 2  # (more when a pull redelivered meanwhile)

        (order,) = await orders_for(services, "tmall", t1)
        assert (order["status"], order["channel_status"], order["total_fen"]) == ("allocated", "paid", 3870)
        assert await reserved(services, tea) == 3
        steps = await history_len(services, order["id"])
        for message_id in (base + 1, base + 2, base + 3):
            row = await services.pool.fetchrow("select status, kind from inbox where channel = 'tmall' "
                                               "and message_id = $1", str(message_id))
            assert row["status"] == "processed"
        assert await orders_for(services, "tmall", t2) == []  # its close is recorded, nothing to cancel yet

        # a restart: TMC redelivers message 1 (our confirmation was lost) and t2's create comes late
        async with FakeTmc([(base + 1, "taobao_trade_TradeBuyerPay", pay),
                            (base + 4, "taobao_trade_TradeBuyerPay", pay | {"tid": int(t2), "oid": int(t2)})]) as fake:
            await run_tmc(fake, top, intake)

    assert len(await orders_for(services, "tmall", t1)) == 1
    assert await history_len(services, order["id"]) == steps  # the redelivery applied nothing
    (late,) = await orders_for(services, "tmall", t2)
    assert late["status"] == "cancelled"  # its close came first: stored cancelled, nothing reserved
    assert await reserved(services, tea) == 3


# ------------------------------------------------------------------ JD poller


class CrashOn:
    """The real intake, except that the process 'dies' when it reaches one order."""

    def __init__(self, intake: ServiceIntake, external_id: str) -> None:
        self.intake, self.external_id = intake, external_id

    async def handle(self, event) -> None:  # noqa: ANN001
        if event.external_id == self.external_id:
            raise RuntimeError("process killed")
        await self.intake.handle(event)


def jd_item(sku: str) -> dict:
    return dict(itemInfoList=[{"skuId": "100012345678", "outerSkuId": sku, "skuName": "乌龙茶", "jdPrice": "12.90",
                               "itemTotal": "1"}],
                orderTotalPrice="12.90", orderSellerPrice="12.90", orderPayment="12.90", freightPrice="0.00",
                sellerDiscount="0.00")


def jd_poller(api: FakeHttpServer, intake, clock: Clock, services, client) -> JdPoller:  # noqa: ANN001
    config = JdConfig(credentials=jdt.CREDS, api_url=api.url + "/routerjson", poll_interval_s=0.05,
                      poll_overlap_s=300)
    return JdPoller(config, intake, PgWatermarkStore(services.pool), client=client, page_size=2, clock=clock,
                    initial_lookback=timedelta(hours=1), backoff=Backoff(initial=0.01, maximum=0.02))


async def test_jd_poller_with_the_pg_watermark_survives_restarts_without_repeat_or_miss(services, world):
    await services.pool.execute("delete from channel_watermarks where channel = $1", WATERMARK_KEY)
    wh, tea = await warehouse_with(world, 20)
    ids = {x: f"JD{world.uid}{x}" for x in "ABCDE"}
    jos = FakeJos()
    for x, minute in (("A", 30), ("B", 45), ("C", 50)):
        jos.put(ids[x], at(9, minute), **jd_item(tea))
    clock = Clock(at(10, 0))
    intake = ServiceIntake(services)
    store = PgWatermarkStore(services.pool)
    try:
        async with FakeHttpServer(jos.handler) as api, httpx.AsyncClient() as client:
            # the first process dies at C: A and B are in, the watermark has not moved
            with pytest.raises(RuntimeError):
                await jd_poller(api, CrashOn(intake, ids["C"]), clock, services, client).poll_once()
            assert await store.get(WATERMARK_KEY) is None
            a_row = (await orders_for(services, "jd", ids["A"]))[0]
            a_steps = await history_len(services, a_row["id"])

            # restart: the window is read again; A and B are not applied twice, C is not missed
            report = await jd_poller(api, intake, clock, services, client).poll_once()
            assert report.handled == 3
            assert await store.get(WATERMARK_KEY) == at(10, 0)
            assert await history_len(services, a_row["id"]) == a_steps
            assert await reserved(services, tea) == 3

            # ten minutes later, after another restart: D is new, E was indexed late (modified just
            # before the watermark), A was cancelled
            clock.now = at(10, 10)
            jos.put(ids["D"], at(10, 5), **jd_item(tea))
            jos.put(ids["E"], at(9, 58), **jd_item(tea))
            jos.put(ids["A"], at(10, 8), orderState="TRADE_CANCELED", **jd_item(tea))
            report = await jd_poller(api, intake, clock, services, client).poll_once()
            assert report.start == at(9, 55) and report.end == at(10, 10)
            stored = await services.pool.fetchval("select value from channel_watermarks where channel = $1",
                                                  WATERMARK_KEY)
            assert datetime.fromisoformat(stored) == at(10, 10)
    finally:
        await services.pool.execute("delete from channel_watermarks where channel = $1", WATERMARK_KEY)

    statuses = {}
    for x, external_id in ids.items():
        rows = await orders_for(services, "jd", external_id)
        assert len(rows) == 1, f"order {x}: {len(rows)} rows"  # no miss, no repeat
        statuses[x] = rows[0]["status"]
    assert statuses == {"A": "cancelled", "B": "allocated", "C": "allocated", "D": "allocated", "E": "allocated"}
    assert await reserved(services, tea) == 4  # B, C, D, E; A's unit given back
    assert (await services.inventory.available([wh], [tea]))[wh][tea] == 16


async def test_pg_watermark_never_moves_back(services):
    key = f"test:{secrets.token_hex(4)}"
    store = PgWatermarkStore(services.pool)
    assert await store.get(key) is None
    await store.set(key, at(10, 0))
    await store.set(key, at(9, 0))  # an overlapping poller with an older window
    assert await store.get(key) == at(10, 0)
    await store.set(key, datetime(2024, 6, 18, 3, 0, 1, tzinfo=timezone.utc))  # 11:00:01 in Beijing
    assert await store.get(key) == at(11, 0, 1)
    await services.pool.execute("delete from channel_watermarks where channel = $1", key)


# ------------------------------------------------------------------ `oms channels jd` as a process


def _env(settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMS_JD_", "OMS_TMALL_"))}
    return env | {"OMS_DATABASE_URL": settings.database_url, "OMS_REDIS_URL": settings.redis_url,
                  "OMS_DATA_DIR": str(settings.data_dir), "OMS_ADMIN_TOKEN": settings.admin_token, **extra}


async def test_oms_channels_jd_runs_until_sigterm(services, settings, world):
    await services.pool.execute("delete from channel_watermarks where channel = $1", WATERMARK_KEY)
    _, tea = await warehouse_with(world, 5)
    jos = FakeJos()
    external_id = f"JD{world.uid}CLI"
    jos.put(external_id, datetime.now(BJ).replace(microsecond=0) - timedelta(minutes=1), **jd_item(tea))
    try:
        async with FakeHttpServer(jos.handler) as api:
            env = _env(settings, OMS_JD_APP_KEY="jd-app", OMS_JD_APP_SECRET="jd-secret",
                       OMS_JD_ACCESS_TOKEN="jd-token", OMS_JD_API_URL=api.url + "/routerjson",
                       OMS_JD_POLL_INTERVAL_S="0.2")
            proc = await asyncio.create_subprocess_exec(BIN / "oms", "channels", "jd", env=env,
                                                        stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE)
            try:
                async def stored() -> None:
                    # the order, then the watermark the poll saves after it (SIGTERM between the two
                    # would be a fair stop, but this test is about both being kept)
                    while not (await orders_for(services, "jd", external_id) and await services.pool.fetchval(
                            "select value from channel_watermarks where channel = $1", WATERMARK_KEY)):
                        assert proc.returncode is None, (await proc.stderr.read()).decode()
                        await asyncio.sleep(0.1)
                await asyncio.wait_for(stored(), 30)
                proc.send_signal(signal.SIGTERM)
                out, err = await asyncio.wait_for(proc.communicate(), 15)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        assert proc.returncode == 0, err.decode()
        assert b"oms channels jd: running" in out
        assert len(jos.searches) >= 1
        (order,) = await orders_for(services, "jd", external_id)
        assert order["status"] == "allocated"
        assert await services.pool.fetchval("select value from channel_watermarks where channel = $1",
                                            WATERMARK_KEY) is not None
    finally:
        await services.pool.execute("delete from channel_watermarks where channel = $1", WATERMARK_KEY)


async def test_oms_channels_refuses_to_start_unconfigured(settings):
    proc = await asyncio.create_subprocess_exec(BIN / "oms", "channels", "tmall", env=_env(settings),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert b"OMS_TMALL_APP_KEY" in err
