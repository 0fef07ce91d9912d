"""A newcomer's small expectations: GET /skus, URL-safe order cursors, the admin token on the store
API, /metrics behind the admin token, product names on pick lists, regions read from address text."""

from __future__ import annotations

import msgspec

from oms.config import Settings


async def test_metrics_need_the_admin_token_unless_made_public(client, services, monkeypatch):
    assert (await client.get("/metrics", headers={"Authorization": ""})).status_code == 401
    wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["field"] == "authorization"
    assert (await client.get("/metrics")).status_code == 200
    monkeypatch.setattr(services, "settings", msgspec.structs.replace(services.settings, metrics_public=True))
    assert (await client.get("/metrics", headers={"Authorization": ""})).status_code == 200


def test_metrics_public_is_read_from_the_environment():
    assert Settings.from_env({"OMS_METRICS_PUBLIC": "1", "OMS_ADMIN_TOKEN": "t"}).metrics_public is True
    assert Settings.from_env({"OMS_ADMIN_TOKEN": "t"}).metrics_public is False


async def test_skus_are_listed_in_pages_and_filtered_by_prefix(client, world):
    made = [await world.sku(f"pg{i}", 100 * i + 100) for i in range(5)]
    prefix = "pg"
    seen, after = [], None
    for _ in range(10):
        params = {"prefix": prefix, "limit": 2, **({"after": after} if after else {})}
        r = await client.get("/skus", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        seen += [s["sku"] for s in page["items"]]
        after = page["next_after"]
        if after is None:
            break
    assert set(made) <= set(seen) and seen == sorted(seen) and all(s.startswith(prefix) for s in seen)
    one = (await client.get("/skus", params={"prefix": made[2]})).json()["items"][0]
    assert one == {"sku": made[2], "name": "pg2", "unit_price": 300}
    bad = await client.get("/skus", params={"after": "not a cursor!"})
    assert bad.status_code == 400 and bad.json()["field"] == "after"
    assert (await client.get("/skus", headers={"Authorization": ""})).status_code == 401


async def test_the_orders_cursor_pastes_into_a_url_unescaped(client, world):
    node = await world.node("cur", 31.2304, 121.4737)
    sku = await world.sku("cur-sku")
    await world.stock(node, sku, 10)
    for i in range(3):
        assert (await world.post_order(world.order(f"cur-{i}", [(sku, 1)], channel="manual"))).status_code == 201
    first = (await client.get("/orders", params={"channel": "manual", "limit": 2})).json()
    cursor = first["next_before"]
    assert cursor and all(c.isalnum() or c in "-_" for c in cursor)
    # pasted into the URL by hand, no escaping
    second = (await client.get(f"/orders?channel=manual&limit=2&before={cursor}")).json()
    mine = {world.id(f"cur-{i}") for i in range(3)}
    ext = [o["external_id"] for o in first["items"] + second["items"]]
    assert ext[:3] == [world.id("cur-2"), world.id("cur-1"), world.id("cur-0")] and mine <= set(ext)
    r = await client.get("/orders", params={"before": "2024-01-01T00:00:00+00:00|o1"})
    assert r.status_code == 400 and r.json()["field"] == "before"


async def test_out_of_stock_names_the_node_where_the_sku_ran_out(client, world):
    node = await world.node("oos", 31.2304, 121.4737)
    sku = await world.sku("oos-sku")
    await world.stock(node, sku, 1)
    assert (await world.post_order(world.order("oos-1", [(sku, 1)]))).json()["status"] == "allocated"
    short = await world.post_order(world.order("oos-2", [(sku, 900)]))
    assert short.json()["status"] == "backordered"
    s = (await client.get("/ops/summary", params={"fresh": "true"})).json()
    row = next(r for r in s["out_of_stock"] if r["sku"] == sku)
    assert [n["node_id"] for n in row["ran_out_at"]] == [node] and row["ran_out_count"] == 1
    assert row["available_now"] == 0 and row["example"]


def test_region_is_read_from_the_address_text_when_the_channel_gives_only_text():
    from adapters import jd
    from adapters.geo import region_from_text

    assert region_from_text("上海市黄浦区南京东路100号") == ("上海市", "上海市", "黄浦区")
    assert region_from_text("广东深圳市南山区科技园") == ("广东省", "深圳市", "南山区")
    assert region_from_text("no place at all") == (None, None, None)
    order = jd.order_from_jd(msgspec.convert({
        "orderId": "301", "orderState": "WAIT_SELLER_STOCK_OUT", "orderPayment": "10.00",
        "consigneeInfo": {"fullname": "王*", "fullAddress": "浙江省杭州市西湖区文三路****"},
        "itemInfoList": [{"skuId": "1", "outerSkuId": "SKU-1", "jdPrice": "10.00", "itemTotal": "1"}]}, jd.JdOrder))
    d = order.destination
    assert (d.province, d.city, d.district, d.approximate) == ("浙江省", "杭州市", "西湖区", True)
    assert 30.0 < d.lat < 30.5 and 119.9 < d.lng < 120.3
