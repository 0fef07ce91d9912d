"""Store operations end to end on the real servers: tokens, pick lists, picked / reject with
re-routing, hand-over (shipped, pickup codes), cancellation, pickup expiry, the one-hour clock."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from oms.stores import expiry, handover, model, picklist, status
from oms.infra.db import Q
from oms.stock.inventory import GEN_FIELD, avail_key, expected_from_postgres

# Each test works in its own corner of Shanghai (from its uid), so the nodes other tests leave
# behind never crowd its candidates: the buyer at DEST, one store NEAR (~70 m), one FAR (~1.7 km).
DEST, NEAR, FAR = "dest", "near", "far"
HANGZHOU = (30.2741, 120.1551)  # West Lake: another city


def spot(world, where) -> tuple[float, float]:
    if not isinstance(where, str):
        return where
    h = int(world.uid, 16)
    lat, lng = 31.05 + (h % 1000) * 0.00025, 121.20 + (h // 1000 % 1000) * 0.00035
    return {"dest": (lat, lng), "near": (lat + 0.0006, lng + 0.0003), "far": (lat + 0.0116, lng + 0.0113)}[where]


# ---- helpers ---------------------------------------------------------------------------------
async def token_for(client, node_id: str) -> str:
    r = await client.post(f"/nodes/{node_id}/tokens", json={"label": "test"})
    assert r.status_code == 201, r.text
    assert r.json()["token"].startswith("oms_store_")
    return r.json()["token"]


def auth(token: str | None) -> dict:
    return {"Authorization": f"Bearer {token}" if token else ""}


class Store:
    """A store's staff app: its node id and token."""

    def __init__(self, client, node_id: str, token: str) -> None:
        self.c, self.id, self.token = client, node_id, token

    async def picklist(self, **headers):
        return await self.c.get(f"/stores/{self.id}/picklist", headers={**auth(self.token), **headers})

    async def items(self) -> list[dict]:
        r = await self.picklist()
        assert r.status_code == 200, r.text
        return r.json()["items"]

    async def post(self, path: str, json=None):
        return await self.c.post(f"/stores/{self.id}{path}", json=json, headers=auth(self.token))

    async def picked(self, order_id: str):
        return await self.post(f"/orders/{order_id}/picked")

    async def shipped(self, order_id: str, parcel: dict | None = None):
        return await self.post(f"/orders/{order_id}/shipped", json=parcel)

    async def handover(self, order_id: str, parcel: dict | None = None):
        return await self.post(f"/orders/{order_id}/handover", json=parcel)

    async def received(self, order_id: str):
        return await self.post(f"/orders/{order_id}/received")

    async def reject(self, order_id: str, body):
        return await self.post(f"/orders/{order_id}/reject", json=body)

    async def collect(self, code: str):
        return await self.post(f"/pickups/{code}")


async def open_store(world, name: str, at, **kw) -> Store:
    node_id = await world.node(name, *spot(world, at), **kw)
    return Store(world.c, node_id, await token_for(world.c, node_id))


async def place(world, ext: str, lines, **kw) -> dict:
    lat, lng = spot(world, DEST)
    r = await world.post_order(world.order(ext, lines, lat=lat, lng=lng, **kw))
    assert r.status_code == 201, r.text
    return r.json()


async def get_order(client, order_id: str) -> dict:
    r = await client.get(f"/orders/{order_id}")
    assert r.status_code == 200, r.text
    return r.json()


async def level(client, sku: str, node_id: str) -> dict:
    r = await client.get(f"/inventory/{sku}")
    assert r.status_code == 200, r.text
    return next((n for n in r.json()["nodes"] if n["node_id"] == node_id),
                {"on_hand": 0, "reserved": 0, "available": 0})


async def pg_on_hand(services, node_id: str, sku: str) -> int:
    return await services.pool.fetchval("select on_hand from stock where node_id = $1 and sku = $2", node_id, sku)


async def assert_consistent(services, nodes) -> None:
    """Redis holds exactly what PostgreSQL implies for these nodes, and nothing is oversold."""
    nodes = list(nodes)
    async with services.pool.acquire() as conn:
        levels, records = await expected_from_postgres(conn)
        oversold = [r for r in await conn.fetch(Q["oversold_pairs"]) if r["node_id"] in nodes]
    assert oversold == []
    assert await services.inventory.snapshot(nodes) == {k: v for k, v in levels.items() if k[0] in nodes}
    for node in nodes:
        keys = {k.decode().rsplit(":", 1)[1] async for k in services.redis.scan_iter(match=f"inv:{{{node}}}:res:*")}
        assert keys == {fid for (n, fid) in records if n == node}
        avail = {k.decode(): int(v) for k, v in (await services.redis.hgetall(avail_key(node))).items()
                 if k.decode() != GEN_FIELD}
        want = {sku: o - r for (n, sku), (o, r) in levels.items() if n == node}
        assert {k: v for k, v in avail.items() if v or k in want} == want


def on_list(items: list[dict], order_id: str) -> dict | None:
    return next((i for i in items if i["order_id"] == order_id), None)


def steps(order: dict) -> list[tuple[str | None, str, str]]:
    return [(h["from_status"], h["to_status"], h["cause"]) for h in order["history"]]


