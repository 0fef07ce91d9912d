"""Cancels we decide reach the platform or ops: the outbox 'cancel' row is written in the cancel's
own transaction, the dispatcher lists it for ops with what to do on that platform (outbound.md
has no seller cancel call for a paid order on any of them), and /ops/summary shows it."""

from __future__ import annotations

import secrets
from datetime import timedelta

from shops_testkit import dispatcher, drain, make_shop
from test_handover_confirm import order as _order
from tests.fakes.platforms import FakeJd, FakeTmall

from oms.stores.expiry import expire_uncollected_pickups
from oms.stores.model import utcnow

# away from 人民广场, where other tests count on the 30 nearest stores: 杭州 (Hangzhou)
HERE_LAT, HERE_LNG = 30.2741, 120.1551


async def store(world, name: str, *, dlat: float = 0.0) -> tuple[str, dict]:  # noqa: ANN001
    node = await world.node(name, HERE_LAT + dlat, HERE_LNG, capabilities=("ship", "delivery", "pickup"))
    r = await world.c.post(f"/nodes/{node}/tokens", json={"label": "t"})
    assert r.status_code == 201, r.text
    return node, {"Authorization": f"Bearer {r.json()['token']}"}


async def order(world, channel: str, shop: str, ext: str, lines, mode: str = "ship", **kw) -> dict:  # noqa: ANN001
    return await _order(world, channel, shop, ext, lines, mode, lat=HERE_LAT, lng=HERE_LNG, **kw)


async def cancel_rows(services, order_id: str) -> list:
    return await services.pool.fetch(
        "select status, shop_id, payload, last_code, last_error from outbox where kind = 'cancel' and order_id = $1",
        order_id)


async def ops_cancels(client) -> list[dict]:
    summary = (await client.get("/ops/summary", params={"fresh": "true"})).json()
    return summary["channel_sync"]["cancels"]


async def test_expired_pickup_is_listed_for_ops_with_what_to_do_on_tmall(client, services, world):
    node, auth = await store(world, "xp")
    tea = await world.sku("tea")
    await world.stock(node, tea, 2)
    async with FakeTmall(app_key=world.id("tmk")) as tm:
        shop = world.id("tm")
        await make_shop(client, shop, "tmall", tm)
        tid = str(4500000000000000000 + secrets.randbelow(10**15))
        tm.add_trade(tid, oids=["81"])
        o = await order(world, "tmall", shop, tid, [(tea, 1, "81")], mode="pickup", pickup=node)
        r = await client.post(f"/stores/{node}/orders/{o['id']}/picked", headers=auth)
        assert r.status_code == 200, r.text
        later = utcnow() + timedelta(hours=services.settings.pickup_expiry_hours + 1)
        assert o["id"] in await expire_uncollected_pickups(services, now=later, node_id=node)
        (row,) = await cancel_rows(services, o["id"])  # written with the cancel, before any dispatcher
        assert row["status"] == "pending" and row["shop_id"] == shop
        assert row["payload"]["cause"] == "store:pickup-expired"
        await drain(dispatcher(services))
        (row,) = await cancel_rows(services, o["id"])
        assert row["status"] == "manual" and row["last_code"] == "no-call" and "Taobao" in row["last_error"]
        assert tm.requests == []  # nothing to call: listed, not guessed
        listed = [c for c in await ops_cancels(client) if c["order_id"] == o["id"]]
        assert len(listed) == 1 and listed[0]["external_id"] == tid and listed[0]["channel"] == "tmall"
        assert "not collected" in listed[0]["reason"] and "seller backend" in listed[0]["what_to_do"]
        dead = [d for d in (await client.get("/outbox/dead")).json() if d["order_id"] == o["id"]]
        assert [d["kind"] for d in dead] == ["cancel"]


async def test_admin_cancel_writes_one_row_however_often_it_is_repeated(client, services, world):
    node, _ = await store(world, "xa")
    tea = await world.sku("tea")
    await world.stock(node, tea, 2)
    async with FakeJd(app_key=world.id("jdk")) as jd:
        shop = world.id("jd")
        await make_shop(client, shop, "jd", jd)
        o = await order(world, "jd", shop, str(30000000000 + secrets.randbelow(10**9)), [(tea, 1, "1")])
        for _ in range(2):
            r = await client.post(f"/orders/{o['id']}/cancel", json={"reason": "fraud check failed"})
            assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
        await drain(dispatcher(services))
        (row,) = await cancel_rows(services, o["id"])
        assert row["status"] == "manual" and "JD merchant backend" in row["last_error"]
        assert row["payload"] == {"cause": "api:cancel", "reason": "fraud check failed"}


async def test_a_cancel_the_platform_sent_is_not_echoed_back(client, services, world):
    node, _ = await store(world, "xc")
    tea = await world.sku("tea")
    await world.stock(node, tea, 2)
    async with FakeJd(app_key=world.id("jdk")) as jd:
        shop = world.id("jd")
        await make_shop(client, shop, "jd", jd)
        ext = str(30000000000 + secrets.randbelow(10**9))
        o = await order(world, "jd", shop, ext, [(tea, 1, "1")])
        body = world.order("x", [(tea, 1)], mode="ship", channel="jd", shop_id=shop, status="cancelled",
                            lat=HERE_LAT, lng=HERE_LNG)
        body["external_id"] = ext
        r = await world.post_order(body)  # the platform says: cancelled
        assert r.status_code in (200, 201) and r.json()["status"] == "cancelled", r.text
        assert await cancel_rows(services, o["id"]) == []


async def test_an_order_from_no_platform_needs_no_cancel_message(client, services, world):
    node, _ = await store(world, "xm")
    tea = await world.sku("tea")
    await world.stock(node, tea, 2)
    o = (await world.post_order(world.order("m", [(tea, 1)], mode="ship", lat=HERE_LAT, lng=HERE_LNG))).json()
    r = await client.post(f"/orders/{o['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    assert await cancel_rows(services, o["id"]) == []


async def test_an_unpaid_order_past_its_hold_needs_no_cancel_message(client, services, world):
    from oms.orders.timers import expire_unpaid

    node, _ = await store(world, "xu")
    tea = await world.sku("tea")
    await world.stock(node, tea, 2)
    async with FakeJd(app_key=world.id("jdk")) as jd:
        shop = world.id("jd")
        await make_shop(client, shop, "jd", jd)
        body = world.order("u", [(tea, 1)], mode="ship", channel="jd", shop_id=shop, status="unpaid",
                           lat=HERE_LAT, lng=HERE_LNG)
        o = (await world.post_order(body)).json()
        assert o["status"] == "created", o
        assert o["id"] in await expire_unpaid(services, utcnow() + timedelta(days=2))  # the platform closes it too
        assert await cancel_rows(services, o["id"]) == []
