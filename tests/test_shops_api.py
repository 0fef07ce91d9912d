"""Shops through the admin API: write-only credentials, listings, sellable derivation, and the shop
a push lands in (two Tmall shops with different keys)."""

from __future__ import annotations

import json
import secrets
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from oms.api import webhooks as webhooks_api
from oms.channels.config import ChannelsConfig

sys.path.insert(0, str(Path(__file__).parent / "channels"))
sys.path.insert(0, str(Path(__file__).parent / "adapters"))
import test_adapter_tmall as tmt  # noqa: E402
from channel_fakes import FakeHttpServer, Request  # noqa: E402

LAT, LNG = 31.2304, 121.4737


async def test_credentials_are_write_only_and_bad_shops_are_refused(client, world):
    shop = world.id("shop")
    r = await client.put(f"/shops/{shop}", json={"channel": "tmall", "brand": "B",
                                                 "credentials": {"app_key": "k1", "app_secret": "s3cret"}})
    assert r.status_code == 201, r.text
    assert "s3cret" not in r.text and r.json()["has_credentials"] is True and r.json()["app_key"] == "k1"
    r = await client.put(f"/shops/{shop}", json={"channel": "tmall", "brand": "B2"})  # credentials kept
    assert r.status_code == 200 and r.json()["has_credentials"] is True
    got = await client.get(f"/shops/{shop}")
    assert got.status_code == 200 and "s3cret" not in got.text and got.json()["brand"] == "B2"
    assert all("s3cret" not in json.dumps(s) for s in (await client.get("/shops")).json())
    bad = await client.put(f"/shops/{shop}", json={"channel": "tmall", "share": {"kind": "ratio", "value": "1.5"}})
    assert bad.status_code == 400 and bad.json()["field"] == "share.value"
    bad = await client.put(f"/shops/{shop}", json={"channel": "ebay"})
    assert bad.status_code == 400 and bad.json()["field"] == "channel"
    assert (await client.get("/shops/nope-" + world.uid)).status_code == 404


async def test_sellable_shows_pool_safety_and_share(client, world):
    wh = await world.node("wh", LAT, LNG, kind="warehouse", capabilities=("ship",), radius=0)
    st = await world.node("st", LAT, LNG, capabilities=("delivery",))
    sku = await world.sku("tea")
    await world.stock(wh, sku, 20)
    await world.stock(st, sku, 6)
    shop = world.id("q")
    r = await client.put(f"/shops/{shop}", json={"channel": "douyin", "share": {"kind": "quota", "value": "12"},
                                                 "serves": {"modes": ["ship"], "nodes": [wh]},
                                                 "credentials": {"app_key": "k" + world.uid, "app_secret": "x"}})
    assert r.status_code == 201, r.text
    assert (await client.put("/safety-stock", json={"node_id": wh, "units": 3})).status_code == 200
    assert (await client.put("/safety-stock", json={"node_id": wh, "sku": sku, "units": 4})).status_code == 200
    s = (await client.get(f"/shops/{shop}/sellable", params={"sku": sku})).json()
    # only the ship-capable warehouse: 20 - 4 (SKU at node beats node) = 16, quota 12
    assert [(n["node_id"], n["counted"], n["safety_rule"]) for n in s["nodes"]] == [(wh, 16, "sku_at_node")]
    assert (s["pool"], s["sellable"]) == (16, 12)
    one_hour = world.id("h")
    await client.put(f"/shops/{one_hour}", json={"channel": "douyin", "serves": {"modes": ["delivery"], "nodes": [st]}})
    assert (await client.get(f"/shops/{one_hour}/sellable", params={"sku": sku})).json()["sellable"] == 6


async def test_push_signed_with_shop_b_secret_lands_as_shop_b(client, app, services, world):
    wh = await world.node("wh", LAT, LNG, kind="warehouse", capabilities=("ship",), radius=0)
    tea = await world.sku("tea")
    await world.stock(wh, tea, 10)
    keys = {"A": ("ka" + world.uid, "secret-a"), "B": ("kb" + world.uid, "secret-b")}
    seen: list[str] = []

    async def top(request: Request) -> tuple[int, bytes]:  # taobao.trade.fullinfo.get, per shop's secret
        form = request.form()
        secret = dict(keys.values())[form["app_key"]]
        assert form["sign"] == tmt.independent_top_md5(form, secret)
        seen.append(form["app_key"])
        trade = tmt.trade_json(tid=int(form["tid"]), tid_str=form["tid"], payment="12.90", total_fee="12.90",
                               post_fee="0.00", discount_fee="0.00",
                               orders=[{"oid": int(form["tid"]) + 1, "sku_id": "1", "outer_sku_id": tea, "num": 1,
                                        "price": "12.90", "payment": "12.90"}])
        return 200, json.dumps(trade, ensure_ascii=False).encode()

    async with FakeHttpServer(top) as api:
        for name, (key, secret) in keys.items():
            r = await client.put(f"/shops/{world.id(name)}", json={
                "channel": "tmall", "api_url": api.url, "credentials": {"app_key": key, "app_secret": secret,
                                                                        "session": "s"}})
            assert r.status_code == 201, r.text
        webhooks_api.configure(app, ChannelsConfig())
        try:
            now = datetime.now(timezone(timedelta(hours=8))).strftime("%Y-%m-%d %H:%M:%S")
            tid = str(2231958349000000000 + secrets.randbelow(10**15))
            body = json.dumps({"id": 8000000000000 + secrets.randbelow(10**9), "topic": "taobao_trade_TradeBuyerPay",
                               "pub_time": now, "user_nick": "shop-b",
                               "content": json.dumps({"tid": int(tid), "status": "WAIT_SELLER_SEND_GOODS"})}).encode()
            key_b, secret_b = keys["B"]
            query = {"app_key": key_b, "timestamp": now, "sign_method": "md5"}
            query["sign"] = tmt.independent_top_md5(query, secret_b, body)
            r = await client.post("/webhooks/tmall", params=query, content=body)
            assert (r.status_code, r.content) == (200, b'{"success":true}'), r.text
            # shop A's key with shop B's signature: refused, nothing stored
            forged = {**query, "app_key": keys["A"][0]}
            assert (await client.post("/webhooks/tmall", params=forged, content=body)).status_code == 401
        finally:
            await webhooks_api.aclose(app)
    shop = await services.pool.fetchval("select shop_id from orders where channel = 'tmall' and external_id = $1", tid)
    assert shop == world.id("B") and seen == [key_b]
