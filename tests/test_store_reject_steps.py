"""A store's reject runs in steps: no PostgreSQL row lock is held while its units are routed and reserved."""

from __future__ import annotations

import asyncio

from test_store_ops import FAR, NEAR, assert_consistent, get_order, level, on_list, open_store, place


async def test_the_order_row_is_free_while_rejected_units_are_rerouted(world, services, monkeypatch):
    near = await open_store(world, "near", NEAR)
    far = await open_store(world, "far", FAR)
    tea = await world.sku("tea")
    await world.stock(near.id, tea, 1)
    await world.stock(far.id, tea, 3)
    order = await place(world, "steps", [(tea, 1)])
    assert [f["node_id"] for f in order["fulfillments"]] == [near.id]

    place_for_real = services.allocator.place
    seen: list[str] = []

    async def place_and_look(*args, **kw):
        # another request locks the order row while the reject routes (it waited for the whole
        # reject when routing ran inside the transaction holding that lock)
        async with services.pool.acquire() as conn, conn.transaction():
            row = await asyncio.wait_for(
                conn.fetchrow("select status from orders where id = $1 for update nowait", order["id"]), 5)
            seen.append(row["status"])
        return await place_for_real(*args, **kw)

    monkeypatch.setattr(services.allocator, "place", place_and_look)
    r = await near.reject(order["id"], {"reason": "damaged"})
    assert r.status_code == 200, r.text
    assert seen == ["backordered"]  # step 1 committed: nothing waits on a promise it cannot keep
    assert r.json()["rerouted"] == [{"sku": tea, "quantity": 1}] and r.json()["order_status"] == "allocated"
    o = await get_order(world.c, order["id"])
    assert o["status"] == "allocated" and o["reason"] is None and o["lines"][0]["status"] == "open"
    assert on_list(await far.items(), order["id"]) is not None
    await assert_consistent(services, [near.id, far.id])


async def test_a_cancel_while_rejected_units_are_rerouted_gives_the_new_reservation_back(world, services,
                                                                                       monkeypatch):
    near = await open_store(world, "near", NEAR)
    far = await open_store(world, "far", FAR)
    jam = await world.sku("jam")
    await world.stock(near.id, jam, 1)
    await world.stock(far.id, jam, 3)
    order = await place(world, "cancel-mid", [(jam, 1)])

    place_for_real = services.allocator.place

    async def place_then_cancel(*args, **kw):
        reserved, plan = await place_for_real(*args, **kw)
        assert reserved and (await level(world.c, jam, far.id))["reserved"] == 1
        r = await asyncio.wait_for(world.c.post(f"/orders/{order['id']}/cancel", json={}), 10)
        assert r.status_code == 200, r.text
        return reserved, plan

    monkeypatch.setattr(services.allocator, "place", place_then_cancel)
    r = await near.reject(order["id"], {"reason": "damaged"})
    assert r.status_code == 200, r.text
    assert r.json()["rerouted"] == [] and r.json()["order_status"] == "cancelled"
    assert (await get_order(world.c, order["id"]))["status"] == "cancelled"
    lv = await level(world.c, jam, far.id)
    assert (lv["on_hand"], lv["reserved"], lv["available"]) == (3, 0, 3)
    assert on_list(await far.items(), order["id"]) is None
    await assert_consistent(services, [near.id, far.id])
