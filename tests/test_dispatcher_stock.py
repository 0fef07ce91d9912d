"""Stock publication end to end: orders reserve in Redis, the outbox (same transaction) feeds the
dispatcher, which tells fake Tmall / JD / Douyin servers on 127.0.0.1 each shop's sellable value."""

from __future__ import annotations

import asyncio
import time

import pytest

from shops_testkit import dispatcher, drain, list_sku, make_shop, sellable
from tests.fakes.platforms import FakeDouyin, FakeJd, FakeTmall

LAT, LNG = 31.2304, 121.4737


async def _setup(world, client, on_hand: int):
    wh = await world.node("wh", LAT, LNG, kind="warehouse", capabilities=("ship",), radius=0)
    sku = await world.sku("tea")
    await world.stock(wh, sku, on_hand)
    return wh, sku


def tmall_value(fake: FakeTmall, item: str, sku_id: str | None = None) -> int | None:
    return fake.listings.get((item, sku_id))


@pytest.mark.parametrize("safety", [0, 5])
async def test_hundred_units_sold_through_four_shops_converge_on_the_pool(client, services, world, safety):
    wh, sku = await _setup(world, client, 100)
    if safety:
        r = await client.put("/safety-stock", json={"sku": sku, "units": safety})
        assert r.status_code == 200, r.text
    async with FakeTmall(app_key=world.id("tmk")) as tm, FakeJd(app_key=world.id("jdk")) as jd, FakeDouyin(app_key=world.id("dyk")) as dy:
        shops = {"tmall": world.id("tm"), "jd": world.id("jd"), "douyin": world.id("dy"), "miniprogram": world.id("mp")}
        await make_shop(client, shops["tmall"], "tmall", tm)
        await make_shop(client, shops["jd"], "jd", jd)
        await make_shop(client, shops["douyin"], "douyin", dy)
        await make_shop(client, shops["miniprogram"], "miniprogram", publish_stock=False)
        await list_sku(client, shops["tmall"], sku, "5000001", item="6000001")
        await list_sku(client, shops["jd"], sku, "7000001")
        await list_sku(client, shops["douyin"], sku, "8000001", item="9000001")
        d = dispatcher(services)
        await drain(d)
        sold, channels, n = 0, list(shops), 0
        while sold < 100:
            qty = min(1 + n % 7, 100 - sold)
            channel = channels[n % 4]
            body = world.order(f"o{n}", [(sku, qty)], mode="ship", channel=channel, shop_id=shops[channel])
            r = await world.post_order(body)
            assert r.status_code == 201 and r.json()["status"] == "allocated", r.text
            sold, n = sold + qty, n + 1
            marks = {name: len(f.requests) for name, f in (("tm", tm), ("jd", jd), ("dy", dy))}
            await drain(d, quiet_passes=1)
            truth = max(100 - sold - safety, 0)
            assert tmall_value(tm, "6000001", "5000001") == truth
            assert jd.stock[(7000001, None)] == truth
            assert dy.stock[(8000001, None)] == truth
            assert (await sellable(client, shops["miniprogram"], sku))["sellable"] == truth
            # nobody was told more than the pool had while this round was sent
            pool = 100 - sold
            for fake, name in ((tm, "tm"), (jd, "jd"), (dy, "dy")):
                for req in fake.requests[marks[name]:]:
                    assert _value(req) <= max(pool - safety, 0)
        assert tm.problems == jd.problems == dy.problems == []
        # coalesced: far fewer calls than changes would need one by one
        assert len(tm.requests) <= n + 2


def _value(req) -> int:  # noqa: ANN001
    import json

    if req.call == "taobao.item.quantity.update":
        return int(req.form()["quantity"])
    if req.call == "jingdong.ware.stock.sku.set":
        return json.loads(req.form()["360buy_param_json"])["req"]["skuStocks"][0]["stockNum"]
    return json.loads(req.body)["stock_num"]


