"""The order lifecycle through a real day (issue 12), through the HTTP API on the real servers:
partial backorders retried, cancels that respect what left the building, one late-delivery
policy, hand-over steps as staff use them, delivered / completed, and the timer job."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import msgspec

from oms.orders import timers
from test_store_ops import FAR, NEAR, assert_consistent, get_order, level, on_list, open_store, pg_on_hand, place, spot


async def wait_for(predicate, timeout_s: float = 5.0):
    for _ in range(int(timeout_s / 0.05)):
        if got := await predicate():
            return got
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


def causes(order: dict) -> list[str]:
    return [h["cause"] for h in order["history"]]


# ---- 1. a backordered line inside an allocated order is tried again ---------------------------
async def test_restock_routes_the_missing_line_of_a_partially_allocated_order(world, services):
    wh = await world.node("wh", *spot(world, FAR), kind="warehouse", capabilities=("ship",))
    shirt, scarf = await world.sku("shirt"), await world.sku("scarf")
    await world.stock(wh, shirt, 5)

    first = await place(world, "pb1", [(shirt, 1), (scarf, 2)], mode="ship")
    assert first["status"] == "partially_allocated", first
    served, missing = first["lines"]
    assert (served["status"], served["waiting"]) == ("open", 0)
    assert (missing["status"], missing["waiting"], missing["line_no"]) == ("backordered", 2, 2)
    assert missing["reason"] and first["reason"].startswith("partly backordered")
    second = await place(world, "pb2", [(scarf, 1)], mode="ship")
    assert second["status"] == "backordered"

    # by hand, with nothing in stock yet: tried, still waiting, not a 409
    r = await world.c.post(f"/orders/{first['id']}/allocate")
    assert r.status_code == 200 and r.json()["status"] == "partially_allocated", r.text

    await world.stock(wh, scarf, 2)  # two arrive: the oldest order waiting for them gets them
    o = await wait_for(lambda: _status_is(world, first["id"], "allocated"))
    assert o["reason"] is None and [l["waiting"] for l in o["lines"]] == [0, 0]
    assert [l["status"] for l in o["lines"]] == ["open", "open"]
    assert sorted((f["node_id"], tuple((x["sku"], x["quantity"]) for x in f["lines"])) for f in o["fulfillments"]) \
        == sorted([(wh, ((shirt, 1),)), (wh, ((scarf, 2),))])
    assert o["history"][-1]["cause"] == "restock" and o["history"][-1]["from_status"] == "partially_allocated"
    assert (await get_order(world.c, second["id"]))["status"] == "backordered"
    assert (await level(world.c, scarf, wh))["reserved"] == 2
    r = await world.c.post(f"/orders/{first['id']}/allocate")  # nothing waits any more
    assert r.status_code == 409 and r.json()["current"] == "allocated"
    await assert_consistent(services, [wh])


async def _status_is(world, order_id: str, status: str) -> dict | None:
    o = await get_order(world.c, order_id)
    return o if o["status"] == status else None


# ---- 2. an order with a handed-over part is not cancelled ---------------------------------------
async def test_cancel_after_a_part_was_handed_over_is_409_and_a_partial_cancel_releases_only_open_parts(
        world, services):
    a = await open_store(world, "a", NEAR)
    b = await open_store(world, "b", FAR)
    tea, cup = await world.sku("tea"), await world.sku("cup")
    await world.stock(a.id, tea, 3)
    await world.stock(b.id, cup, 3)
    order = await place(world, "split", [(tea, 1), (cup, 2)])
    by_node = {f["node_id"]: f for f in order["fulfillments"]}
    assert set(by_node) == {a.id, b.id}, order
    fa, fb = by_node[a.id]["id"], by_node[b.id]["id"]

    assert (await a.handover(order["id"])).status_code == 200  # the tea is with the courier
    r = await world.c.post(f"/orders/{order['id']}/cancel", json={"reason": "buyer changed mind"})
    assert r.status_code == 409, r.text
    assert fa in r.json()["message"] and r.json()["handed_over"] == [
        {"fulfillment_id": fa, "node_id": a.id, "status": "shipped"}]
    r = await world.c.post(f"/orders/{order['id']}/cancel", json={"lines": [1]})  # the shipped line
    assert r.status_code == 409 and r.json()["handed_over"][0]["fulfillment_id"] == fa
    o = await get_order(world.c, order["id"])
    assert o["status"] == "picking" and (await level(world.c, cup, b.id))["reserved"] == 2

    # the part still open can go: only its stock comes back
    r = await world.c.post(f"/orders/{order['id']}/cancel", json={"fulfillments": [fb], "reason": "refund"})
    assert r.status_code == 200, r.text
    o = r.json()
    assert o["status"] == "shipped"
    assert {f["id"]: f["status"] for f in o["fulfillments"]} == {fa: "shipped", fb: "cancelled"}
    assert [(l["status"], l["cancelled"]) for l in o["lines"]] == [("open", 0), ("cancelled", 2)]
    lv = await level(world.c, cup, b.id)
    assert (lv["on_hand"], lv["reserved"]) == (3, 0)
    assert (await level(world.c, tea, a.id))["on_hand"] == 2
    again = await world.c.post(f"/orders/{order['id']}/cancel", json={"fulfillments": [fb]})
    assert again.status_code == 200 and again.json()["status"] == "shipped"  # idempotent
    bad = await world.c.post(f"/orders/{order['id']}/cancel", json={"lines": [9]})
    assert bad.status_code == 404 and bad.json()["field"] == "lines[0]"
    bad = await world.c.post(f"/orders/{order['id']}/cancel", json={"lines": ["x"]})
    assert bad.status_code == 400
    for body in ({"lines": []}, {"line": [2]}):  # never read as "cancel all of it"
        bad = await world.c.post(f"/orders/{order['id']}/cancel", json=body)
        assert bad.status_code == 400, bad.text
    await assert_consistent(services, [a.id, b.id])


async def test_a_refund_cancels_an_open_line_by_units_and_refuses_a_shipped_one(world, services):
    from oms.orders.cancel import cancel_lines

    s = await open_store(world, "s", NEAR)
    jam, ham = await world.sku("jam"), await world.sku("ham")
    await world.stock(s.id, jam, 5)
    body = world.order("rf", [(jam, 2), (ham, 1)], lat=spot(world, "dest")[0], lng=spot(world, "dest")[1])
    body["lines"][0]["platform_line_id"], body["lines"][1]["platform_line_id"] = "L1", "L2"
    order = (await world.post_order(body)).json()
    assert order["status"] == "partially_allocated"  # no ham anywhere

    # the ham line was never served: refunding it releases nothing and the rest is simply allocated
    o, unknown = await cancel_lines(services.pool, services.inventory, order["id"], ["L2", "L9"], "test:refund")
    assert unknown == ["L9"] and o.status == "allocated" and [l.status for l in o.lines] == ["open", "cancelled"]
    assert (await s.handover(order["id"])).status_code == 200
    import pytest
    from oms.errors import IllegalTransition

    with pytest.raises(IllegalTransition):  # the jam is with the courier: a return, not a refund
        await cancel_lines(services.pool, services.inventory, order["id"], ["L1"], "test:refund")
    assert (await get_order(world.c, order["id"]))["status"] == "shipped"
    await assert_consistent(services, [s.id])


# ---- 3. one late-delivery policy -----------------------------------------------------------------
async def test_a_one_hour_order_past_its_promise_is_served_late_whether_45_or_70_minutes_old(
        world, services, monkeypatch):
    s = await open_store(world, "s", NEAR)  # ~70 m from the buyer: 20 min pick and ride, > 15 left
    wh = await world.node("wh", *spot(world, FAR), kind="warehouse", capabilities=("ship",))
    soap = await world.sku("soap")
    await world.stock(s.id, soap, 10)
    now = datetime.now(timezone.utc)
    for ext, minutes in (("m45", 45), ("m70", 70), ("m179", 179)):
        r = await world.post_order(world.order(ext, [(soap, 1)], lat=spot(world, "dest")[0],
                                               lng=spot(world, "dest")[1],
                                               paid_at=(now - timedelta(minutes=minutes)).isoformat()))
        assert r.status_code == 201, r.text
        posted = r.json()
        assert posted["status"] == "allocated", posted["reason"]
        assert [f["node_id"] for f in posted["fulfillments"]] == [s.id]
        # at risk either way; late once the promise has passed (the one promise clock's rule)
        assert posted["at_risk"] is True and posted["late"] is (minutes > 60)
        got = await get_order(world.c, posted["id"])
        assert (got["at_risk"], got["late"]) == (posted["at_risk"], posted["late"])
        assert abs(got["minutes_left"] - posted["minutes_left"]) <= 0.2
        assert abs(posted["minutes_left"] - (60 - minutes)) <= 0.5
        if minutes == 45:
            assert "served late" in got["history"][0]["detail"]["plan"]

    # by setting: parcel from a warehouse first ...
    monkeypatch.setattr(services.allocator, "settings",
                        msgspec.structs.replace(services.allocator.settings, late_delivery="ship"))
    await world.stock(wh, soap, 1)
    for ext in ("ship1", "ship2"):  # ... and the store again once the warehouse has none: never backordered
        r = await world.post_order(world.order(ext, [(soap, 1)], lat=spot(world, "dest")[0], lng=spot(world, "dest")[1],
                                               paid_at=(now - timedelta(minutes=50)).isoformat()))
        assert r.json()["status"] == "allocated", r.text
        assert [f["node_id"] for f in r.json()["fulfillments"]] == [wh if ext == "ship1" else s.id]
    await assert_consistent(services, [s.id, wh])


# ---- 4. hand-over steps as staff use them ------------------------------------------------------
async def test_store_steps_picked_before_shipped_idempotent_retries_and_clear_400s(world, services):
    s = await open_store(world, "s", NEAR)
    pen = await world.sku("pen")
    await world.stock(s.id, pen, 6)
    one, two = await place(world, "h1", [(pen, 1)]), await place(world, "h2", [(pen, 1)])

    r = await s.shipped(one["id"])  # straight from allocated: pick first, or use handover
    assert r.status_code == 409 and "/picked" in r.json()["message"] and "/handover" in r.json()["message"]
    r = await s.handover(one["id"])
    assert r.status_code == 200 and r.json()["order_status"] == "shipped", r.text
    again = await s.shipped(one["id"])  # the app retries
    assert again.status_code == 200 and again.json() == r.json()
    assert (await s.handover(one["id"])).json() == r.json()
    o = await get_order(world.c, one["id"])
    assert [(h["from_status"], h["to_status"], h["cause"]) for h in o["history"]][1:] == [
        ("allocated", "picked", "store:picked"), ("picked", "shipped", "store:shipped")]
    assert (await pg_on_hand(services, s.id, pen)) == 5  # committed once

    picked = await s.picked(two["id"])
    assert (await s.picked(two["id"])).json() == picked.json()
    # body-less or malformed: 400 naming the field
    r = await s.post(f"/orders/{two['id']}/reject")
    assert r.status_code == 400 and r.json()["field"] == "reason", r.text
    r = await s.c.post(f"/stores/{s.id}/orders/{two['id']}/reject", content=b"{not json",
                       headers={"Authorization": f"Bearer {s.token}", "Content-Type": "application/json"})
    assert r.status_code == 400 and "json" in r.json()["message"].lower(), r.text
    r = await s.reject(two["id"], {"reason": 7})
    assert r.status_code == 400 and r.json()["field"] == "reason", r.text
    await assert_consistent(services, [s.id])


async def test_transferred_goods_are_received_before_the_pickup_is_ready(world, services):
    shop = await open_store(world, "shop", FAR, capabilities=("pickup",))
    depot = await open_store(world, "depot", NEAR)
    mug, cap = await world.sku("mug"), await world.sku("cap")
    await world.stock(depot.id, mug, 4)
    await world.stock(shop.id, cap, 2)
    order = await place(world, "tr", [(mug, 1), (cap, 1)], mode="pickup", pickup=shop.id)
    assert sorted((f["node_id"], f["role"]) for f in order["fulfillments"]) == sorted(
        [(shop.id, "serve"), (depot.id, "transfer")])

    assert (await depot.handover(order["id"])).status_code == 200  # the van left the depot
    r = await shop.picked(order["id"])  # shipped is not arrived
    assert r.status_code == 409 and "/received" in r.json()["message"], r.text
    r = await shop.received(order["id"])
    assert r.status_code == 200 and r.json()["status"] == "allocated"  # its own cap is still to pick
    assert on_list(await shop.items(), order["id"]) is not None
    r = await shop.picked(order["id"])
    assert r.status_code == 200 and r.json()["order_status"] == "ready_for_pickup", r.text
    entry = on_list((await shop.picklist()).json()["awaiting_handover"], order["id"])
    assert entry["lines"] == [{"sku": cap, "quantity": 1, "name": "cap"}]
    assert entry["transferred_in"] == [{"sku": mug, "quantity": 1, "name": "mug"}]

    # the buyer collects; the app's retry with the same Idempotency-Key gets the same answer
    code = next(f["pickup_code"] for f in (await get_order(world.c, order["id"]))["fulfillments"] if f["pickup_code"])
    hdr = {"Authorization": f"Bearer {shop.token}", "Idempotency-Key": "scan-1"}
    first = await shop.c.post(f"/stores/{shop.id}/pickups/{code}", headers=hdr)
    assert first.status_code == 200 and first.json()["order_status"] == "collected"
    assert (await shop.c.post(f"/stores/{shop.id}/pickups/{code}", headers=hdr)).json() == first.json()
    assert (await shop.collect(code)).status_code == 409  # a new scan of a used code
    await assert_consistent(services, [shop.id, depot.id])


async def test_pickups_expire_from_the_timer_job_without_anyone_polling(world, services):
    s = await open_store(world, "s", NEAR)
    toy = await world.sku("toy")
    await world.stock(s.id, toy, 2)
    order = await place(world, "x", [(toy, 1)], mode="pickup", pickup=s.id)
    assert (await s.picked(order["id"])).status_code == 200
    later = datetime.now(timezone.utc) + timedelta(hours=services.settings.pickup_expiry_hours, minutes=1)
    done = await timers.run_once(services, now=later)
    assert order["id"] in done.pickups_expired
    o = await get_order(world.c, order["id"])
    assert o["status"] == "cancelled" and "not collected" in o["reason"]
    assert (await level(world.c, toy, s.id))["reserved"] == 0
    await assert_consistent(services, [s.id])


# ---- 5. delivered, completed; transferred goods of a cancelled order return to stock ----------------
async def test_a_partly_delivered_order_is_delivered_then_completed(world, services):
    a = await open_store(world, "a", NEAR)
    b = await open_store(world, "b", FAR)
    tea, cup = await world.sku("tea"), await world.sku("cup")
    await world.stock(a.id, tea, 2)
    await world.stock(b.id, cup, 2)
    order = await place(world, "dl", [(tea, 1), (cup, 1)])
    fb = next(f["id"] for f in order["fulfillments"] if f["node_id"] == b.id)
    r = await a.post(f"/orders/{order['id']}/delivered")
    assert r.status_code == 409  # not shipped yet
    for s in (a, b):
        assert (await s.handover(order["id"])).status_code == 200
    r = await a.post(f"/orders/{order['id']}/delivered")  # the store's own courier
    assert r.status_code == 200 and r.json()["status"] == "delivered" and r.json()["order_status"] == "shipped"
    assert (await a.post(f"/orders/{order['id']}/delivered")).json() == r.json()
    assert (await world.c.post(f"/orders/{order['id']}/complete")).status_code == 409  # partly delivered
    r = await world.c.post(f"/orders/{order['id']}/delivered", json={"fulfillment_id": fb})  # the courier
    assert r.status_code == 200 and r.json()["status"] == "delivered", r.text
    r = await world.c.post(f"/orders/{order['id']}/complete")
    assert r.status_code == 200 and r.json()["status"] == "completed"
    assert (await world.c.post(f"/orders/{order['id']}/complete")).json()["status"] == "completed"
    assert causes(r.json())[-3:] == ["store:delivered", "api:delivered", "api:complete"]
    assert (await world.c.post(f"/orders/{order['id']}/cancel", json={})).status_code == 409


async def test_transferred_goods_of_a_cancelled_order_join_the_pickup_stores_stock(world, services):
    shop = await open_store(world, "shop", FAR, capabilities=("pickup",))
    depot = await open_store(world, "depot", NEAR)
    lamp = await world.sku("lamp")
    await world.stock(depot.id, lamp, 5)
    on_road = await place(world, "road", [(lamp, 2)], mode="pickup", pickup=shop.id)
    arrived = await place(world, "here", [(lamp, 1)], mode="pickup", pickup=shop.id)
    for o in (on_road, arrived):
        assert (await depot.handover(o["id"])).status_code == 200
    assert (await shop.received(arrived["id"])).json()["order_status"] == "ready_for_pickup"

    # cancelled after the transfer shipped: allowed (nothing reached the buyer) ...
    for o in (on_road, arrived):
        r = await world.c.post(f"/orders/{o['id']}/cancel", json={"reason": "buyer cancelled"})
        assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    # ... goods already at the store join its stock at once, those on the road when received
    assert await pg_on_hand(services, shop.id, lamp) == 1
    incoming = (await shop.picklist()).json()["incoming"]
    assert [(i["order_id"], i["order_status"]) for i in incoming] == [(on_road["id"], "cancelled")]
    r = await shop.received(on_road["id"])
    assert r.status_code == 200, r.text
    assert await pg_on_hand(services, shop.id, lamp) == 3 and await pg_on_hand(services, depot.id, lamp) == 2
    assert (await shop.received(on_road["id"])).status_code == 200  # a retry changes nothing
    assert await pg_on_hand(services, shop.id, lamp) == 3
    assert (await level(world.c, lamp, shop.id))["available"] == 3
    o = await get_order(world.c, on_road["id"])
    assert [f["status"] for f in o["fulfillments"]] == ["returned"] and "transfer:returned" in causes(o)
    await assert_consistent(services, [shop.id, depot.id])


# ---- timers: unpaid holds, at-risk escalation, one process at a time ------------------------------
async def test_unpaid_holds_expire_and_at_risk_orders_escalate_once(world, services):
    s = await open_store(world, "s", NEAR)
    gum = await world.sku("gum")
    await world.stock(s.id, gum, 5)
    now = datetime.now(timezone.utc)
    lat, lng = spot(world, "dest")
    unpaid = (await world.post_order(world.order("u1", [(gum, 1)], lat=lat, lng=lng, status="unpaid"))).json()
    short = (await world.post_order(world.order("u2", [(gum, 1)], lat=lat, lng=lng, status="unpaid",
                                                pay_by=(now + timedelta(minutes=5)).isoformat()))).json()
    paid = await place(world, "p1", [(gum, 1)], paid_at=(now - timedelta(minutes=40)).isoformat())

    done = await timers.run_once(services, now=now + timedelta(minutes=10))
    assert short["id"] in done.unpaid_expired and unpaid["id"] not in done.unpaid_expired
    assert paid["id"] in done.escalated
    done = await timers.run_once(services, now=now + timedelta(minutes=31))
    assert unpaid["id"] in done.unpaid_expired and paid["id"] not in done.escalated  # once
    for o in (unpaid, short):
        got = await get_order(world.c, o["id"])
        assert got["status"] == "cancelled" and got["history"][-1]["cause"] == "timer:unpaid-expired"
    got = await get_order(world.c, paid["id"])
    assert got["status"] == "allocated" and causes(got).count("timer:at-risk") == 1


async def test_one_timer_job_runs_at_a_time(services, monkeypatch):
    rounds: list[str] = []

    async def counted(svc, now=None, limit=200):
        rounds.append(asyncio.current_task().get_name())
        return timers.TimerRound()

    monkeypatch.setattr(timers, "run_once", counted)
    first, second = timers.TimerJob(services, 0.05), timers.TimerJob(services, 0.05)
    await services.redis.delete(first.lease.key)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(job.run(stop)) for job in (first, second)]
    await asyncio.sleep(0.5)
    holder = await first.lease.current_holder()
    assert holder in (first.lease.holder, second.lease.holder)
    assert len(rounds) >= 3 and len(set(rounds)) == 1  # every round in the one process holding the lease
    stop.set()
    await asyncio.gather(*tasks)
    assert await first.lease.current_holder() is None  # let go on the way out
