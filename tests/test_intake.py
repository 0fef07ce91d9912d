"""Order intake on the real servers: no oversell, one order per channel order, nothing half-written."""

from __future__ import annotations

import asyncio
import os

import pytest

from oms.stock import inventory

HOT_LAT, HOT_LNG = 31.2304, 121.4737  # 人民广场


async def _availability(services, node: str, sku: str) -> int:
    return (await services.inventory.available([node], [sku]))[node][sku]


async def _reserved_in_pg(services, sku: str) -> int:
    return await services.pool.fetchval(
        "select coalesce(sum(quantity), 0) from reservations where sku = $1 and state = 'reserved'", sku)


async def _stampede(world, sku: str, n: int) -> list[dict]:
    bodies = [world.order(f"hot-{i}", [(sku, 1)], lat=HOT_LAT, lng=HOT_LNG) for i in range(n)]
    responses = await asyncio.gather(*(world.post_order(b) for b in bodies))
    assert {r.status_code for r in responses} == {201}, {r.status_code: r.text for r in responses if r.status_code != 201}
    return [r.json() for r in responses]


async def test_thousand_concurrent_orders_for_100_units_allocate_exactly_100(world, services):
    # picking capacity far beyond the burst: only stock may limit what is allocated here
    node = await world.node("hot", HOT_LAT, HOT_LNG, capacity=1_000_000)
    sku = await world.sku("hot")
    await world.stock(node, sku, 100)

    orders = await _stampede(world, sku, 1000)

    statuses = [o["status"] for o in orders]
    assert statuses.count("allocated") == 100
    assert statuses.count("backordered") == 900
    assert all(o["reason"] for o in orders if o["status"] == "backordered")
    assert await _availability(services, node, sku) == 0
    assert await _reserved_in_pg(services, sku) == 100


async def test_stampede_with_stock_spread_over_three_nodes_never_oversells(world, services):
    nodes = [await world.node(f"n{i}", HOT_LAT + 0.004 * i, HOT_LNG, capacity=1_000_000) for i in range(3)]
    sku = await world.sku("spread")
    for node, units in zip(nodes, (50, 30, 20)):
        await world.stock(node, sku, units)

    orders = await _stampede(world, sku, 1000)

    assert sum(o["status"] == "allocated" for o in orders) == 100
    per_node = {n: 0 for n in nodes}
    for o in orders:
        for f in o["fulfillments"]:
            per_node[f["node_id"]] += sum(line["quantity"] for line in f["lines"])
    assert per_node == dict(zip(nodes, (50, 30, 20)))
    assert [await _availability(services, n, sku) for n in nodes] == [0, 0, 0]
    assert await _reserved_in_pg(services, sku) == 100


async def test_same_order_posted_twice_is_one_order_with_one_reservation(world, services):
    node = await world.node("dup", HOT_LAT, HOT_LNG)
    sku = await world.sku("dup")
    await world.stock(node, sku, 10)
    body = world.order("dup-1", [(sku, 2)])

    first = await world.post_order(body)
    second = await world.post_order(body)

    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    assert await _reserved_in_pg(services, sku) == 2
    assert await _availability(services, node, sku) == 8


async def test_same_order_posted_concurrently_is_one_order_with_one_reservation(world, services):
    node = await world.node("dupc", HOT_LAT, HOT_LNG)
    sku = await world.sku("dupc")
    await world.stock(node, sku, 10)
    body = world.order("dupc-1", [(sku, 3)])

    responses = await asyncio.gather(*(world.post_order(body) for _ in range(20)))

    assert sorted(r.status_code for r in responses) == [200] * 19 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    count = await services.pool.fetchval("select count(*) from orders where external_id = $1", body["external_id"])
    assert count == 1
    assert await _reserved_in_pg(services, sku) == 3
    assert await _availability(services, node, sku) == 7


async def test_cancel_releases_stock_and_a_second_cancel_changes_nothing(world, client, services):
    node = await world.node("cxl", HOT_LAT, HOT_LNG)
    sku = await world.sku("cxl")
    await world.stock(node, sku, 5)
    order = (await world.post_order(world.order("cxl-1", [(sku, 4)]))).json()
    assert await _availability(services, node, sku) == 1

    first = await client.post(f"/orders/{order['id']}/cancel")
    second = await client.post(f"/orders/{order['id']}/cancel")

    assert first.status_code == second.status_code == 200
    assert first.json()["status"] == second.json()["status"] == "cancelled"
    assert await _availability(services, node, sku) == 5
    assert await _reserved_in_pg(services, sku) == 0
    history = (await client.get(f"/orders/{order['id']}")).json()["history"]
    assert [h["to_status"] for h in history] == ["allocated", "cancelled"]


