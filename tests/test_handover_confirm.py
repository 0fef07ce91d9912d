"""Every hand-over confirmed to its platform exactly once: store hand-overs through the API, the
outbox row written in the hand-over's transaction, the dispatcher against fake platforms."""

from __future__ import annotations

import secrets
from datetime import datetime, timezone

from oms.channels import outbound as ob
from oms.channels.config import ChannelsConfig

from shops_testkit import dispatcher, drain, make_shop
from tests.fakes.platforms import FakeDouyin, FakeJd, FakeTmall

LAT, LNG = 31.2304, 121.4737


async def store(world, name: str, caps=("ship", "delivery", "pickup"), *, dlat=0.0) -> tuple[str, dict]:
    node = await world.node(name, LAT + dlat, LNG, capabilities=caps)
    r = await world.c.post(f"/nodes/{node}/tokens", json={"label": "t"})
    assert r.status_code == 201, r.text
    return node, {"Authorization": f"Bearer {r.json()['token']}"}


async def order(world, channel: str, shop: str, ext: str, lines, mode: str = "ship", **kw) -> dict:
    body = world.order("x", [(s, q) for s, q, _ in lines], mode=mode, channel=channel, shop_id=shop, **kw)
    body["external_id"] = ext
    for line, (_, _, oid) in zip(body["lines"], lines):
        line["platform_line_id"] = oid
    r = await world.post_order(body)
    assert r.status_code == 201 and r.json()["status"] == "allocated", r.text
    return r.json()


async def ship(world, node: str, auth: dict, order_id: str, **body) -> None:
    r = await world.c.post(f"/stores/{node}/orders/{order_id}/picked", headers=auth)
    assert r.status_code == 200, r.text
    r = await world.c.post(f"/stores/{node}/orders/{order_id}/shipped", headers=auth, json=body or None)
    assert r.status_code == 200, r.text


async def message_statuses(services, order_id: str) -> list[str]:
    rows = await services.pool.fetch("select status from outbox where order_id = $1 order by id", order_id)
    return [r["status"] for r in rows]


async def test_tmall_hand_over_confirmed_once_with_the_store_even_after_a_500(client, services, world):
    node, auth = await store(world, "s")
    sku = await world.sku("tea")
    await world.stock(node, sku, 5)
    async with FakeTmall(app_key=world.id("tmk"), omnichannel=True) as tm:
        shop = world.id("tm")
        await make_shop(client, shop, "tmall", tm)
        tid = str(4000000000000000000 + secrets.randbelow(10**15))
        tm.add_trade(tid, oids=["11"])
        o = await order(world, "tmall", shop, tid, [(sku, 2, "11")])
        tm.fail_next(1, call="taobao.logistics.offline.send")
        await ship(world, node, auth, o["id"], carrier="sf", tracking_no="SF1234567890")
        assert await message_statuses(services, o["id"]) == ["pending"]  # written with the hand-over
        await drain(dispatcher(services), quiet_passes=6)
        assert tm.accepted == {tid: 1}
        sent = tm.trades[tid].shipments[0]
        assert sent["company_code"] == "SF" and sent["out_sid"] == "SF1234567890"
        assert sent["feature"] == f"retailStoreId={node};retailStoreType=STORE"
        assert len(tm.calls("taobao.logistics.offline.send")) == 2  # the 500, then the one taken
        assert len(tm.calls("taobao.trade.fullinfo.get")) == 1  # asked before sending again
        assert await message_statuses(services, o["id"]) == ["done"]
        assert tm.problems == []


async def test_tmall_split_over_two_stores_uses_the_split_call_per_parcel(client, services, world):
    a, auth_a = await store(world, "a")
    b, auth_b = await store(world, "b", dlat=0.002)
    tea, cup = await world.sku("tea"), await world.sku("cup")
    await world.stock(a, tea, 1)
    await world.stock(b, cup, 1)
    async with FakeTmall(app_key=world.id("tmk")) as tm:
        shop = world.id("tm")
        await make_shop(client, shop, "tmall", tm)
        tid = str(4100000000000000000 + secrets.randbelow(10**15))
        tm.add_trade(tid, oids=["21", "22"])
        o = await order(world, "tmall", shop, tid, [(tea, 1, "21"), (cup, 1, "22")])
        assert len(o["fulfillments"]) == 2
        await ship(world, a, auth_a, o["id"], carrier="zto", tracking_no="ZT1")
        await ship(world, b, auth_b, o["id"], carrier="zto", tracking_no="ZT2")
        await drain(dispatcher(services))
        calls = tm.calls("alibaba.ascp.logistics.offline.send")
        assert len(calls) == 2 and not tm.calls("taobao.logistics.offline.send")
        assert tm.trades[tid].status == "WAIT_BUYER_CONFIRM_GOODS"
        assert sorted(s["out_sid"] for s in tm.trades[tid].shipments) == ["ZT1", "ZT2"]
        assert tm.problems == []


