"""JD and WeChat hand-over confirmations through the dispatcher, and for every platform a recorded
request checked against the field list of outbound.md (the fake also verifies the signature)."""

from __future__ import annotations

import json
import re
import secrets
from datetime import datetime, timezone

import pytest

from shops_testkit import dispatcher, drain, make_shop
from test_handover_confirm import message_statuses, ship
from test_handover_confirm import order as _order
from tests.fakes.platforms import FakeDouyin, FakeJd, FakeTmall, FakeWechat

TOP_COMMON = {"method", "app_key", "session", "timestamp", "v", "sign_method", "sign"}
JOS_COMMON = {"360buy_param_json", "access_token", "app_key", "method", "timestamp", "v", "sign"}
DOUYIN_QUERY = {"app_key", "method", "v", "sign", "timestamp", "access_token", "sign_method"}
MCHID = "1900000001"  # shops_testkit.creds_of gives the mini-program shop this merchant id

# away from 人民广场, where other tests count on the 30 nearest stores: 苏州 (Suzhou)
HERE_LAT, HERE_LNG = 31.2989, 120.5853


async def store(world, name: str, *, dlat: float = 0.0) -> tuple[str, dict]:  # noqa: ANN001
    node = await world.node(name, HERE_LAT + dlat, HERE_LNG, capabilities=("ship", "delivery", "pickup"))
    r = await world.c.post(f"/nodes/{node}/tokens", json={"label": "t"})
    assert r.status_code == 201, r.text
    return node, {"Authorization": f"Bearer {r.json()['token']}"}


async def order(world, channel: str, shop: str, ext: str, lines, mode: str = "ship", **kw) -> dict:  # noqa: ANN001
    return await _order(world, channel, shop, ext, lines, mode, lat=HERE_LAT, lng=HERE_LNG, **kw)


def jd_business(req) -> dict:  # noqa: ANN001 - tests.fakes.platforms.Recorded
    return json.loads(req.form()["360buy_param_json"])


async def jd_shop(client, world, jd) -> str:  # noqa: ANN001
    shop = world.id("jd")
    await make_shop(client, shop, "jd", jd)
    return shop


def jd_order_id() -> str:
    return str(30000000000 + secrets.randbelow(10**9))


# ---------------------------------------------------------------- JD jingdong.pop.order.shipment
async def test_jd_split_order_is_confirmed_once_when_the_last_part_leaves_with_every_waybill(client, services, world):
    a, auth_a = await store(world, "ja")
    b, auth_b = await store(world, "jb", dlat=0.002)
    tea, cup = await world.sku("tea"), await world.sku("cup")
    await world.stock(a, tea, 1)
    await world.stock(b, cup, 1)
    async with FakeJd(app_key=world.id("jdk")) as jd:
        shop = await jd_shop(client, world, jd)
        ext = jd_order_id()
        jd.add_order(ext)
        o = await order(world, "jd", shop, ext, [(tea, 1, "1"), (cup, 1, "2")])
        assert len(o["fulfillments"]) == 2
        by_node = {f["node_id"]: f for f in o["fulfillments"]}
        assert set(by_node) == {a, b}
        await ship(world, a, auth_a, o["id"], carrier="zto", tracking_no="ZT100")
        await drain(dispatcher(services))
        assert jd.calls("jingdong.pop.order.shipment") == []  # JD ships per order: waits for the other part
        await ship(world, b, auth_b, o["id"], carrier="sf", tracking_no="SF200")
        await drain(dispatcher(services))
        (call,) = jd.calls("jingdong.pop.order.shipment")
        corps, numbers = jd_business(call)["logiCoprId"].split("|"), jd_business(call)["logiNo"].split("|")
        assert sorted(zip(corps, numbers)) == [("1499", "ZT100"), ("467", "SF200")]
        assert jd.accepted == {ext: 1} and jd.orders[ext].state == "WAIT_GOODS_RECEIVE_CONFIRM"
        assert await message_statuses(services, o["id"]) == ["done", "done"]
        assert jd.problems == []


async def test_jd_one_hour_delivery_by_the_store_rider_is_merchant_self_delivery(client, services, world):
    node, auth = await store(world, "jr")
    tea = await world.sku("tea")
    await world.stock(node, tea, 2)
    async with FakeJd(app_key=world.id("jdk")) as jd:
        shop = await jd_shop(client, world, jd)
        ext = jd_order_id()
        jd.add_order(ext)
        o = await order(world, "jd", shop, ext, [(tea, 1, "1")], mode="delivery")
        await ship(world, node, auth, o["id"])  # own rider: no carrier, no tracking
        await drain(dispatcher(services))
        assert jd.orders[ext].shipments == [{"logiCoprId": "1274", "logiNo": ""}]
        assert jd.accepted == {ext: 1} and jd.problems == []