async def test_redis_flush_then_rebuild_restores_availability_and_still_no_oversell(world, services):
    node = await world.node("flush", HOT_LAT, HOT_LNG)
    sku = await world.sku("flush")
    await world.stock(node, sku, 10)
    for i in range(4):
        assert (await world.post_order(world.order(f"fl-{i}", [(sku, 2)]))).json()["status"] == "allocated"
    before = await services.inventory.snapshot([node])

    session = await services.redis.get("oms:test-session")
    await services.redis.flushdb()
    await services.redis.set("oms:test-session", session, ex=3600)  # keep this db ours
    async with services.pool.acquire() as conn:
        assert not await inventory.in_step(conn, services.redis)
        # what start-up runs: rebuild because Redis is empty, then nothing more to do
        assert await inventory.ensure_in_step(conn, services.redis) is True
        assert await inventory.ensure_in_step(conn, services.redis) is False

    assert await services.inventory.snapshot([node]) == before == {(node, sku): (10, 8)}
    results = [(await world.post_order(world.order(f"fl-after-{i}", [(sku, 1)]))).json()["status"] for i in range(4)]
    assert results == ["allocated", "allocated", "backordered", "backordered"]
    assert await _reserved_in_pg(services, sku) == 10


async def test_failed_postgres_write_releases_the_reservation(world, services):
    node = await world.node("fail", HOT_LAT, HOT_LNG)
    sku = await world.sku("fail")
    await world.stock(node, sku, 3)
    body = world.order("boom", [(sku, 2)])
    # a real failure inside PostgreSQL's transaction, after Redis has reserved
    fn = f"fail_{world.uid}"
    await services.pool.execute(f"""
        create function {fn}() returns trigger language plpgsql as $$
        begin
          if new.external_id = '{body["external_id"]}' then raise exception 'injected failure'; end if;
          return new;
        end $$;
        create trigger {fn} before insert on orders for each row execute function {fn}();""")
    try:
        r = await world.post_order(body)
    finally:
        await services.pool.execute(f"drop trigger {fn} on orders; drop function {fn}();")

    assert r.status_code == 503
    assert "retry" in r.json()["message"]
    assert await _availability(services, node, sku) == 3
    assert await services.pool.fetchval("select count(*) from orders where external_id = $1", body["external_id"]) == 0
    retried = await world.post_order(body)  # the platform's retry goes through
    assert retried.status_code == 201 and retried.json()["status"] == "allocated"
    assert await _availability(services, node, sku) == 1


async def test_order_no_node_can_serve_is_backordered_with_the_reason(world, client):
    sku = await world.sku("none")
    r = await world.post_order(world.order("none-1", [(sku, 1)], lat=31.0, lng=121.2))
    assert r.status_code == 201
    body = r.json()
    assert body["status"] == "backordered"
    assert body["fulfillments"] == []
    assert body["reason"]
    stored = (await client.get(f"/orders/{body['id']}")).json()
    assert stored["status"] == "backordered" and stored["reason"] == body["reason"]


async def test_node_outside_radius_or_without_capability_is_not_chosen(world):
    far = await world.node("far", 31.40, 121.47, radius=3000)  # ~19 km north
    nodel = await world.node("nodel", HOT_LAT, HOT_LNG, capabilities=("pickup",))
    near = await world.node("near", HOT_LAT + 0.01, HOT_LNG, radius=3000)
    sku = await world.sku("rad")
    for n in (far, nodel, near):
        await world.stock(n, sku, 5)
    order = (await world.post_order(world.order("rad-1", [(sku, 1)]))).json()
    assert [f["node_id"] for f in order["fulfillments"]] == [near]


async def test_unpaid_order_reserves_nothing_until_paid(world, services):
    node = await world.node("unpaid", HOT_LAT, HOT_LNG)
    sku = await world.sku("unpaid")
    await world.stock(node, sku, 2)
    body = world.order("up-1", [(sku, 1)], status="unpaid")
    created = (await world.post_order(body)).json()
    assert created["status"] == "created" and await _availability(services, node, sku) == 2

    paid = await world.post_order({**body, "status": "paid"})
    assert paid.status_code == 200
    assert paid.json()["status"] == "allocated"
    assert await _availability(services, node, sku) == 1
    # an older status arriving late does not move it back
    late = await world.post_order(body)
    assert late.json()["status"] == "allocated"


