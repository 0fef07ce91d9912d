"""Stock pushes as the platforms receive them: each recorded request against the field list of
outbound.md (full values only; Douyin's idempotent_id and JD's stockRfId unique per send)."""

from __future__ import annotations

import json

from shops_testkit import dispatcher, drain, list_sku, make_shop
from tests.fakes.platforms import FakeDouyin, FakeJd, FakeTmall

LAT, LNG = 29.8683, 121.5440  # 宁波 (Ningbo): away from the stores other tests count


async def test_recorded_stock_pushes_have_every_field_outbound_md_requires(client, services, world):
    wh = await world.node("wh", LAT, LNG, kind="warehouse", capabilities=("ship",), radius=0)
    sku = await world.sku("tea")
    await world.stock(wh, sku, 12)
    async with FakeTmall(app_key=world.id("tmk")) as tm, FakeJd(app_key=world.id("jdk")) as jd, \
            FakeDouyin(app_key=world.id("dyk")) as dy:
        shops = {"tmall": world.id("tm"), "jd": world.id("jd"), "douyin": world.id("dy")}
        for channel, fake in (("tmall", tm), ("jd", jd), ("douyin", dy)):
            await make_shop(client, shops[channel], channel, fake)
        await list_sku(client, shops["tmall"], sku, "5000021", item="6000021")
        await list_sku(client, shops["jd"], sku, "7000021")
        await list_sku(client, shops["douyin"], sku, "8000021", item="9000021")
        await drain(dispatcher(services))
        await world.stock(wh, sku, 10)
        await drain(dispatcher(services))

        # §1.2 taobao.item.quantity.update: num_iid, sku_id, quantity, type 1 (full)
        tmall = [r.form() for r in tm.calls("taobao.item.quantity.update")]
        assert [f["quantity"] for f in tmall] == ["12", "10"]
        assert all((f["num_iid"], f["sku_id"], f["type"]) == ("6000021", "5000021", "1") for f in tmall)

        # §2.2 jingdong.ware.stock.sku.set: req{stockRfId, skuStocks[{skuId, stockNum}]}, no incrStockNum
        jd_reqs = [json.loads(r.form()["360buy_param_json"])["req"] for r in jd.calls("jingdong.ware.stock.sku.set")]
        assert [r["skuStocks"] for r in jd_reqs] == [[{"skuId": 7000021, "stockNum": 12}],
                                                    [{"skuId": 7000021, "stockNum": 10}]]
        assert len({r["stockRfId"] for r in jd_reqs}) == 2

        # §3.3 /sku/syncStock: sku_id, product_id, stock_num, incremental false (full), idempotent_id
        dy_reqs = [json.loads(r.body) for r in dy.calls("sku.syncStock")]
        assert [(b["sku_id"], b["product_id"], b["stock_num"], b["incremental"]) for b in dy_reqs] == [
            (8000021, 9000021, 12, False), (8000021, 9000021, 10, False)]
        assert len({b["idempotent_id"] for b in dy_reqs}) == 2
        assert all(r.path == "/sku/syncStock" for r in dy.calls("sku.syncStock"))
        assert tm.problems == jd.problems == dy.problems == []