async def test_jd_500_then_accepted_gives_one_shipment_after_asking_the_order_state(client, services, world):
    node, auth = await store(world, "j5")
    tea = await world.sku("tea")
    await world.stock(node, tea, 2)
    async with FakeJd(app_key=world.id("jdk")) as jd:
        shop = await jd_shop(client, world, jd)
        ext = jd_order_id()
        jd.add_order(ext)
        o = await order(world, "jd", shop, ext, [(tea, 1, "1")])
        jd.fail_next(1, call="jingdong.pop.order.shipment")
        await ship(world, node, auth, o["id"], carrier="yto", tracking_no="YT5")
        await drain(dispatcher(services), quiet_passes=6)
        assert len(jd.calls("jingdong.pop.order.shipment")) == 2
        assert len(jd.calls("jingdong.pop.order.get")) == 1  # still open: sent again
        assert jd.accepted == {ext: 1}
        assert await message_statuses(services, o["id"]) == ["done"]


# ---------------------------------------------------------------- WeChat upload_shipping_info
async def wechat_order(client, world, wx, node: str, mode: str, **buyer) -> tuple[dict, str]:  # noqa: ANN001
    shop = world.id("mp")
    await make_shop(client, shop, "miniprogram", wx, publish_stock=False)
    tea = await world.sku("tea")
    await world.stock(node, tea, 3)
    ext = "MP" + secrets.token_hex(6)
    encrypted = {"openid": "o-payer", **buyer}
    kw = {"buyer": {"encrypted": encrypted}}
    if mode == "pickup":
        kw["pickup"] = node
    o = await order(world, "miniprogram", shop, ext, [(tea, 2, "1")], mode=mode, **kw)
    return o, ext


async def hand_over(client, world, node: str, auth: dict, o: dict, mode: str) -> None:  # noqa: ANN001
    if mode == "pickup":
        r = await client.post(f"/stores/{node}/orders/{o['id']}/picked", headers=auth)
        assert r.status_code == 200, r.text
        code = (await client.get(f"/orders/{o['id']}")).json()["fulfillments"][0]["pickup_code"]
        r = await client.post(f"/stores/{node}/pickups/{code}", headers=auth)
        assert r.status_code == 200, r.text
    elif mode == "ship":
        await ship(world, node, auth, o["id"], carrier="zto", tracking_no="ZT777")
    else:
        await ship(world, node, auth, o["id"])


@pytest.mark.parametrize(("mode", "logistics_type"), [("ship", 1), ("delivery", 2), ("pickup", 4)])
async def test_wechat_upload_names_the_logistics_type_of_the_delivery_mode(client, services, world, mode,
                                                                          logistics_type):
    node, auth = await store(world, "w" + mode[:2])
    async with FakeWechat() as wx:
        o, ext = await wechat_order(client, world, wx, node, mode)
        wx.add_payment(f"{MCHID}/{ext}", openid="o-payer")
        await hand_over(client, world, node, auth, o, mode)
        await drain(dispatcher(services))
        (upload,) = wx.payments[f"{MCHID}/{ext}"].uploads
        assert upload["logistics_type"] == logistics_type and upload["delivery_mode"] == 1
        assert upload["order_key"] == {"order_number_type": 1, "mchid": MCHID, "out_trade_no": ext}
        (entry,) = upload["shipping_list"]
        assert "x2" in entry["item_desc"]
        if logistics_type == 1:
            assert (entry["tracking_no"], entry["express_company"]) == ("ZT777", "ZTO")
        else:
            assert "tracking_no" not in entry and "express_company" not in entry
        assert wx.accepted == {f"{MCHID}/{ext}": 1} and wx.problems == []
        assert await message_statuses(services, o["id"]) == ["done"]


async def test_wechat_payment_not_yet_visible_is_retried_a_minute_later_not_dead(client, services, world):
    node, auth = await store(world, "wn")
    async with FakeWechat() as wx:
        tx = "4200000000" + secrets.token_hex(6)
        o, _ = await wechat_order(client, world, wx, node, "ship", transaction_id=tx)
        wx.add_payment(tx, openid="o-payer", not_found_lookups=1)  # 10060001 once: "wait a minute"
        await hand_over(client, world, node, auth, o, "ship")
        d = dispatcher(services)
        await drain(d)
        row = await services.pool.fetchrow(
            "select status, last_code, next_at - now() as wait from outbox where order_id = $1", o["id"])
        assert row["status"] == "pending" and row["last_code"] == "10060001"
        assert row["wait"].total_seconds() >= 55  # the minute WeChat asks for, not the short backoff
        assert wx.payments[tx].uploads == []
        await services.pool.execute("update outbox set next_at = now() where order_id = $1", o["id"])  # a minute on
        await drain(d)
        (upload,) = wx.payments[tx].uploads
        assert upload["order_key"] == {"order_number_type": 2, "transaction_id": tx}
        assert wx.accepted == {tx: 1} and await message_statuses(services, o["id"]) == ["done"]


# ---------------------------------------------------------------- a recorded request per platform vs outbound.md
def fields_present(mapping: dict, names: set[str]) -> set[str]:
    """The names of `names` missing or empty in `mapping`."""
    return {n for n in names if mapping.get(n) in (None, "")}