async def test_pickup_collected_is_confirmed_as_pickup(client, services, world):
    node, auth = await store(world, "p")
    sku = await world.sku("tea")
    await world.stock(node, sku, 3)
    async with FakeTmall(app_key=world.id("tmk"), omnichannel=True) as tm:
        shop = world.id("tm")
        await make_shop(client, shop, "tmall", tm)
        tid = str(4200000000000000000 + secrets.randbelow(10**15))
        tm.add_trade(tid, oids=["31"])
        o = await order(world, "tmall", shop, tid, [(sku, 1, "31")], mode="pickup", pickup=node)
        r = await client.post(f"/stores/{node}/orders/{o['id']}/picked", headers=auth)
        assert r.status_code == 200, r.text
        code = (await client.get(f"/orders/{o['id']}")).json()["fulfillments"][0]["pickup_code"]
        r = await client.post(f"/stores/{node}/pickups/{code}", headers=auth)
        assert r.status_code == 200, r.text
        await drain(dispatcher(services))
        assert len(tm.calls("taobao.logistics.dummy.send")) == 1 and not tm.calls("taobao.logistics.offline.send")
        assert tm.accepted == {tid: 1}
        assert tm.trades[tid].shipments[0]["feature"] == f"retailStoreId={node};retailStoreType=STORE"


async def test_reply_lost_after_the_platform_shipped_does_not_ship_twice(client, services, world):
    node, auth = await store(world, "j")
    sku = await world.sku("tea")
    await world.stock(node, sku, 3)
    async with FakeJd(app_key=world.id("jdk")) as jd:
        shop = world.id("jd")
        await make_shop(client, shop, "jd", jd)
        ext = str(30000000000 + secrets.randbelow(10**9))
        jd.add_order(ext)
        o = await order(world, "jd", shop, ext, [(sku, 1, "1")])
        jd.lose_reply_next(1, call="jingdong.pop.order.shipment")  # it ships, we hear a 500
        await ship(world, node, auth, o["id"], carrier="jd", tracking_no="JDV000123")
        await drain(dispatcher(services), quiet_passes=6)
        assert jd.accepted == {ext: 1}
        assert len(jd.calls("jingdong.pop.order.shipment")) == 1  # the state query said: shipped
        assert await message_statuses(services, o["id"]) == ["done"]


async def test_dispatcher_killed_after_send_resumes_without_a_second_shipment(client, services, world):
    node, auth = await store(world, "k")
    sku = await world.sku("tea")
    await world.stock(node, sku, 3)
    async with FakeTmall(app_key=world.id("tmk")) as tm:
        shop = world.id("tm")
        await make_shop(client, shop, "tmall", tm)
        tid = str(4300000000000000000 + secrets.randbelow(10**15))
        tm.add_trade(tid, oids=["41"])
        o = await order(world, "tmall", shop, tid, [(sku, 1, "41")])
        await ship(world, node, auth, o["id"], carrier="yto", tracking_no="YT9")
        # a dispatcher leased the message and sent it, then died before recording the reply
        first = dispatcher(services)
        claimed = await services.pool.fetch("select * from outbox where order_id = $1", o["id"])
        await services.pool.execute("update outbox set attempts = 1, lease_owner = 'dead-one', "
                                    "lease_until = now() - interval '1 second' where id = $1", claimed[0]["id"])
        row = await services.pool.fetchrow("select * from shops where id = $1", shop)
        ctx = ob.shop_context(row, ChannelsConfig())
        h, _ = await first._handover(claimed[0])
        call = ob.confirmation(ctx, h, datetime.now(timezone.utc))
        status, _ = await ob.send(first.client, call.request)
        assert status == 200 and tm.accepted == {tid: 1}
        await drain(dispatcher(services))  # the next one takes over the expired lease
        assert tm.accepted == {tid: 1}
        assert len(tm.calls("taobao.logistics.offline.send")) == 1
        assert await message_statuses(services, o["id"]) == ["done"]


async def test_douyin_pending_refund_stops_the_hand_over_and_tells_the_store(client, services, world):
    node, auth = await store(world, "d")
    sku = await world.sku("tea")
    await world.stock(node, sku, 3)
    async with FakeDouyin(app_key=world.id("dyk")) as dy:
        shop = world.id("dy")
        await make_shop(client, shop, "douyin", dy)
        ext = str(6900000000000000000 + secrets.randbelow(10**15))
        dy.add_order(ext, {"1": 1})
        dy.set_refund_pending(ext)
        o = await order(world, "douyin", shop, ext, [(sku, 1, "1")])
        await ship(world, node, auth, o["id"], carrier="sf", tracking_no="SF77")
        await drain(dispatcher(services))
        assert dy.accepted == {}
        assert len(dy.calls("order.logisticsAdd")) == 1  # never retried with the override
        assert await message_statuses(services, o["id"]) == ["blocked"]
        r = await client.get(f"/stores/{node}/picklist", headers=auth)
        stop = r.json()["intercepted"]
        assert [s["order_id"] for s in stop] == [o["id"]] and "refund" in stop[0]["reason"]


async def test_parcel_hand_over_needs_carrier_and_tracking(client, services, world):
    node, auth = await store(world, "v")
    sku = await world.sku("tea")
    await world.stock(node, sku, 1)
    o = (await world.post_order(world.order("v", [(sku, 1)], mode="ship"))).json()
    await client.post(f"/stores/{node}/orders/{o['id']}/picked", headers=auth)
    r = await client.post(f"/stores/{node}/orders/{o['id']}/shipped", headers=auth)
    assert r.status_code == 400 and r.json()["field"] == "carrier"
    r = await client.post(f"/stores/{node}/orders/{o['id']}/shipped", headers=auth, json={"carrier": "sf"})
    assert r.status_code == 400 and r.json()["field"] == "tracking_no"