# ---- delivery: accepted -> nearest store's list -> picked -> shipped -> committed ----------------
async def test_delivery_order_picked_shipped_commits_stock(world, services):
    near = await open_store(world, "near", NEAR)
    far = await open_store(world, "far", FAR)
    tea = await world.sku("tea")
    await world.stock(near.id, tea, 5)
    await world.stock(far.id, tea, 5)

    order = await place(world, "d1", [(tea, 2)])
    assert order["status"] == "allocated"
    assert [f["node_id"] for f in order["fulfillments"]] == [near.id]

    entry = on_list(await near.items(), order["id"])
    assert entry is not None and entry["lines"] == [{"sku": tea, "quantity": 2, "name": "tea"}]  # staff read names
    assert 55 < entry["minutes_left"] <= 60 and entry["at_risk"] is False
    assert on_list(await far.items(), order["id"]) is None
    assert (await near.picklist()).json()["by_sku"] == [{"sku": tea, "quantity": 2, "orders": [order["id"]], "name": "tea"}]

    r = await near.picked(order["id"])
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "picked" and r.json()["order_status"] == "picked"
    assert on_list(await near.items(), order["id"]) is None  # off the pick list ...
    waiting = (await near.picklist()).json()["awaiting_handover"]
    assert on_list(waiting, order["id"])["status"] == "picked"  # ... waiting for the courier
    assert (await level(world.c, tea, near.id))["reserved"] == 2  # still held until hand-over

    r = await near.shipped(order["id"])
    assert r.status_code == 200, r.text
    assert r.json()["order_status"] == "shipped" and r.json()["lines"] == [{"sku": tea, "quantity": 2}]

    lv = await level(world.c, tea, near.id)
    assert (lv["on_hand"], lv["reserved"], lv["available"]) == (3, 0, 3)
    assert await pg_on_hand(services, near.id, tea) == 3
    states = await services.pool.fetch("select state from reservations where order_id = $1", order["id"])
    assert [s["state"] for s in states] == ["committed"]
    assert (await level(world.c, tea, far.id))["on_hand"] == 5

    done = await get_order(world.c, order["id"])
    assert done["status"] == "shipped" and done["fulfillments"][0]["status"] == "shipped"
    assert [(a, b) for a, b, _ in steps(done)] == [(None, "allocated"), ("allocated", "picked"), ("picked", "shipped")]
    assert [c for _, _, c in steps(done)][1:] == ["store:picked", "store:shipped"]
    assert on_list((await near.picklist()).json()["awaiting_handover"], order["id"]) is None
    # too late to cancel once handed over: 409 naming the status, nothing moves
    r = await world.c.post(f"/orders/{order['id']}/cancel", json={})
    assert r.status_code == 409 and r.json()["current"] == "shipped", r.text
    assert (await get_order(world.c, order["id"]))["status"] == "shipped"
    assert (await level(world.c, tea, near.id))["on_hand"] == 3
    await assert_consistent(services, [near.id, far.id])