async def test_recorded_tmall_offline_send_has_every_field_outbound_md_requires(client, services, world):
    node, auth = await store(world, "ft")
    tea = await world.sku("tea")
    await world.stock(node, tea, 2)
    async with FakeTmall(app_key=world.id("tmk"), omnichannel=True) as tm:
        shop = world.id("tm")
        await make_shop(client, shop, "tmall", tm)
        tid = str(4400000000000000000 + secrets.randbelow(10**15))
        tm.add_trade(tid, oids=["51"])
        o = await order(world, "tmall", shop, tid, [(tea, 1, "51")])
        await ship(world, node, auth, o["id"], carrier="sf", tracking_no="SF51")
        await drain(dispatcher(services))
        (req,) = tm.calls("taobao.logistics.offline.send")
        form = req.form()
        # §1.1: tid, out_sid, company_code; feature retailStoreId/retailStoreType (omnichannel: required)
        assert fields_present(form, TOP_COMMON | {"tid", "out_sid", "company_code", "feature"}) == set()
        assert (form["tid"], form["out_sid"], form["company_code"]) == (tid, "SF51", "SF")
        feature = dict(p.split("=", 1) for p in form["feature"].split(";"))
        assert feature == {"retailStoreId": node, "retailStoreType": "STORE"}
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", form["timestamp"]) and form["v"] == "2.0"
        assert tm.problems == []


async def test_recorded_jd_shipment_has_every_field_outbound_md_requires(client, services, world):
    node, auth = await store(world, "fj")
    tea = await world.sku("tea")
    await world.stock(node, tea, 2)
    async with FakeJd(app_key=world.id("jdk")) as jd:
        shop = await jd_shop(client, world, jd)
        ext = jd_order_id()
        jd.add_order(ext)
        o = await order(world, "jd", shop, ext, [(tea, 1, "1")])
        await ship(world, node, auth, o["id"], carrier="sf", tracking_no="SF61")
        await drain(dispatcher(services))
        (req,) = jd.calls("jingdong.pop.order.shipment")
        form, business = req.form(), jd_business(req)
        # §2.1: orderId, logiCoprId (numeric id), logiNo
        assert fields_present(form, JOS_COMMON) == set()
        assert form["method"] == "jingdong.pop.order.shipment" and form["v"] == "2.0"
        assert {k: str(v) for k, v in business.items() if k in ("orderId", "logiCoprId", "logiNo")} == {
            "orderId": ext, "logiCoprId": "467", "logiNo": "SF61"}
        assert jd.problems == []


async def test_recorded_douyin_logistics_add_has_every_field_outbound_md_requires(client, services, world):
    node, auth = await store(world, "fd")
    tea = await world.sku("tea")
    await world.stock(node, tea, 2)
    async with FakeDouyin(app_key=world.id("dyk")) as dy:
        shop = world.id("dy")
        await make_shop(client, shop, "douyin", dy)
        ext = str(6900000000000000000 + secrets.randbelow(10**15))
        dy.add_order(ext, {"1": 1})
        o = await order(world, "douyin", shop, ext, [(tea, 1, "1")])
        await ship(world, node, auth, o["id"], carrier="sf", tracking_no="SF71")
        await drain(dispatcher(services))
        (req,) = dy.calls("order.logisticsAdd")
        business = json.loads(req.body)
        # §3.1 common query; §3.2: order_id (parent, text), company_code, logistics_code; never the refund override
        assert fields_present(req.query, DOUYIN_QUERY) == set()
        assert req.path == "/order/logisticsAdd" and req.query["method"] == "order.logisticsAdd"
        assert (business["order_id"], business["company_code"], business["logistics_code"]) == (ext, "shunfeng", "SF71")
        assert not business.get("is_refund_reject") and not business.get("is_reject_refund")
        assert "logistics_id" not in business  # 废弃
        assert list(business) == sorted(business)  # param_json keys sorted (the signature is over them)
        assert dy.accepted == {ext: 1} and dy.problems == []


async def test_recorded_wechat_upload_has_every_field_outbound_md_requires(client, services, world):
    node, auth = await store(world, "fw")
    async with FakeWechat() as wx:
        o, ext = await wechat_order(client, world, wx, node, "ship")
        wx.add_payment(f"{MCHID}/{ext}", openid="o-payer")
        await hand_over(client, world, node, auth, o, "ship")
        await drain(dispatcher(services))
        (req,) = wx.calls("upload_shipping_info")
        body = json.loads(req.body)
        # §4: order_key, logistics_type, delivery_mode, shipping_list (1..15), upload_time (RFC 3339, ms), payer
        assert req.query["access_token"] == wx.access_token
        assert fields_present(body, {"order_key", "logistics_type", "delivery_mode", "shipping_list", "upload_time",
                                     "payer"}) == set()
        assert fields_present(body["order_key"], {"order_number_type", "mchid", "out_trade_no"}) == set()
        assert fields_present(body["shipping_list"][0], {"tracking_no", "express_company", "item_desc"}) == set()
        assert len(body["shipping_list"][0]["item_desc"]) <= 120 and body["payer"] == {"openid": "o-payer"}
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", body["upload_time"])
        sent = datetime.fromisoformat(body["upload_time"])
        assert abs((datetime.now(timezone.utc) - sent).total_seconds()) < 60
        assert wx.problems == []
