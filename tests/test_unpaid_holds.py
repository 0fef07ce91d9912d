"""Unpaid holds (issue 13 §5): where the platform deducts at order time (Douyin reduce_stock_type 1,
Taobao 拍下减库存), an unpaid order holds its units until it is paid, cancelled or past its
platform's expiry; sellable stock counts each hold once. Real PostgreSQL and Redis, Douyin's
pushes through the webhook with its order API served on 127.0.0.1, stock published to a fake
Douyin by the dispatcher."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "adapters"))

from shops_testkit import dispatcher, drain, list_sku, make_shop, sellable  # noqa: E402
from test_webhooks import (  # noqa: E402,F401  (douyin, platform: fixtures)
    DOUYIN_OK,
    available,
    detail,
    douyin,
    msg,
    order_id,
    order_of,
    platform,
    post_douyin,
    store_with,
)
from tests.fakes.platforms import FakeDouyin  # noqa: E402

import test_adapter_douyin as dy_adapter  # noqa: E402
import test_adapter_tmall as tm_adapter  # noqa: E402
from adapters import douyin as douyin_adapter  # noqa: E402
from adapters import tmall as tmall_adapter  # noqa: E402
from adapters.normalized import ChannelStatus  # noqa: E402
from oms.orders import decide  # noqa: E402
from oms.orders.timers import expire_unpaid  # noqa: E402
from oms.stock.inventory import expected_from_postgres, record_key  # noqa: E402
from oms.stores.model import utcnow  # noqa: E402

# away from 人民广场 for the POST /orders tests: 南京 (Nanjing), a warehouse of their own
HERE_LAT, HERE_LNG = 32.0603, 118.7969


# ------------------------------------------------------------------ helpers


def unpaid_detail(oid: str, lines: list[dict], *, reduce_stock_type: int | None = 1,
                  expire_s: int | None = 1800, status: int = 1) -> dict:
    """Douyin's order.orderDetail answer for an order placed two minutes ago, with the lines'
    reduce_stock_type and the order's order_expire_time (seconds after create_time)."""
    answer = detail(oid, lines, status=status)
    shop_order = answer["data"]["shop_order_detail"]
    if expire_s is not None:
        shop_order["order_expire_time"] = expire_s
    for item in shop_order["sku_order_list"]:
        if reduce_stock_type is not None:
            item["reduce_stock_type"] = reduce_stock_type
    return answer


async def token_of(client, node: str) -> dict:  # noqa: ANN001
    r = await client.post(f"/nodes/{node}/tokens", json={"label": "holds"})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


