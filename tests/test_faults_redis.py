"""Redis lost at run time (FLUSHALL, a restart without its data) is noticed and rebuilt from
PostgreSQL while orders keep coming: nothing is decided on an empty Redis — no backorder of stock
that exists, no oversell, also not through a PUT /inventory in the window."""

from __future__ import annotations

import asyncio
import shutil
import time

import httpx
import msgspec
import pytest
import redis.asyncio as aioredis

from oms.infra import embedded
from oms.stock import inventory
from oms.wiring import Services

LAT, LNG = 30.2741, 120.1551  # Hangzhou: away from the other tests' Shanghai stores
ADMIN = {"Authorization": "Bearer test-admin-token"}


async def pg_levels(services, node: str) -> dict[tuple[str, str], tuple[int, int]]:
    async with services.pool.acquire() as conn:
        levels, _ = await inventory.expected_from_postgres(conn)
    return {k: v for k, v in levels.items() if k[0] == node}


async def test_a_flushed_node_is_rebuilt_before_anything_is_reserved_or_set_there(world, services):
    node = await world.node("fence", LAT, LNG)
    sku = await world.sku("fence")
    await world.stock(node, sku, 5)
    first = (await world.post_order(world.order("fence-1", [(sku, 3)], lat=LAT, lng=LNG))).json()
    assert first["status"] == "allocated"

    session = await services.redis.get("oms:test-session")
    await services.redis.flushdb()
    await services.redis.set("oms:test-session", session, ex=3600)
    assert await services.inventory.fenced([node]) == [node]
    # a recount of the same 5 units must not read reserved as 0 (that would make 5 available)
    level = await world.stock(node, sku, 5)
    assert (level["reserved"], level["available"]) == (3, 2)
    # and an order for 3 more is not given stock that is promised to the first
    second = (await world.post_order(world.order("fence-2", [(sku, 3)], lat=LAT, lng=LNG))).json()
    got = sum(l["quantity"] for f in second["fulfillments"] for l in f["lines"])
    assert got <= 2
    assert await services.inventory.snapshot([node]) == await pg_levels(services, node)


async def test_scripts_refuse_a_node_without_its_generation_marker(world, services):
    node = await world.node("marker", LAT, LNG)
    sku = await world.sku("marker")
    await world.stock(node, sku, 4)
    await services.redis.hdel(inventory.avail_key(node), inventory.GEN_FIELD)
    bare = inventory.Inventory(services.redis)  # no fence to heal it: refuses outright
    from oms.errors import StockFenced

    with pytest.raises(StockFenced):
        await bare.reserve(node, "f-marker", [(sku, 1)])
    with pytest.raises(StockFenced):
        await bare.set_on_hand(node, sku, 100)
    with pytest.raises(StockFenced):
        await bare.available([node], [sku])
    assert await services.inventory.snapshot([node]) == {(node, sku): (4, 0)}  # nothing moved
    # the service's inventory heals it and goes on
    assert (await services.inventory.reserve(node, "f-marker", [(sku, 1)])).ok


@pytest.fixture
async def own_redis(settings, tmp_path):
    """Services and an app on a Redis of their own (the session's stays up), the test database."""
    from oms.app import create_app

    url = embedded.redis_url(tmp_path)
    mine = msgspec.structs.replace(settings, redis_url=url)
    svc = await Services.start(mine)
    app = create_app(mine)
    app.state.services = svc
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://oms.test",
                                 headers=ADMIN, timeout=60) as client:
        yield svc, client, tmp_path
    await svc.close()
    embedded.stop_redis(tmp_path)


async def restart_empty(tmp_path) -> None:
    """Redis goes away and comes back without its data (no AOF, no snapshot)."""
    r = aioredis.Redis(unix_socket_path=str(tmp_path / "redis" / "redis.sock"))
    try:
        await r.shutdown(nosave=True)
    except Exception:  # noqa: BLE001 - the connection closes under us
        pass
    await r.aclose()
    for p in (tmp_path / "redis").iterdir():
        if p.name.startswith("appendonly") or p.suffix == ".rdb":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    embedded.redis_url(tmp_path)


async def test_flushall_and_an_empty_restart_mid_load_never_backorder_existing_stock_nor_oversell(own_redis, uid):
    svc, client, tmp_path = own_redis

    async def put(url: str, body: dict) -> None:
        r = await client.put(url, json=body)
        assert r.status_code in (200, 201), r.text

    node, hot, deep = f"flt-{uid}", f"flt-hot-{uid}", f"flt-deep-{uid}"
    await put(f"/nodes/{node}", {"kind": "store", "name": "f", "lat": LAT, "lng": LNG, "delivery_radius_m": 5000,
                                 "capabilities": ["delivery", "pickup", "ship"], "capacity_per_hour": 100000})
    for sku in (hot, deep):
        await put(f"/skus/{sku}", {"name": sku, "unit_price": 100})
    await put(f"/inventory/{node}/{hot}", {"on_hand": 60})
    await put(f"/inventory/{node}/{deep}", {"on_hand": 10000})

    outcomes: list[tuple[float, str, int, str | None]] = []  # (time, sku, HTTP status, order status)
    stop = asyncio.Event()
    counter = iter(range(10**6))

    async def shopper() -> None:
        while not stop.is_set():
            i = next(counter)
            sku = hot if i % 2 else deep
            body = {"channel": "manual", "external_id": f"flt-{uid}-{i}", "delivery_mode": "delivery",
                    "destination": {"lat": LAT, "lng": LNG, "address": "x"},
                    "lines": [{"sku": sku, "quantity": 1, "unit_price": 100}]}
            r = await client.post("/orders", json=body)
            outcomes.append((time.monotonic(), sku, r.status_code,
                             r.json().get("status") if r.status_code in (200, 201) else None))

    shoppers = [asyncio.ensure_future(shopper()) for _ in range(16)]
    await asyncio.sleep(0.8)
    flushed_at = time.monotonic()
    await svc.redis.flushall()
    recount = await client.put(f"/inventory/{node}/{hot}", json={"on_hand": 60})  # in the window
    await asyncio.sleep(1.5)
    restarted_at = time.monotonic()
    await restart_empty(tmp_path)
    await asyncio.sleep(1.5)
    stop.set()
    await asyncio.gather(*shoppers)

    statuses = {s for _, _, s, _ in outcomes}
    assert statuses <= {201, 503}, statuses  # never a 500
    assert recount.status_code in (200, 503), recount.text
    # nothing oversold, in PostgreSQL (the record) and in Redis
    levels = await pg_levels(svc, node)
    assert levels[(node, hot)][1] <= 60 and levels[(node, deep)][1] <= 10000
    # the plentiful SKU is never backordered; the hot one only once all 60 are gone
    assert not [o for o in outcomes if o[1] == deep and o[3] == "backordered"]
    if any(o[1] == hot and o[3] == "backordered" for o in outcomes):
        assert levels[(node, hot)][1] == 60
    # orders allocate again within seconds of each loss
    for lost in (flushed_at, restarted_at):
        back = min(t for t, _, s, st in outcomes if t > lost and s == 201 and st == "allocated")
        assert back - lost < 5.0, back - lost
    assert svc.fence.rebuilds >= 2
    # and Redis agrees with PostgreSQL (reservations written while it was rebuilt were put back)
    await asyncio.sleep(0.5)
    assert await svc.inventory.snapshot([node]) == levels
    allocated = sum(1 for o in outcomes if o[3] == "allocated")
    assert allocated == levels[(node, hot)][1] + levels[(node, deep)][1]
