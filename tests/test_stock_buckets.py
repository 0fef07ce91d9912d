"""A hot node's stock split into K buckets: no oversell under a stampede, units go back to the
bucket that took them, reads are the sum, rebuilds and re-splits keep Redis in step with
PostgreSQL, and K = 1 keeps the single-bucket layout."""

from __future__ import annotations

import asyncio

from oms.stock import inventory
from oms.stock.inventory import GEN_FIELD, KFIELD, Inventory, avail_key, bucket_id, home_bucket

LAT, LNG = 31.2304, 121.4737


async def warehouse(world, name: str, buckets: int, *, capabilities=("ship",)) -> str:
    node_id = world.id(name)
    r = await world.c.put(f"/nodes/{node_id}", json={
        "kind": "warehouse", "name": name, "lat": LAT, "lng": LNG, "capabilities": list(capabilities),
        "capacity_per_hour": 1_000_000, "stock_buckets": buckets})
    assert r.status_code in (200, 201), r.text
    assert r.json()["stock_buckets"] == buckets
    return node_id


async def set_buckets(world, node_id: str, buckets: int) -> None:
    node = next(n for n in (await world.c.get("/nodes")).json() if n["id"] == node_id)
    node.pop("id"), node.pop("h3_cell")
    r = await world.c.put(f"/nodes/{node_id}", json={**node, "stock_buckets": buckets})
    assert r.status_code == 200, r.text


async def node_in_step(services, node: str) -> bool:
    """One node: totals, records (in whichever bucket) and each bucket's available agree."""
    async with services.pool.acquire() as conn:
        levels, records = await inventory.expected_from_postgres(conn)
    if await services.inventory.fenced([node]):
        return False
    if await services.inventory.snapshot([node]) != {k: v for k, v in levels.items() if k[0] == node}:
        return False
    held = set()
    for k in range(await services.inventory.count(node)):
        held |= {f.decode() for f in await services.redis.hkeys(inventory.holders_key(bucket_id(node, k)))}
    if held != {f for n, f in records if n == node}:
        return False
    return all(a == o - r for b in await services.inventory.bucket_snapshot(node) for o, r, a in b.values())


async def reset(services, node: str) -> None:
    """Reinstall a node from PostgreSQL: reservations made here without an order are dropped."""
    await services.fence.rebucket(node)
    assert await node_in_step(services, node)


async def reserved_in_pg(services, sku: str) -> int:
    return await services.pool.fetchval(
        "select coalesce(sum(quantity), 0) from reservations where sku = $1 and state = 'reserved'", sku)


def fid_at(k: int, count: int, tag: str) -> str:
    """A fulfilment id whose home bucket is k."""
    return next(f"f-{tag}-{i}" for i in range(10_000) if home_bucket(f"f-{tag}-{i}", count) == k)


async def per_bucket(services, node: str, sku: str) -> list[tuple[int, int, int]]:
    """(on_hand, reserved, available) of one SKU in each bucket."""
    return [b.get(sku, (0, 0, 0)) for b in await services.inventory.bucket_snapshot(node)]


async def test_thousand_orders_for_100_units_at_a_four_bucket_warehouse_allocate_exactly_100(world, services):
    node = await warehouse(world, "hot", 4)
    sku = await world.sku("hot")
    await world.stock(node, sku, 100)
    assert [b[0] for b in await per_bucket(services, node, sku)] == [25, 25, 25, 25]

    bodies = [world.order(f"hot-{i}", [(sku, 1)], mode="ship") for i in range(1000)]
    responses = await asyncio.gather(*(world.post_order(b) for b in bodies))

    assert {r.status_code for r in responses} == {201}
    statuses = [r.json()["status"] for r in responses]
    assert statuses.count("allocated") == 100 and statuses.count("backordered") == 900
    assert (await services.inventory.available([node], [sku]))[node][sku] == 0
    assert await reserved_in_pg(services, sku) == 100
    buckets = await per_bucket(services, node, sku)
    assert buckets == [(25, 25, 0)] * 4  # every bucket took its share, none more
    assert await node_in_step(services, node)


async def test_a_line_larger_than_any_bucket_gathers_units_into_its_home_bucket(world, services):
    node = await warehouse(world, "big", 4)
    sku = await world.sku("big")
    await world.stock(node, sku, 10)
    assert [b[0] for b in await per_bucket(services, node, sku)] == [3, 3, 2, 2]

    order = (await world.post_order(world.order("big-1", [(sku, 9)], mode="ship"))).json()

    assert order["status"] == "allocated"
    buckets = await per_bucket(services, node, sku)
    assert sum(b[0] for b in buckets) == 10 and sorted(b[1] for b in buckets) == [0, 0, 0, 9]
    assert all(r <= o for o, r, _ in buckets)
    too_many = (await world.post_order(world.order("big-2", [(sku, 2)], mode="ship"))).json()
    assert too_many["status"] == "partially_allocated"  # the last unit, wherever it was
    assert (await services.inventory.available([node], [sku]))[node][sku] == 0
    assert await node_in_step(services, node)