async def picklist_orders(client, node: str, auth: dict) -> set[str]:  # noqa: ANN001
    r = await client.get(f"/stores/{node}/picklist", headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    return {e["order_id"] for e in body["items"] + body["awaiting_handover"]}


async def redis_in_step(services, node: str) -> bool:  # noqa: ANN001
    """Redis holds for this node exactly what PostgreSQL implies (on-hand, reserved, each
    reservation's record): the check start-up runs, for one node (other tests break others)."""
    async with services.pool.acquire() as conn:
        levels, records = await expected_from_postgres(conn)
    if await services.inventory.snapshot([node]) != {k: v for k, v in levels.items() if k[0] == node}:
        return False
    for (n, fid), expected in records.items():
        if n == node:
            actual = await services.redis.hgetall(record_key(node, fid))
            if {k.decode(): int(v) for k, v in actual.items()} != expected:
                return False
    return True


async def open_reserved(services, order_id: str) -> int:  # noqa: ANN001
    return await services.pool.fetchval(
        "select coalesce(sum(quantity), 0) from reservations where order_id = $1 and state = 'reserved'", order_id)


async def cancel_messages(services, order_id: str) -> int:  # noqa: ANN001
    return await services.pool.fetchval("select count(*) from outbox where kind = 'cancel' and order_id = $1",
                                        order_id)


async def warehouse(world, units: int):  # noqa: ANN001
    wh = await world.node("wh", HERE_LAT, HERE_LNG, kind="warehouse", capabilities=("ship",), radius=0)
    sku = await world.sku("tea")
    await world.stock(wh, sku, units)
    return wh, sku


def ship_order(world, ext: str, sku: str, qty: int, shop: str, status: str, **extra) -> dict:  # noqa: ANN001
    return world.order(ext, [(sku, qty)], mode="ship", channel="douyin", shop_id=shop, status=status,
                       lat=HERE_LAT, lng=HERE_LNG, **extra)


# ------------------------------------------------------------------ pure: who holds, what the platforms say


def test_only_an_unpaid_order_of_a_platform_that_deducts_at_order_holds():
    U, P = ChannelStatus.UNPAID, ChannelStatus.PAID
    assert decide.holds_while_unpaid(U, True, False)  # the push says so, whatever the shop
    assert not decide.holds_while_unpaid(U, False, True)  # the push says payment: no hold
    assert decide.holds_while_unpaid(U, None, True)  # silent push: the shop's setting
    assert not decide.holds_while_unpaid(U, None, False)
    assert not decide.holds_while_unpaid(P, True, True)  # paid: an allocation, not a hold
    assert not decide.holds_while_unpaid(ChannelStatus.CANCELLED, True, True)


def test_a_held_order_stays_created_until_paid():
    from oms.orders.lines import LineState

    assert decide.order_status_from("ship", [("held", "serve")]) == "created"
    assert decide.order_status_from("ship", [("held", "serve"), ("cancelled", "serve")]) == "created"
    # part of it held: still just unpaid, not partially allocated
    lines = [LineState(1, "a", 2, 1, 1)]
    assert decide.order_status_with_lines("ship", [("held", "serve")], lines) == "created"
    # every line cancelled, the hold given back: cancelled
    assert decide.order_status_with_lines("ship", [("cancelled", "serve")], [LineState(1, "a", 0, 0, 0)]) == "cancelled"


def test_douyin_reduce_stock_type_and_order_expire_time_are_mapped():
    items = dy_adapter.detail_response()["data"]["shop_order_detail"]["sku_order_list"]

    def order(kinds, **over):  # noqa: ANN001, ANN202
        lines = [dict(item, reduce_stock_type=k) if k is not None else item for item, k in zip(items, kinds)]
        answer = dy_adapter.detail_response(sku_order_list=lines, order_status=1, main_status=1, **over)
        return douyin_adapter.parse_order_detail_response(json.dumps(answer).encode())

    assert order([1, 1]).deducts_at_order is True
    assert order([2, 1]).deducts_at_order is True  # never hold less than Douyin took
    assert order([2, 2]).deducts_at_order is False
    assert order([None, None]).deducts_at_order is None  # the shop's setting decides
    created = datetime.fromtimestamp(1718675940, timezone.utc)
    assert order([1, 1], order_expire_time=1800).pay_by == created + timedelta(minutes=30)
    assert order([1, 1], order_expire_time=1718677740).pay_by == created + timedelta(minutes=30)
    assert order([1, 1]).pay_by is None  # absent: OMS_UNPAID_EXPIRY_MINUTES after it arrived


def test_taobao_unpaid_trade_closes_at_its_timeout_action_time():
    trade = tm_adapter.trade_json(status="WAIT_BUYER_PAY", timeout_action_time="2024-06-18 10:30:00")
    order = tmall_adapter.parse_fullinfo_response(json.dumps(trade).encode())
    assert order.pay_by == datetime(2024, 6, 18, 2, 30, tzinfo=timezone.utc)
    assert order.deducts_at_order is None  # the trade does not say: the shop's setting
    paid = tm_adapter.trade_json(timeout_action_time="2024-06-28 10:30:00")
    assert tmall_adapter.parse_fullinfo_response(json.dumps(paid).encode()).pay_by is None


# ------------------------------------------------------------------ published sellable counts a hold once


async def test_an_unpaid_order_of_a_deduct_at_order_shop_holds_its_units_once(client, services, world):
    wh, tea = await warehouse(world, 10)
    async with FakeDouyin(app_key=world.id("dyk")) as dy:
        shop = world.id("dy")
        await make_shop(client, shop, "douyin", dy, deducts_at_order=True)
        await list_sku(client, shop, tea, "81", item="9")
        d = dispatcher(services)
        await drain(d)
        assert dy.stock[(81, None)] == 10

        body = ship_order(world, "h1", tea, 2, shop, "unpaid")
        r = await world.post_order(body)
        assert r.status_code == 201, r.text
        held = r.json()
        assert held["status"] == "created"
        assert [(f["node_id"], f["status"], f["lines"]) for f in held["fulfillments"]] == [
            (wh, "held", [{"sku": tea, "quantity": 2}])]
        assert await available(services, wh, tea) == 8
        await drain(d)
        # Douyin took the 2 off its counter when the order was placed; we tell it 8, not 6
        assert dy.stock[(81, None)] == 8
        assert (await sellable(client, shop, tea))["sellable"] == 8
        assert await redis_in_step(services, wh)  # the rebuild check counts holds

        paid = (await world.post_order(dict(body, status="paid"))).json()
        assert paid["status"] == "allocated", paid
        assert [(f["id"], f["node_id"], f["status"]) for f in paid["fulfillments"]] == [
            (held["fulfillments"][0]["id"], wh, "allocated")]
        assert await open_reserved(services, held["id"]) == 2  # the hold became the allocation
        assert await available(services, wh, tea) == 8
        await drain(d)
        assert dy.stock[(81, None)] == 8
        assert dy.problems == []
        assert await redis_in_step(services, wh)


async def test_a_paid_order_of_a_deduct_at_order_shop_is_allocated_at_once(client, services, world):
    wh, tea = await warehouse(world, 10)
    shop = world.id("dy")
    await make_shop(client, shop, "douyin", deducts_at_order=True)
    o = (await world.post_order(ship_order(world, "pp", tea, 2, shop, "paid"))).json()
    assert o["status"] == "allocated" and [f["status"] for f in o["fulfillments"]] == ["allocated"]
    assert await available(services, wh, tea) == 8


@pytest.mark.parametrize("shop_deducts, order_says", [(False, None), (True, False)])
async def test_an_unpaid_order_of_a_shop_deducting_at_payment_holds_nothing(client, services, world,
                                                                            shop_deducts, order_says):
    wh, tea = await warehouse(world, 10)
    shop = world.id("dy")
    await make_shop(client, shop, "douyin", deducts_at_order=shop_deducts)
    extra = {} if order_says is None else {"deducts_at_order": order_says}
    r = await world.post_order(ship_order(world, "p1", tea, 3, shop, "unpaid", **extra))
    assert r.status_code == 201, r.text
    o = r.json()
    assert o["status"] == "created" and o["fulfillments"] == []
    assert await available(services, wh, tea) == 10 and await open_reserved(services, o["id"]) == 0
    assert (await sellable(client, shop, tea))["sellable"] == 10


async def test_a_stampede_of_unpaid_orders_never_oversells(client, services, world):
    wh, tea = await warehouse(world, 10)
    shop = world.id("dy")
    await make_shop(client, shop, "douyin", deducts_at_order=True)
    bodies = [ship_order(world, f"s{i}", tea, 1, shop, "unpaid") for i in range(40)]
    responses = await asyncio.gather(*(world.post_order(b) for b in bodies))
    assert all(r.status_code == 201 for r in responses), [r.text for r in responses if r.status_code != 201]
    orders = [r.json() for r in responses]
    assert {o["status"] for o in orders} == {"created"}
    held = [o for o in orders if o["fulfillments"]]
    assert len(held) == 10  # exactly what the pool had, each unit held once
    assert await available(services, wh, tea) == 0
    assert await services.pool.fetchval(
        "select coalesce(sum(quantity), 0) from reservations where sku = $1 and state = 'reserved'", tea) == 10
    assert await redis_in_step(services, wh)

    # every buyer pays: the held ten are allocated, the rest find nothing and wait
    paid = await asyncio.gather(*(world.post_order(dict(b, status="paid")) for b in bodies))
    statuses = [p.json()["status"] for p in paid]
    assert statuses.count("allocated") == 10 and statuses.count("backordered") == 30
    assert {p.json()["id"] for p in paid if p.json()["status"] == "allocated"} == {o["id"] for o in held}
    assert await services.pool.fetchval(
        "select coalesce(sum(quantity), 0) from reservations where sku = $1 and state = 'reserved'", tea) == 10
    assert await available(services, wh, tea) == 0
    assert await redis_in_step(services, wh)


# ------------------------------------------------------------------ Douyin, through the webhook


async def test_an_unpaid_douyin_order_past_its_expiry_releases_its_hold(client, platform, services, world, douyin):
    node, (tea,) = await store_with(world, ("tea", 5))
    a = order_id()
    douyin.put(a, unpaid_detail(a, [{"sku": tea, "qty": 2}]))
    assert (await post_douyin(platform, [msg(100, f"m-{a}-created", a)])).content == DOUYIN_OK
    o = await order_of(client, "douyin", a)
    assert o["status"] == "created" and [f["status"] for f in o["fulfillments"]] == ["held"]
    assert await available(services, node, tea) == 3
    pay_by = await services.pool.fetchval("select pay_by from orders where id = $1", o["id"])
    assert abs((pay_by - utcnow()).total_seconds() - (1800 - 120)) < 30  # create_time + order_expire_time

    assert o["id"] not in await expire_unpaid(services, utcnow() + timedelta(minutes=20))  # still in time
    assert await available(services, node, tea) == 3

    assert o["id"] in await expire_unpaid(services, utcnow() + timedelta(minutes=29))
    gone = await order_of(client, "douyin", a)
    assert gone["status"] == "cancelled" and [f["status"] for f in gone["fulfillments"]] == ["cancelled"]
    assert await available(services, node, tea) == 5 and await open_reserved(services, o["id"]) == 0
    assert await cancel_messages(services, o["id"]) == 0  # Douyin closes it itself
    assert gone["history"][-1]["cause"] == "timer:unpaid-expired"
    assert await redis_in_step(services, node)

    # Douyin's own close arrives later: nothing more to release
    assert (await post_douyin(platform, [msg(106, f"m-{a}-closed", a)])).content == DOUYIN_OK
    assert await available(services, node, tea) == 5


async def test_an_unpaid_douyin_order_paid_before_expiry_is_allocated_at_the_same_store(client, platform, services,
                                                                                      world, douyin):
    node, (tea,) = await store_with(world, ("tea", 5))
    auth = await token_of(client, node)
    a = order_id()
    now = int(time.time())
    unpaid = unpaid_detail(a, [{"sku": tea, "qty": 2}])
    unpaid["data"]["shop_order_detail"]["update_time"] = now - 30
    paid = unpaid_detail(a, [{"sku": tea, "qty": 2}], status=105)
    douyin.put(a, unpaid, paid)
    assert (await post_douyin(platform, [msg(100, f"m-{a}-created", a)])).content == DOUYIN_OK
    held = await order_of(client, "douyin", a)
    assert held["status"] == "created"
    (hold,) = held["fulfillments"]
    assert (hold["node_id"], hold["status"]) == (node, "held")
    assert held["id"] not in await picklist_orders(client, node, auth)  # not the store's work yet
    r = await client.post(f"/stores/{node}/orders/{held['id']}/picked", headers=auth)
    assert r.status_code == 409, r.text

    assert (await post_douyin(platform, [msg(101, f"m-{a}-paid", a)])).content == DOUYIN_OK
    o = await order_of(client, "douyin", a)
    assert o["status"] == "allocated" and o["paid_at"] is not None
    assert [(f["id"], f["node_id"], f["status"]) for f in o["fulfillments"]] == [(hold["id"], node, "allocated")]
    assert [h["to_status"] for h in o["history"]] == ["created", "allocated"]
    assert held["id"] in await picklist_orders(client, node, auth)
    assert await available(services, node, tea) == 3 and await open_reserved(services, o["id"]) == 2

    # past the expiry it paid before: the timer leaves it alone
    assert o["id"] not in await expire_unpaid(services, utcnow() + timedelta(hours=1))
    assert (await order_of(client, "douyin", a))["status"] == "allocated"
    assert await redis_in_step(services, node)


async def test_douyin_closing_an_unpaid_order_releases_its_hold(client, platform, services, world, douyin):
    node, (tea,) = await store_with(world, ("tea", 4))
    a = order_id()
    douyin.put(a, unpaid_detail(a, [{"sku": tea, "qty": 3}]))
    assert (await post_douyin(platform, [msg(100, f"m-{a}-created", a)])).content == DOUYIN_OK
    assert await available(services, node, tea) == 1
    assert (await post_douyin(platform, [msg(106, f"m-{a}-cancel", a)])).content == DOUYIN_OK
    o = await order_of(client, "douyin", a)
    assert o["status"] == "cancelled" and await available(services, node, tea) == 4
    assert await cancel_messages(services, o["id"]) == 0


async def test_a_douyin_order_deducting_at_payment_holds_nothing(client, platform, services, world, douyin):
    node, (tea,) = await store_with(world, ("tea", 4))
    a = order_id()
    douyin.put(a, unpaid_detail(a, [{"sku": tea, "qty": 3}], reduce_stock_type=2))
    assert (await post_douyin(platform, [msg(100, f"m-{a}-created", a)])).content == DOUYIN_OK
    o = await order_of(client, "douyin", a)
    assert o["status"] == "created" and o["fulfillments"] == []
    assert await available(services, node, tea) == 4