async def test_order_view_shows_minutes_left_and_flags_a_late_delivery_at_risk(world, client, services):
    from datetime import datetime, timedelta, timezone

    node = await world.node("risk", HOT_LAT, HOT_LNG)
    sku = await world.sku("risk")
    await world.stock(node, sku, 5)
    now = datetime.now(timezone.utc)
    fresh = (await world.post_order(world.order("fresh", [(sku, 1)], paid_at=now.isoformat()))).json()
    late = (await world.post_order(world.order("late", [(sku, 1)], paid_at=(now - timedelta(minutes=30)).isoformat()))).json()
    # ten more minutes pass for it: 20 left < picking (first in a 60/h queue: 1) + courier (25)
    await services.pool.execute("update orders set promised_by = promised_by - interval '10 minutes' where id = $1",
                                late["id"])

    fresh_view = (await client.get(f"/orders/{fresh['id']}")).json()
    late_view = (await client.get(f"/orders/{late['id']}")).json()
    assert fresh_view["status"] == late_view["status"] == "allocated"
    assert 58 < fresh_view["minutes_left"] <= 60 and fresh_view["at_risk"] is False
    assert 18 < late_view["minutes_left"] <= 20 and late_view["at_risk"] is True


async def test_start_up_check_repairs_redis_out_of_step_with_postgres(world, services):
    node = await world.node("drift", HOT_LAT, HOT_LNG)
    sku = await world.sku("drift")
    await world.stock(node, sku, 6)
    await world.post_order(world.order("drift-1", [(sku, 2)]))
    await services.redis.hset(inventory.avail_key(node), sku, 50)  # e.g. restored from an old snapshot

    async with services.pool.acquire() as conn:
        assert await inventory.ensure_in_step(conn, services.redis) is True
    assert await _availability(services, node, sku) == 4


async def test_reservation_race_at_the_chosen_node_reroutes_to_the_next_node(world, services, monkeypatch):
    near = await world.node("race-near", HOT_LAT, HOT_LNG)
    nxt = await world.node("race-next", HOT_LAT + 0.01, HOT_LNG)
    sku = await world.sku("race")
    await world.stock(near, sku, 0)  # sold out a moment ago ...
    await world.stock(nxt, sku, 4)
    real = services.inventory.available

    async def stale(nodes, skus):  # ... but the snapshot routing saw still had 3 there
        got = {n: dict(per) for n, per in (await real(nodes, skus)).items()}
        if near in got:
            got[near][sku] = 3
        return got

    monkeypatch.setattr(services.inventory, "available", stale)
    order = (await world.post_order(world.order("race-1", [(sku, 2)]))).json()
    monkeypatch.undo()

    assert order["status"] == "allocated"
    assert [f["node_id"] for f in order["fulfillments"]] == [nxt]
    assert await _availability(services, near, sku) == 0
    assert await _availability(services, nxt, sku) == 2
    assert await _reserved_in_pg(services, sku) == 2


async def _status(client, oid: str) -> str:
    return (await client.get(f"/orders/{oid}")).json()["status"]


async def test_backorders_get_stock_when_it_arrives_oldest_first(world, client, services):
    node = await world.node("restock", HOT_LAT, HOT_LNG)
    sku = await world.sku("restock")
    first = (await world.post_order(world.order("wait-1", [(sku, 1)]))).json()
    second = (await world.post_order(world.order("wait-2", [(sku, 1)]))).json()
    assert first["status"] == second["status"] == "backordered"

    await world.stock(node, sku, 1)  # one unit arrives

    for _ in range(100):
        if await _status(client, first["id"]) == "allocated":
            break
        await asyncio.sleep(0.05)
    got = (await client.get(f"/orders/{first['id']}")).json()
    assert got["status"] == "allocated" and got["reason"] is None
    assert [l["status"] for l in got["lines"]] == ["open"]
    assert [h["to_status"] for h in got["history"]] == ["backordered", "allocated"]
    assert got["history"][-1]["cause"] == "restock"
    assert await _status(client, second["id"]) == "backordered"
    assert await _availability(services, node, sku) == 0
    assert await _reserved_in_pg(services, sku) == 1


async def test_allocate_endpoint_retries_a_backorder_and_refuses_other_orders(world, client, services):
    node = await world.node("retry", HOT_LAT, HOT_LNG)
    sku = await world.sku("retry")
    waiting = (await world.post_order(world.order("retry-1", [(sku, 2)]))).json()
    assert waiting["status"] == "backordered"
    # stock that arrives without PUT /inventory (e.g. a rebuild): the endpoint retries by hand
    async with services.pool.acquire() as conn:
        await conn.execute("insert into stock (node_id, sku, on_hand) values ($1, $2, 2)", node, sku)
        await inventory.rebuild(conn, services.redis)

    r = await client.post(f"/orders/{waiting['id']}/allocate")
    assert r.status_code == 200 and r.json()["status"] == "allocated"
    again = await client.post(f"/orders/{waiting['id']}/allocate")
    assert again.status_code == 409 and again.json()["current"] == "allocated"
    assert (await client.post("/orders/nope/allocate")).status_code == 404
    assert await _reserved_in_pg(services, sku) == 2