async def test_release_and_commit_find_the_bucket_that_took_the_reservation(world, services):
    node = await warehouse(world, "rel", 4)
    sku = await world.sku("rel")
    await world.stock(node, sku, 8)  # 2 per bucket
    inv = services.inventory
    home_two = [fid_at(2, 4, f"rel{i}-{world.uid}") for i in range(2)]
    assert (await inv.reserve(node, home_two[0], [(sku, 2)])).gen.endswith("@2")
    spilled = await inv.reserve(node, home_two[1], [(sku, 1)])  # bucket 2 is empty: the next one takes it
    assert spilled.ok and spilled.gen.endswith("@3")
    assert (await per_bucket(services, node, sku))[2:] == [(2, 2, 0), (2, 1, 1)]
    assert (await inv.reserve(node, home_two[1], [(sku, 1)])).already  # the retry finds it there

    assert await inv.release(node, home_two[1]) == 1
    assert (await per_bucket(services, node, sku))[3] == (2, 0, 2)
    assert await inv.commit(node, home_two[0]) == 2
    assert (await per_bucket(services, node, sku))[2] == (0, 0, 0)
    assert await inv.release(node, home_two[1]) == 0 and await inv.commit(node, home_two[0]) == 0
    assert (await inv.available([node], [sku]))[node][sku] == 6
    await reset(services, node)  # the commit had no order behind it: back to PostgreSQL's 8
    assert (await inv.available([node], [sku]))[node][sku] == 8


async def test_cancel_reject_and_ship_at_a_bucketed_warehouse_keep_redis_in_step(world, client, services):
    node = await warehouse(world, "ops", 4, capabilities=("ship", "delivery", "pickup"))
    backup = await world.node("backup", LAT + 0.001, LNG, capacity=1_000_000)
    sku = await world.sku("ops")
    await world.stock(node, sku, 12)
    await world.stock(backup, sku, 5)
    orders = [(await world.post_order(world.order(f"ops-{i}", [(sku, 2)], mode="ship"))).json() for i in range(4)]
    assert [o["fulfillments"][0]["node_id"] for o in orders] == [node] * 4
    assert (await services.inventory.available([node], [sku]))[node][sku] == 4

    assert (await client.post(f"/orders/{orders[0]['id']}/cancel")).json()["status"] == "cancelled"
    assert (await services.inventory.available([node], [sku]))[node][sku] == 6
    token = (await client.post(f"/nodes/{node}/tokens", json={"label": "wh"})).json()["token"]
    staff = {"Authorization": f"Bearer {token}"}
    r = await client.post(f"/stores/{node}/orders/{orders[1]['id']}/reject", json={"reason": "damaged"}, headers=staff)
    assert r.status_code == 200, r.text
    assert (await client.post(f"/stores/{node}/orders/{orders[2]['id']}/picked", headers=staff)).status_code == 200
    r = await client.post(f"/stores/{node}/orders/{orders[2]['id']}/shipped",
                          json={"carrier": "sf", "tracking_no": "SF1"}, headers=staff)
    assert r.status_code == 200, r.text

    # 12 on hand: 2 shipped (on-hand 10), 2 rejected as damaged (off the shelf: 8), 1 order open
    assert (await services.inventory.snapshot([node]))[(node, sku)] == (8, 2)
    assert all(r <= o for o, r, _ in await per_bucket(services, node, sku))
    assert await node_in_step(services, node)


async def test_changing_the_bucket_count_resplits_stock_and_keeps_open_reservations(world, services):
    node = await warehouse(world, "split", 1)
    sku = await world.sku("split")
    await world.stock(node, sku, 21)
    orders = [(await world.post_order(world.order(f"sp-{i}", [(sku, 3)], mode="ship"))).json() for i in range(3)]
    assert all(o["status"] == "allocated" for o in orders)

    await set_buckets(world, node, 4)

    assert await services.inventory.count(node) == 4
    buckets = await per_bucket(services, node, sku)
    assert sum(b[0] for b in buckets) == 21 and sum(b[1] for b in buckets) == 9
    assert all(r <= o for o, r, _ in buckets) and sum(b[0] > 0 for b in buckets) == 4
    assert (await services.inventory.available([node], [sku]))[node][sku] == 12
    assert await node_in_step(services, node)
    fids = [r["fulfillment_id"] for r in await services.pool.fetch(
        "select fulfillment_id from reservations where node_id = $1", node)]
    assert len(fids) == 3
    for f in fids:  # each record moved to its home bucket
        assert await services.redis.exists(inventory.record_key(bucket_id(node, home_bucket(f, 4)), f))

    await set_buckets(world, node, 1)

    assert await services.inventory.count(node) == 1
    assert await services.redis.exists(avail_key(bucket_id(node, 1))) == 0
    assert (await per_bucket(services, node, sku)) == [(21, 9, 12)]
    assert KFIELD.encode() not in await services.redis.hkeys(avail_key(node))
    assert await node_in_step(services, node)