async def test_sixty_forty_ratio_over_seven_units_tells_four_and_two(client, services, world):
    wh, sku = await _setup(world, client, 7)
    async with FakeTmall(app_key=world.id("shopA"), app_secret="secretA") as a, FakeTmall(app_key=world.id("shopB"), app_secret="secretB") as b:
        await make_shop(client, world.id("A"), "tmall", a, share={"kind": "ratio", "value": "0.6"})
        await make_shop(client, world.id("B"), "tmall", b, share={"kind": "ratio", "value": "0.4"})
        await list_sku(client, world.id("A"), sku, "1", item="1")
        await list_sku(client, world.id("B"), sku, "2", item="2")
        await drain(dispatcher(services))
        assert tmall_value(a, "1") == 4 and tmall_value(b, "2") == 2
        explained = await sellable(client, world.id("A"), sku)
        assert explained["sellable"] == 4 and explained["pool"] == 7 and "floor(7 x 0.6)" in explained["derivation"]
        assert a.problems == b.problems == []


async def test_rate_limit_reply_makes_the_next_call_wait_the_seconds_named(client, services, world):
    wh, sku = await _setup(world, client, 9)
    async with FakeTmall(app_key=world.id("tmk")) as tm:
        shop = world.id("tm")
        await make_shop(client, shop, "tmall", tm)
        await list_sku(client, shop, sku, "3", item="3")
        tm.rate_limit_next(1, seconds=2)
        d = dispatcher(services)
        task = asyncio.create_task(d.run())
        try:
            limited_at = None
            deadline = time.monotonic() + 15
            while tmall_value(tm, "3") != 9:
                assert time.monotonic() < deadline, "value never arrived after the ban"
                if limited_at is None and tm.requests:
                    limited_at = time.monotonic()
                await asyncio.sleep(0.01)
            assert len(tm.calls("taobao.item.quantity.update")) == 2
            assert time.monotonic() - limited_at >= 1.95
        finally:
            d.stop()
            await task
        row = await services.pool.fetchrow("select sync_paused_until from shops where id = $1", shop)
        assert row["sync_paused_until"] is not None


async def test_platform_errors_retry_then_dead_letter_keeps_the_error_and_resends(client, services, world):
    wh, sku = await _setup(world, client, 3)
    async with FakeDouyin(app_key=world.id("dyk")) as dy:
        shop = world.id("dy")
        await make_shop(client, shop, "douyin", dy)
        dy.fail_next(2)  # 500 twice: retried, then taken
        await list_sku(client, shop, sku, "41", item="4")
        await drain(dispatcher(services), quiet_passes=8)
        assert dy.stock[(41, None)] == 3
        dy.business_error_next(1, code="isv.business-failed:10001", message="商品不存在")
        await world.stock(wh, sku, 2)
        await drain(dispatcher(services), quiet_passes=3)
        dead = [x for x in (await client.get("/outbox/dead")).json() if x["shop_id"] == shop]
        assert len(dead) == 1 and "商品不存在" in dead[0]["error"]
        assert dy.stock[(41, None)] == 3  # not told yet
        r = await client.post("/outbox/resend", params={"shop_id": shop})
        assert r.json()["stock"] == 1
        await drain(dispatcher(services))
        assert dy.stock[(41, None)] == 2
        assert not [x for x in (await client.get("/outbox/dead")).json() if x["shop_id"] == shop]


async def test_ops_summary_and_metrics_show_sync_lag_and_queues(client, services, world):
    wh, sku = await _setup(world, client, 4)
    async with FakeJd(app_key=world.id("jdk")) as jd:
        shop = world.id("jd")
        await make_shop(client, shop, "jd", jd)
        await list_sku(client, shop, sku, "51")
        await drain(dispatcher(services))
        assert jd.stock[(51, None)] == 4
    summary = (await client.get("/ops/summary", params={"fresh": "true"})).json()
    jd_sync = next(c for c in summary["channel_sync"]["channels"] if c["channel"] == "jd")
    assert jd_sync["stock_lag_p50_ms"] is not None and jd_sync["stock_lag_p99_ms"] >= jd_sync["stock_lag_p50_ms"]
    assert any(s["shop_id"] == shop and s["last_full_resync_at"] for s in summary["channel_sync"]["shops"])
    text = (await client.get("/metrics")).text
    assert 'oms_sync_lag_seconds_count{channel="jd",kind="stock"}' in text
    assert f'oms_shop_last_full_resync_timestamp{{shop="{shop}"}}' in text
    assert "oms_sync_pending" in text