# ---- pickup: ordered in Shanghai, collected in Hangzhou ------------------------------------------
async def test_cross_city_pickup_code_collected(world, services):
    hz = await open_store(world, "hz", HANGZHOU, capabilities=("pickup",))
    sh = await open_store(world, "sh", NEAR)  # nearer the buyer, but not the store they chose
    bag = await world.sku("bag")
    await world.stock(hz.id, bag, 2)
    await world.stock(sh.id, bag, 9)

    order = await place(world, "p1", [(bag, 1)], mode="pickup", pickup=hz.id)  # destination: Shanghai
    assert [f["node_id"] for f in order["fulfillments"]] == [hz.id]
    assert on_list(await hz.items(), order["id"]) is not None
    assert on_list(await sh.items(), order["id"]) is None

    r = await hz.picked(order["id"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready_for_pickup" and body["order_status"] == "ready_for_pickup"
    assert body["pickup_code_issued"] is True and "pickup_code" not in body  # the store never sees it

    code = (await get_order(world.c, order["id"]))["fulfillments"][0]["pickup_code"]  # admin view: sent to buyer
    assert code is not None and len(code) >= 6 and code.isdigit()
    ready = on_list((await hz.picklist()).json()["awaiting_handover"], order["id"])
    assert ready["status"] == "ready_for_pickup" and ready["expires_at"] is not None

    wrong = str((int(code) + 1) % 10**6).zfill(6)
    r = await hz.collect(wrong)
    assert r.status_code == 404 and r.json()["field"] == "code"
    r = await sh.collect(code)  # the right code at another store: not there
    assert r.status_code == 404

    r = await hz.collect(code)
    assert r.status_code == 200, r.text
    assert r.json()["order_id"] == order["id"] and r.json()["order_status"] == "collected"
    r = await hz.collect(code)
    assert r.status_code == 409 and "already used" in r.json()["message"]

    lv = await level(world.c, bag, hz.id)
    assert (lv["on_hand"], lv["reserved"], lv["available"]) == (1, 0, 1)
    assert await pg_on_hand(services, hz.id, bag) == 1
    done = await get_order(world.c, order["id"])
    assert done["status"] == "collected"
    assert [(a, b, c) for a, b, c in steps(done)][1:] == [
        ("allocated", "ready_for_pickup", "store:picked"), ("ready_for_pickup", "collected", "store:collected")]
    await assert_consistent(services, [hz.id, sh.id])


# ---- reject one line: it moves to the second-best store ---------------------------------------
async def test_reject_one_line_reroutes_it_and_availability_drops(world, services):
    near = await open_store(world, "near", NEAR)
    far = await open_store(world, "far", FAR)
    milk, bread = await world.sku("milk"), await world.sku("bread")
    for node, n in ((near.id, 1), (far.id, 4)):
        await world.stock(node, milk, n)
        await world.stock(node, bread, n)

    order = await place(world, "r1", [(milk, 1), (bread, 1)])
    assert [f["node_id"] for f in order["fulfillments"]] == [near.id]
    assert (await level(world.c, bread, near.id))["on_hand"] == 1

    r = await near.reject(order["id"], {"reason": "damaged", "lines": [{"sku": bread, "quantity": 1}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["rerouted"] == [{"sku": bread, "quantity": 1}] and body["backordered"] == [], body
    assert body["lines"] == [{"sku": milk, "quantity": 1}] and body["status"] == "allocated"

    # the bread is on the second-best store's list, the milk stays on the first's
    assert on_list(await far.items(), order["id"])["lines"] == [{"sku": bread, "quantity": 1, "name": "bread"}]
    assert on_list(await near.items(), order["id"])["lines"] == [{"sku": milk, "quantity": 1, "name": "milk"}]
    # the damaged unit left the first store: on-hand and availability down, not released back
    lv = await level(world.c, bread, near.id)
    assert (lv["on_hand"], lv["reserved"], lv["available"]) == (0, 0, 0)
    assert await pg_on_hand(services, near.id, bread) == 0
    assert (await level(world.c, bread, far.id))["reserved"] == 1
    await assert_consistent(services, [near.id, far.id])

    o = await get_order(world.c, order["id"])
    assert o["status"] == "allocated"
    assert sorted((f["node_id"], f["status"]) for f in o["fulfillments"]) == sorted(
        [(near.id, "allocated"), (far.id, "allocated")])
    rejected, rerouted = [h for h in o["history"] if h["cause"] in ("store:rejected", "store:rerouted")]
    assert rejected["detail"]["reason"] == "damaged" and rejected["detail"]["lines"] == [{"sku": bread, "quantity": 1}]
    assert rerouted["detail"]["rerouted_to"][0]["node_id"] == far.id

    # both stores finish; the order follows its fulfilments, moving only when all are done
    assert (await near.picked(order["id"])).json()["order_status"] == "picking"
    assert (await near.shipped(order["id"])).json()["order_status"] == "picking"
    r = await far.handover(order["id"])  # picked and handed to the courier in one step: recorded as both
    assert r.status_code == 200, r.text
    assert r.json()["order_status"] == "shipped"
    o = await get_order(world.c, order["id"])
    assert [b for _, b, _ in steps(o)][-2:] == ["picked", "shipped"]
    assert await pg_on_hand(services, near.id, milk) == 0 and await pg_on_hand(services, far.id, bread) == 3
    await assert_consistent(services, [near.id, far.id])


async def test_reject_with_nowhere_to_go_backorders_and_out_of_stock_empties_shelf(world, services):
    only = await open_store(world, "only", NEAR)
    soap = await world.sku("soap")
    await world.stock(only.id, soap, 5)
    held = await place(world, "keep", [(soap, 2)])  # another order holding 2 at the same store
    order = await place(world, "oos", [(soap, 1)])
    assert (await level(world.c, soap, only.id))["available"] == 2

    r = await only.reject(order["id"], {"reason": "out_of_stock"})  # no lines: all of it
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "rejected" and r.json()["backordered"] == [{"sku": soap, "quantity": 1}]
    assert r.json()["order_status"] == "backordered"

    # the shelf is empty: nothing more is offered here, the other order's 2 stay covered
    lv = await level(world.c, soap, only.id)
    assert (lv["on_hand"], lv["reserved"], lv["available"]) == (2, 2, 0)
    o = await get_order(world.c, order["id"])
    assert o["status"] == "backordered" and "out_of_stock" in o["reason"]
    assert o["lines"][0]["status"] == "backordered"
    assert on_list(await only.items(), order["id"]) is None
    assert on_list(await only.items(), held["id"]) is not None
    await assert_consistent(services, [only.id])


# ---- isolation ------------------------------------------------------------------------------
async def test_store_isolation(world, services):
    a = await open_store(world, "a", NEAR)
    b = await open_store(world, "b", FAR)
    jam = await world.sku("jam")
    await world.stock(a.id, jam, 3)
    order = await place(world, "iso", [(jam, 1)])
    assert order["fulfillments"][0]["node_id"] == a.id

    c = world.c
    assert (await c.get(f"/stores/{a.id}/picklist", headers=auth(b.token))).status_code == 403
    assert (await c.get(f"/stores/{a.id}/picklist", headers=auth(None))).status_code == 401
    assert (await c.get(f"/stores/{a.id}/picklist", headers=auth("oms_store_guess"))).status_code == 401
    denied = await c.get(f"/stores/{a.id}/picklist")  # the admin token is no store token
    assert denied.status_code == 403 and "admin token is not a store token" in denied.json()["message"]
    for verb in ("picked", "shipped"):
        r = await c.post(f"/stores/{a.id}/orders/{order['id']}/{verb}", headers=auth(b.token))
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
        r = await b.post(f"/orders/{order['id']}/{verb}")  # B's own path: A's order is not there
        assert r.status_code == 404
    r = await c.post(f"/stores/{a.id}/orders/{order['id']}/reject", json={"reason": "x"}, headers=auth(b.token))
    assert r.status_code == 403
    assert (await b.reject(order["id"], {"reason": "x"})).status_code == 404
    assert on_list(await b.items(), order["id"]) is None

    # tokens: admin only; a revoked token stops working at once
    assert (await c.post(f"/nodes/{a.id}/tokens", headers=auth(a.token))).status_code == 401
    assert (await c.post("/nodes/no-such-node/tokens")).status_code == 404
    listed = (await c.get(f"/nodes/{a.id}/tokens")).json()
    assert len(listed) == 1 and "token" not in listed[0] and "token_hash" not in listed[0]
    stored = await services.pool.fetchval("select token_hash from store_tokens where id = $1", listed[0]["id"])
    assert stored != a.token and a.token not in stored
    assert (await c.delete(f"/nodes/{b.id}/tokens/{listed[0]['id']}")).status_code == 404  # not B's token
    assert (await c.delete(f"/nodes/{a.id}/tokens/{listed[0]['id']}")).status_code == 204
    assert (await a.picklist()).status_code == 401

    o = await get_order(c, order["id"])  # nothing happened to the order
    assert o["status"] == "allocated" and len(o["history"]) == 1
    assert (await level(c, jam, a.id))["reserved"] == 1


# ---- bad input: each a clear 4xx, nothing changed -------------------------------------------------
async def test_bad_input_is_a_clear_4xx_and_changes_nothing(world, services):
    s = await open_store(world, "s", NEAR)
    cup, pen = await world.sku("cup"), await world.sku("pen")
    await world.stock(s.id, cup, 4)
    await world.stock(s.id, pen, 4)
    order = await place(world, "bad", [(cup, 2)])
    pickup = await place(world, "badp", [(pen, 1)], mode="pickup", pickup=s.id)
    oid = order["id"]
    before = await get_order(world.c, oid)

    r = await s.picked("o-no-such-order")
    assert r.status_code == 404 and r.json()["field"] == "order_id"
    r = await s.reject(oid, {"lines": [{"sku": cup, "quantity": 1}]})
    assert r.status_code == 400 and "reason" in r.json()["message"]
    r = await s.reject(oid, {"reason": "   "})
    assert r.status_code == 400 and r.json()["field"] == "reason"
    r = await s.reject(oid, {"reason": "damaged", "lines": [{"sku": pen, "quantity": 1}]})
    assert r.status_code == 400 and r.json()["field"] == "lines[0].sku"
    r = await s.reject(oid, {"reason": "damaged", "lines": [{"sku": cup, "quantity": 3}]})
    assert r.status_code == 400 and r.json()["field"] == "lines[0].quantity"
    r = await s.reject(oid, {"reason": "damaged", "lines": [{"sku": cup, "quantity": 0}]})
    assert r.status_code == 400
    r = await s.reject(oid, {"reason": "damaged", "lines": []})
    assert r.status_code == 400 and r.json()["field"] == "lines"
    r = await s.post(f"/orders/{oid}/reject", json=None)
    assert r.status_code == 400 and r.json()["field"] == "reason", r.text
    assert await get_order(world.c, oid) == before
    assert (await level(world.c, cup, s.id))["on_hand"] == 4

    first = await s.picked(oid)
    assert first.status_code == 200
    assert (await s.picked(oid)).json() == first.json()  # picked twice (an app retry): the same 200
    assert (await s.shipped(oid)).status_code == 200
    for again in (s.shipped, s.picked):
        r = await again(oid)
        assert r.status_code == 200 and r.json()["status"] == "shipped"
    r = await s.reject(oid, {"reason": "damaged"})
    assert r.status_code == 409
    assert (await level(world.c, cup, s.id))["on_hand"] == 2

    r = await s.shipped(pickup["id"])  # a pickup is handed over with its code, not shipped
    assert r.status_code == 409 and "pickup code" in r.json()["message"]
    r = await s.collect("12ab56")
    assert r.status_code == 400 and r.json()["field"] == "code"
    r = await s.collect("000000000000000")
    assert r.status_code == 400
    assert (await get_order(world.c, pickup["id"]))["status"] == "allocated"
    await assert_consistent(services, [s.id])


# ---- two staff at once ----------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["delivery", "pickup"])
async def test_two_concurrent_picked_one_wins(world, services, mode):
    s = await open_store(world, "s", NEAR)
    tv = await world.sku("tv")
    await world.stock(s.id, tv, 3)
    kw = {"mode": "pickup", "pickup": s.id} if mode == "pickup" else {}
    order = await place(world, "race", [(tv, 1)], **kw)

    rs = await asyncio.gather(*(s.picked(order["id"]) for _ in range(2)))
    assert [r.status_code for r in rs] == [200, 200], [r.text for r in rs]  # the second: a retry
    assert rs[0].json() == rs[1].json()
    o = await get_order(world.c, order["id"])
    assert len([h for h in o["history"] if h["cause"] == "store:picked"]) == 1
    if mode == "pickup":
        codes = await services.pool.fetch("select pickup_code from fulfillments where order_id = $1", order["id"])
        assert len(codes) == 1 and codes[0]["pickup_code"] is not None

    # hand-over and reject racing: one wins, nothing is committed twice
    rs = await asyncio.gather(s.reject(order["id"], {"reason": "damaged"}),
                              s.shipped(order["id"]) if mode == "delivery" else
                              s.collect((await get_order(world.c, order["id"]))["fulfillments"][0]["pickup_code"]))
    assert sorted(r.status_code for r in rs) == [200, 409], [r.text for r in rs]
    await assert_consistent(services, [s.id])


# ---- cancelled while in the store's hands --------------------------------------------------------
async def test_cancel_leaves_the_pick_list_and_picked_answers_409(world, services):
    s = await open_store(world, "s", NEAR)
    ink = await world.sku("ink")
    await world.stock(s.id, ink, 3)
    order = await place(world, "c1", [(ink, 2)])
    second = await place(world, "c2", [(ink, 1)])
    assert on_list(await s.items(), order["id"]) is not None

    r = await world.c.post(f"/orders/{order['id']}/cancel", json={"reason": "refund (拦截)"})
    assert r.status_code == 200, r.text
    assert on_list(await s.items(), order["id"]) is None
    assert (await level(world.c, ink, s.id))["reserved"] == 1
    for verb in (s.picked, s.shipped):
        r = await verb(order["id"])
        assert r.status_code == 409 and "cancelled" in r.json()["message"] and r.json()["current"] == "cancelled"
    assert (await s.reject(order["id"], {"reason": "damaged"})).status_code == 409

    # cancelled after it was picked: the courier must not take it
    assert (await s.picked(second["id"])).status_code == 200
    assert (await world.c.post(f"/orders/{second['id']}/cancel", json={})).status_code == 200
    r = await s.shipped(second["id"])
    assert r.status_code == 409 and "cancelled" in r.json()["message"]
    lv = await level(world.c, ink, s.id)
    assert (lv["on_hand"], lv["reserved"]) == (3, 0)
    await assert_consistent(services, [s.id])


# ---- uncollected pickups expire --------------------------------------------------------------------
async def test_uncollected_pickup_is_cancelled_after_the_configured_time(world, services):
    s = await open_store(world, "s", NEAR)
    toy = await world.sku("toy")
    await world.stock(s.id, toy, 2)
    order = await place(world, "x1", [(toy, 1)], mode="pickup", pickup=s.id)
    assert (await s.picked(order["id"])).status_code == 200
    code = (await get_order(world.c, order["id"]))["fulfillments"][0]["pickup_code"]

    now = datetime.now(timezone.utc)
    hours = services.settings.pickup_expiry_hours
    assert order["id"] not in await expiry.expire_uncollected_pickups(services, now=now + timedelta(hours=hours - 1))
    assert (await get_order(world.c, order["id"]))["status"] == "ready_for_pickup"
    expired = await expiry.expire_uncollected_pickups(services, now=now + timedelta(hours=hours, minutes=1),
                                                      node_id=s.id)
    assert expired == [order["id"]]

    o = await get_order(world.c, order["id"])
    assert o["status"] == "cancelled" and "not collected" in o["reason"]
    lv = await level(world.c, toy, s.id)
    assert (lv["on_hand"], lv["reserved"]) == (2, 0)  # stock returned
    r = await s.collect(code)
    assert r.status_code == 409 and "cancelled" in r.json()["message"]
    assert await expiry.expire_uncollected_pickups(services, now=now + timedelta(hours=hours + 5), node_id=s.id) == []
    await assert_consistent(services, [s.id])


# ---- wrong codes are throttled per store ---------------------------------------------------------
async def test_repeated_wrong_codes_are_throttled(world, services):
    s = await open_store(world, "s", NEAR)
    other = await open_store(world, "o", FAR)
    fan = await world.sku("fan")
    await world.stock(s.id, fan, 1)
    order = await place(world, "t1", [(fan, 1)], mode="pickup", pickup=s.id)
    assert (await s.picked(order["id"])).status_code == 200
    code = (await get_order(world.c, order["id"]))["fulfillments"][0]["pickup_code"]
    wrong = [str((int(code) + i) % 10**6).zfill(6) for i in range(1, model.WRONG_CODE_LIMIT + 1)]

    for w in wrong:
        assert (await s.collect(w)).status_code == 404
    r = await s.collect(code)  # even the right code waits: guesses learn nothing
    assert r.status_code == 429 and r.json()["retry_after"] > 0
    assert (await other.collect(wrong[0])).status_code == 404  # another store is not affected
    assert (await get_order(world.c, order["id"]))["status"] == "ready_for_pickup"

    await services.redis.delete(handover.wrong_code_key(s.id))  # the window passes
    assert (await s.collect(code)).status_code == 200


# ---- the pick list: urgency, the one-hour clock, cheap polling -------------------------------------
async def test_picklist_orders_by_promise_flags_at_risk_and_supports_etag(world, services):
    s = await open_store(world, "s", NEAR, capacity=60)  # one order a minute
    far = await open_store(world, "far", FAR)
    pen = await world.sku("pen")
    await world.stock(s.id, pen, 10)
    now = datetime.now(timezone.utc)
    fresh = await place(world, "fresh", [(pen, 1)], paid_at=now.isoformat())
    older = await place(world, "older", [(pen, 2)], paid_at=(now - timedelta(minutes=10)).isoformat())
    pickup = await place(world, "pk", [(pen, 1)], mode="pickup", pickup=s.id)

    r = await s.picklist()
    assert r.status_code == 200 and r.headers.get("etag")
    body = r.json()
    ids = [i["order_id"] for i in body["items"]]
    assert ids == [older["id"], fresh["id"], pickup["id"]]  # most urgent first, no promise last
    first, second, third = body["items"]
    assert 45 < first["minutes_left"] <= 50 and first["at_risk"] is False
    assert 55 < second["minutes_left"] <= 60 and second["at_risk"] is False
    assert (first["pick_minutes"], second["pick_minutes"]) == (1.0, 2.0)  # queue position x 60/capacity
    assert third["minutes_left"] is None and third["at_risk"] is False
    assert body["at_risk"] == 0
    assert body["by_sku"] == [{"sku": pen, "quantity": 4, "orders": ids, "name": "pen"}]

    # half an hour on, nobody has picked: the older one (20 min left < 1 picking + 25 courier) is at risk
    later = await picklist.pick_list(services, s.id, now=now + timedelta(minutes=30))
    assert [(e.order_id, e.at_risk) for e in later.items] == [
        (older["id"], True), (fresh["id"], False), (pickup["id"], False)]
    assert later.at_risk == 1 and 15 < later.items[0].minutes_left <= 20
    # and 25 minutes before its promise a picked delivery waiting for the courier is at risk too
    assert (await s.picked(fresh["id"])).status_code == 200
    later = await picklist.pick_list(services, s.id, now=now + timedelta(minutes=36))
    assert [(e.order_id, e.at_risk) for e in later.awaiting_handover] == [(fresh["id"], True)]
    assert [(e.order_id, e.at_risk) for e in later.items] == [(older["id"], True), (pickup["id"], False)]

    # polling: unchanged work answers 304 without a body; any change gives a new ETag
    r = await s.picklist()
    etag = r.headers["etag"]
    r = await s.picklist(**{"If-None-Match": etag})
    assert r.status_code == 304 and r.content == b""
    assert (await far.picklist(**{"If-None-Match": etag})).status_code == 200  # another store's list
    assert (await s.picked(pickup["id"])).status_code == 200
    r = await s.picklist(**{"If-None-Match": etag})
    assert r.status_code == 200 and r.headers["etag"] != etag
    assert [i["order_id"] for i in r.json()["items"]] == [older["id"]]
    assert [h["order_id"] for h in r.json()["awaiting_handover"]] == [fresh["id"], pickup["id"]]

    # a cancel elsewhere changes the list too
    etag = r.headers["etag"]
    assert (await world.c.post(f"/orders/{older['id']}/cancel", json={})).status_code == 200
    r = await s.picklist(**{"If-None-Match": etag})
    assert r.status_code == 200 and r.json()["items"] == []


def test_order_status_follows_fulfilments():
    def f(mode, *statuses, transfers=()):
        return status.order_status_from(mode, [(s, "serve") for s in statuses] + [(s, "transfer") for s in transfers])

    assert f("delivery", "allocated") == "allocated"
    assert f("delivery", "picked", "allocated") == "picking"
    assert f("delivery", "picked", "shipped") == "picked"
    assert f("delivery", "shipped", "rejected", "shipped") == "shipped"
    assert f("delivery", "rejected") == "backordered"
    assert f("pickup", "ready_for_pickup") == "ready_for_pickup"
    assert f("pickup", "collected", "cancelled") == "collected"
    # a pickup fed by transfers: ready only once they have arrived and the store marked it ready
    assert f("pickup", "allocated", transfers=["allocated"]) == "allocated"
    assert f("pickup", "ready_for_pickup", transfers=["picked"]) == "picking"
    assert f("pickup", transfers=["shipped"]) == "picking"
    assert f("pickup", "allocated", transfers=["received"]) == "picking"  # arrived; its own part to pick
    assert f("pickup", "ready_for_pickup", transfers=["received", "rejected"]) == "ready_for_pickup"
    assert f("pickup", "collected", transfers=["received"]) == "collected"
    # parts delivered: the order is delivered once all are; a returned transfer no longer counts
    assert f("delivery", "delivered", "shipped") == "shipped"
    assert f("delivery", "delivered", "delivered") == "delivered"
    assert f("pickup", "ready_for_pickup", transfers=["returned"]) == "ready_for_pickup"
    assert status.status_path("picking", "shipped") == ["picked", "shipped"]
    assert status.status_path("picked", "picking") == ["allocated", "picking"]
    with pytest.raises(Exception) as e:
        status.status_path("collected", "allocated")
    assert getattr(e.value, "status_code", None) == 409


# ---- partial quantities, no ping-pong, pickup with a short line -----------------------------------
async def test_a_reroute_in_a_dense_area_looks_past_the_nearest_covering_stores(world, services):
    # a downtown with more covering stores than a one-hour order reads at first, none holding the
    # SKU: the re-route that leaves out the rejecting store must still widen to the store that has it
    limit = services.nodes.network.delivery_limit
    lat, lng = spot(world, DEST)
    for i in range(limit):
        await world.node(f"dense-{i}", lat + 0.001 + 0.0001 * (i % 6), lng + 0.001 + 0.0001 * (i // 6))
    near = await open_store(world, "near", NEAR)
    far = await open_store(world, "far", FAR)
    egg = await world.sku("egg")
    await world.stock(near.id, egg, 2)
    await world.stock(far.id, egg, 3)

    order = await place(world, "dense", [(egg, 2)])
    assert [f["node_id"] for f in order["fulfillments"]] == [near.id]
    r = await near.reject(order["id"], {"reason": "damaged"})
    assert r.status_code == 200, r.text
    got = (await world.c.get(f"/orders/{order['id']}")).json()
    assert got["status"] == "allocated", got
    assert {f["node_id"] for f in got["fulfillments"] if f["status"] == "allocated"} == {far.id}, got


async def crowd(world, around, count: int, **kw) -> None:
    """count empty stores nearer `around` than any of the test's NEAR / FAR stores."""
    lat, lng = spot(world, around)
    for i in range(count):
        await world.node(f"crowd-{i}", lat + 0.0002 + 0.00005 * (i % 6), lng + 0.0002 + 0.00005 * (i // 6), **kw)


async def test_a_pickup_in_a_dense_area_takes_a_transfer_from_past_the_nearest_stores(world, services):
    # more stores around the chosen pickup store than routing looks at first, none holding the SKU
    shop = await open_store(world, "shop", FAR, capabilities=("pickup",))
    await crowd(world, FAR, services.nodes.network.nearest)
    depot = await open_store(world, "depot", NEAR)  # 1.7 km away: past all of them
    lamp = await world.sku("lamp")
    await world.stock(depot.id, lamp, 3)

    order = await place(world, "dense-pickup", [(lamp, 2)], mode="pickup", pickup=shop.id)
    assert order["status"] == "allocated", order
    assert [(f["node_id"], f["role"]) for f in order["fulfillments"]] == [(depot.id, "transfer")]


async def test_a_parcel_in_a_dense_area_ships_from_past_the_nearest_stores(world, services):
    await crowd(world, DEST, services.nodes.network.nearest, capabilities=("ship",))
    far = await open_store(world, "far", FAR, capabilities=("ship",))
    cup = await world.sku("cup")
    await world.stock(far.id, cup, 1)

    order = await place(world, "dense-ship", [(cup, 1)], mode="ship")
    assert order["status"] == "allocated", order
    assert [f["node_id"] for f in order["fulfillments"]] == [far.id]


async def test_a_parcel_no_node_holds_is_not_routed_over_every_node_until_one_does(world, services, monkeypatch):
    # a flash sale's sold-out SKU: past the nearest stores, stock is read, but routing over all of
    # them (a millisecond in a chain of hundreds) only runs when one of them holds a unit
    await crowd(world, DEST, services.nodes.network.nearest, capabilities=("ship",))
    far = await open_store(world, "far", FAR, capabilities=("ship",))
    gone = await world.sku("gone")
    wide_plans = []
    real = services.nodes.plan

    def plan(request, stock, exclude=frozenset(), *, wide=False):
        wide_plans.append(wide)
        return real(request, stock, exclude, wide=wide)
    monkeypatch.setattr(services.nodes, "plan", plan)

    order = await place(world, "gone-1", [(gone, 1)], mode="ship")
    assert order["status"] == "backordered" and wide_plans == [False], (order, wide_plans)

    await world.stock(far.id, gone, 2)  # the restock routes the waiting order first
    first = await get_order(world.c, order["id"])
    assert first["status"] == "allocated" and [f["node_id"] for f in first["fulfillments"]] == [far.id], first
    order = await place(world, "gone-2", [(gone, 1)], mode="ship")
    assert [f["node_id"] for f in order["fulfillments"]] == [far.id], order
    assert wide_plans == [False, False, True, False, True]


async def test_partial_quantity_reject_and_no_return_to_a_rejecting_store(world, services):
    near = await open_store(world, "near", NEAR)
    far = await open_store(world, "far", FAR)
    egg, oil = await world.sku("egg"), await world.sku("oil")
    await world.stock(near.id, egg, 3)
    await world.stock(far.id, egg, 3)
    await world.stock(near.id, oil, 2)

    order = await place(world, "q", [(egg, 3)])
    assert order["fulfillments"][0]["node_id"] == near.id
    r = await near.reject(order["id"], {"reason": "damaged", "lines": [{"sku": egg, "quantity": 1}]})
    assert r.status_code == 200, r.text
    assert r.json()["lines"] == [{"sku": egg, "quantity": 2}] and r.json()["rerouted"] == [{"sku": egg, "quantity": 1}]
    lv = await level(world.c, egg, near.id)
    assert (lv["on_hand"], lv["reserved"], lv["available"]) == (2, 2, 0)
    await assert_consistent(services, [near.id, far.id])

    # the second store turns its unit down too: it does not bounce back to the first
    r = await far.reject(order["id"], {"reason": "damaged"})
    assert r.status_code == 200, r.text
    assert r.json()["backordered"] == [{"sku": egg, "quantity": 1}]
    o = await get_order(world.c, order["id"])
    assert o["status"] == "partially_allocated" and o["reason"].startswith("partly backordered")
    assert o["lines"][0]["waiting"] == 1 and o["lines"][0]["status"] == "backordered"
    assert sorted(f["status"] for f in o["fulfillments"]) == ["allocated", "rejected"]

    assert (await near.handover(order["id"])).status_code == 200  # the 2 left ship
    lv = await level(world.c, egg, near.id)
    assert (lv["on_hand"], lv["reserved"], lv["available"]) == (0, 0, 0)
    # one egg still waits for stock: the order says so while its shipped part is on the road
    assert (await get_order(world.c, order["id"]))["status"] == "partially_allocated"
    await assert_consistent(services, [near.id, far.id])

    # a pickup store short of one line: that line is backordered, the rest is ready as usual
    p = await place(world, "pq2", [(oil, 2)], mode="pickup", pickup=near.id)
    r = await near.reject(p["id"], {"reason": "out of stock", "lines": [{"sku": oil, "quantity": 1}]})
    assert r.status_code == 200 and r.json()["backordered"] == [{"sku": oil, "quantity": 1}]
    assert r.json()["lines"] == [{"sku": oil, "quantity": 1}]
    ready = (await near.picked(p["id"])).json()
    assert (ready["status"], ready["order_status"]) == ("ready_for_pickup", "partially_allocated")
    code = (await get_order(world.c, p["id"]))["fulfillments"][0]["pickup_code"]
    assert (await near.collect(code)).json()["status"] == "collected"
    # the buyer gives up the missing unit: nothing waits any more, the order is collected
    r = await world.c.post(f"/orders/{p['id']}/cancel", json={"lines": [1]})
    assert r.status_code == 409 and r.json()["handed_over"][0]["status"] == "collected", r.text
    lv = await level(world.c, oil, near.id)
    assert (lv["on_hand"], lv["reserved"]) == (0, 0)
    await assert_consistent(services, [near.id, far.id])


# ---- a pickup whose store lacks the goods: another store transfers them in --------------------------
async def test_pickup_fed_by_a_transfer_from_another_store(world, services):
    shop = await open_store(world, "shop", FAR, capabilities=("pickup",))  # the buyer's chosen store: empty
    depot = await open_store(world, "depot", NEAR)  # nearby, can ship
    lamp = await world.sku("lamp")
    await world.stock(depot.id, lamp, 3)

    order = await place(world, "tr", [(lamp, 2)], mode="pickup", pickup=shop.id)
    assert order["status"] == "allocated", order
    fs = order["fulfillments"]
    assert [(f["node_id"], f["role"]) for f in fs] == [(depot.id, "transfer")]

    src = on_list(await depot.items(), order["id"])
    assert src["role"] == "transfer" and src["transfer_to"] == shop.id
    incoming = (await shop.picklist()).json()["incoming"]
    assert [(i["order_id"], i["from_node_id"], i["status"]) for i in incoming] == [(order["id"], depot.id, "allocated")]
    r = await shop.picked(order["id"])  # nothing has arrived yet
    assert r.status_code == 409 and depot.id in r.json()["message"]
    assert (await shop.received(order["id"])).status_code == 409  # nothing shipped to it yet

    assert (await depot.picked(order["id"])).json()["status"] == "picked"  # not a pickup code: a transfer
    r = await depot.shipped(order["id"])
    assert r.status_code == 200 and r.json()["order_status"] == "picking"  # on its way, not yet ready
    lv = await level(world.c, lamp, depot.id)
    assert (lv["on_hand"], lv["reserved"]) == (1, 0)  # the goods left the depot
    assert (await shop.picklist()).json()["incoming"][0]["status"] == "shipped"
    r = await shop.picked(order["id"])  # shipped is not arrived: the store says when it is
    assert r.status_code == 409 and "/received" in r.json()["message"]

    r = await shop.received(order["id"])  # arrived, nothing of its own to pick: ready, a code is issued
    assert r.status_code == 200, r.text
    assert r.json()["order_status"] == "ready_for_pickup" and r.json()["transferred_in"] == [{"sku": lamp, "quantity": 2}]
    assert (await shop.received(order["id"])).json() == r.json()  # a retry: the same 200
    listed = (await shop.picklist()).json()
    assert listed["incoming"] == []
    waiting = on_list(listed["awaiting_handover"], order["id"])  # the whole order waits for the buyer
    assert waiting["transferred_in"] == [{"sku": lamp, "quantity": 2, "name": "lamp"}]
    assert waiting["status"] == "ready_for_pickup"
    code = next(f for f in (await get_order(world.c, order["id"]))["fulfillments"] if f["node_id"] == shop.id)["pickup_code"]
    r = await shop.collect(code)
    assert r.status_code == 200 and r.json()["order_status"] == "collected"
    assert (await get_order(world.c, order["id"]))["status"] == "collected"
    await assert_consistent(services, [shop.id, depot.id])


async def test_pickup_store_rejects_and_the_goods_are_transferred_in(world, services):
    shop = await open_store(world, "shop", FAR, capabilities=("pickup",))
    depot = await open_store(world, "depot", NEAR)
    vase = await world.sku("vase")
    await world.stock(shop.id, vase, 1)
    await world.stock(depot.id, vase, 2)
    order = await place(world, "rt", [(vase, 1)], mode="pickup", pickup=shop.id)
    assert [(f["node_id"], f["role"]) for f in order["fulfillments"]] == [(shop.id, "serve")]

    r = await shop.reject(order["id"], {"reason": "damaged"})
    assert r.status_code == 200, r.text
    assert r.json()["rerouted"] == [{"sku": vase, "quantity": 1}] and r.json()["order_status"] == "allocated"
    assert on_list(await depot.items(), order["id"])["role"] == "transfer"
    assert (await shop.picked(order["id"])).status_code == 409  # waiting for the depot
    assert (await depot.shipped(order["id"])).status_code == 409  # not picked yet
    assert (await depot.handover(order["id"])).status_code == 200
    r = await shop.received(order["id"])
    assert r.status_code == 200, r.text
    assert r.json()["order_status"] == "ready_for_pickup"
    assert (await shop.picked(order["id"])).json()["status"] == "ready_for_pickup"  # picked again: a retry
    code = next(f["pickup_code"] for f in (await get_order(world.c, order["id"]))["fulfillments"]
                if f["node_id"] == shop.id and f["status"] == "ready_for_pickup")
    assert (await shop.collect(code)).json()["order_status"] == "collected"
    lv_shop, lv_depot = await level(world.c, vase, shop.id), await level(world.c, vase, depot.id)
    assert (lv_shop["on_hand"], lv_depot["on_hand"], lv_depot["reserved"]) == (0, 1, 0)
    await assert_consistent(services, [shop.id, depot.id])