async def test_a_lost_bucket_rebuilds_the_whole_node_from_postgresql(world, services):
    node = await warehouse(world, "lost", 4)
    sku = await world.sku("lost")
    await world.stock(node, sku, 40)
    for i in range(6):
        assert (await world.post_order(world.order(f"lo-{i}", [(sku, 2)], mode="ship"))).json()["status"] == "allocated"
    b2 = bucket_id(node, 2)
    # one shard's data gone (a failover to a replica that lagged): bucket 2 only
    await services.redis.delete(inventory.onhand_key(b2), inventory.reserved_key(b2), avail_key(b2),
                                inventory.holders_key(b2))
    assert await services.inventory.fenced([node]) == [node]

    assert (await services.inventory.available([node], [sku]))[node][sku] == 28  # healed first

    assert await node_in_step(services, node)
    assert (await world.post_order(world.order("lo-after", [(sku, 28)], mode="ship"))).json()["status"] == "allocated"
    assert (await services.inventory.available([node], [sku]))[node][sku] == 0


async def test_on_hand_set_below_reserved_leaves_no_bucket_able_to_oversell(world, services):
    node = await warehouse(world, "short", 4)
    sku = await world.sku("short")
    await world.stock(node, sku, 8)  # 2 per bucket
    inv = services.inventory
    assert (await inv.reserve(node, fid_at(0, 4, f"sh-{world.uid}"), [(sku, 2)])).ok
    assert (await inv.reserve(node, fid_at(1, 4, f"sh-{world.uid}"), [(sku, 2)])).ok

    level = await inv.set_on_hand(node, sku, 3)  # one unit short of what is reserved

    assert (level.on_hand, level.reserved) == (3, 4)
    assert (await inv.available([node], [sku]))[node][sku] == -1
    assert all(a <= 0 for _, _, a in await per_bucket(services, node, sku))  # nothing reservable anywhere
    assert not (await inv.reserve(node, f"sh-more-{world.uid}", [(sku, 1)])).ok
    await inv.adjust(node, sku, 2)  # a delivery: one unit left to sell
    await inv.rebalance(node)
    assert (await inv.available([node], [sku]))[node][sku] == 1
    assert [a for _, _, a in await per_bucket(services, node, sku)].count(-1) == 0
    assert (await inv.reserve(node, f"sh-one-{world.uid}", [(sku, 1)])).ok
    assert not (await inv.reserve(node, f"sh-two-{world.uid}", [(sku, 1)])).ok
    await reset(services, node)


async def test_a_single_bucket_node_keeps_the_plain_layout(world, services):
    node = await world.node("plain", LAT, LNG)
    sku = await world.sku("plain")
    await world.stock(node, sku, 5)
    assert (await world.post_order(world.order("pl-1", [(sku, 2)]))).json()["status"] == "allocated"

    fields = {k.decode() for k in await services.redis.hkeys(avail_key(node))}
    assert fields == {sku, GEN_FIELD}
    assert not [k async for k in services.redis.scan_iter(match=f"inv:{{{node}#*", count=1000)]
    assert (await world.c.get("/nodes")).json()[0].get("stock_buckets", 1) >= 1


async def test_bucket_count_outside_1_to_64_is_a_400_naming_the_field(world):
    for bad in (0, 65, "four"):
        r = await world.c.put(f"/nodes/{world.id('bad')}", json={
            "kind": "warehouse", "name": "bad", "lat": LAT, "lng": LNG, "stock_buckets": bad})
        assert r.status_code == 400 and "stock_buckets" in r.text, r.text


async def test_a_fresh_process_learns_the_bucket_count_from_redis(world, services):
    node = await warehouse(world, "fresh", 3)
    sku = await world.sku("fresh")
    await world.stock(node, sku, 9)
    other = Inventory(services.redis, heal=services.fence.heal)  # another process: nothing cached

    assert (await other.available([node], [sku]))[node][sku] == 9
    assert other.buckets[node] == 3
    assert (await other.reserve(node, f"fr-{world.uid}", [(sku, 4)])).ok
    assert (await services.inventory.available([node], [sku]))[node][sku] == 5
    await reset(services, node)