async def test_a_paid_order_whose_promise_is_already_missed_is_served_and_flagged(world, client):
    from datetime import datetime, timedelta, timezone

    node = await world.node("missed", HOT_LAT, HOT_LNG)
    sku = await world.sku("missed")
    await world.stock(node, sku, 3)
    paid = (datetime.now(timezone.utc) - timedelta(hours=2)).isoformat()  # a push delayed by hours
    order = (await world.post_order(world.order("missed-1", [(sku, 1)], paid_at=paid))).json()
    view = (await client.get(f"/orders/{order['id']}")).json()
    assert view["status"] == "allocated" and view["fulfillments"][0]["node_id"] == node
    assert view["minutes_left"] < 0 and view["at_risk"] is True


async def test_an_order_first_seen_as_shipped_reserves_nothing(world, services):
    node = await world.node("elsewhere", HOT_LAT, HOT_LNG)
    sku = await world.sku("elsewhere")
    await world.stock(node, sku, 3)
    order = (await world.post_order(world.order("sent-1", [(sku, 1)], status="shipped"))).json()
    assert order["status"] == "shipped" and order["fulfillments"] == []
    assert "before the OMS saw it" in order["reason"]
    assert await _availability(services, node, sku) == 3


async def test_a_burst_does_not_bury_the_nearest_store(world):
    near = await world.node("burst-near", HOT_LAT, HOT_LNG, capacity=6)  # one pick per 10 minutes
    nxt = await world.node("burst-next", HOT_LAT + 0.01, HOT_LNG, capacity=60)  # 1.1 km north
    sku = await world.sku("burst")
    await world.stock(near, sku, 10)
    await world.stock(nxt, sku, 10)
    chosen = []
    for i in range(4):
        order = (await world.post_order(world.order(f"burst-{i}", [(sku, 1)]))).json()
        chosen.append(order["fulfillments"][0]["node_id"])
    assert chosen[0] == near
    assert nxt in chosen  # once near's queue costs more than the extra kilometre


async def test_one_hour_order_looks_past_the_nearest_stores_when_they_cannot_serve(world, services):
    limit = services.nodes.network.delivery_limit or 30
    for i in range(limit + 1):  # more empty covering stores than routing offers at first
        await world.node(f"empty{i}", HOT_LAT + 0.0002 * i, HOT_LNG)
    stocked = await world.node("far-stocked", HOT_LAT + 0.03, HOT_LNG, radius=5000)  # 3.3 km away
    sku = await world.sku("deep")
    await world.stock(stocked, sku, 2)

    order = (await world.post_order(world.order("deep-1", [(sku, 1)]))).json()

    assert order["status"] == "allocated", order["reason"]
    assert [f["node_id"] for f in order["fulfillments"]] == [stocked]


async def test_a_failed_availability_read_lets_go_of_the_claim(world, services, monkeypatch):
    from redis.exceptions import ConnectionError as RedisConnectionError

    from oms.orders.claims import claim_key

    node = await world.node("claim-drop", HOT_LAT, HOT_LNG)
    sku = await world.sku("claim-drop")
    await world.stock(node, sku, 3)
    body = world.order("claim-drop-1", [(sku, 1)])

    async def broken(nodes, skus):
        raise RedisConnectionError("connection reset while reading availability")

    monkeypatch.setattr(services.inventory, "available", broken)
    failed = await world.post_order(body)
    monkeypatch.undo()
    assert failed.status_code == 503
    assert await services.redis.exists(claim_key(body["channel"], body["external_id"])) == 0

    retried = await world.post_order(body)  # the platform's retry is served at once, not after 30 s
    assert retried.status_code == 201 and retried.json()["status"] == "allocated"


@pytest.mark.skipif(os.environ.get("OMS_TEST_REDIS_CLUSTER") != "1", reason="only in the Redis Cluster run of make test")
async def test_the_cluster_run_really_talks_to_a_three_master_redis_cluster(services):
    from redis.asyncio.cluster import RedisCluster

    assert isinstance(services.redis, RedisCluster)
    assert len(services.redis.get_primaries()) == 3


async def test_post_orders_without_the_admin_token_is_401_and_writes_nothing(client, world, services):
    node = await world.node("auth", HOT_LAT, HOT_LNG)
    sku = await world.sku("auth")
    await world.stock(node, sku, 5)
    body = world.order("auth-1", [(sku, 1)], lat=HOT_LAT, lng=HOT_LNG)
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
        r = await client.post("/orders", json=body, headers=headers)
        assert r.status_code == 401, r.text
        assert "authorization" in r.text
    assert await services.pool.fetchval("select count(*) from orders where external_id = $1", body["external_id"]) == 0
    assert await _availability(services, node, sku) == 5
    assert (await world.post_order(body)).status_code == 201  # the token the client sends
