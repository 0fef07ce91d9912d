"""A hot warehouse split into four stock buckets on a three-master Redis Cluster: its buckets land
on more than one shard, and a 1,000-way stampede on 100 units allocates exactly 100."""

from __future__ import annotations

import asyncio
import secrets

import pytest_asyncio
from clusterkit import service_on_own_cluster

from oms.stock import inventory
from oms.stock.inventory import avail_key, bucket_id


@pytest_asyncio.fixture(scope="module")
async def bucket_stack(settings, tmp_path_factory):
    """A cluster and a database of this module's own, the service on them, an admin client."""
    async with service_on_own_cluster(settings, tmp_path_factory.mktemp("bucket-cluster"), "oms_buckets_") as stack:
        yield stack


def shard_of(services, bucket: str) -> int:
    return services.redis.get_node_from_key(avail_key(bucket)).port


async def test_four_buckets_spread_over_shards_and_a_stampede_allocates_exactly_100(bucket_stack, world):
    cluster, services, client = bucket_stack
    world = type(world)(client, secrets.token_hex(3))
    node = world.id("central")
    shards = {shard_of(services, bucket_id(node, k)) for k in range(4)}
    assert len(shards) > 1, "the four buckets of one node should not share one shard"
    r = await client.put(f"/nodes/{node}", json={
        "kind": "warehouse", "name": "central", "lat": 31.2304, "lng": 121.4737, "capabilities": ["ship"],
        "capacity_per_hour": 1_000_000, "stock_buckets": 4})
    assert r.status_code == 201, r.text
    sku = await world.sku("hot")
    await world.stock(node, sku, 100)

    responses = await asyncio.gather(*(world.post_order(world.order(f"st-{i}", [(sku, 1)], mode="ship"))
                                       for i in range(1000)))

    assert {r.status_code for r in responses} == {201}, {r.status_code: r.text for r in responses if r.status_code != 201}
    assert [r.json()["status"] for r in responses].count("allocated") == 100
    assert await services.pool.fetchval(
        "select sum(quantity) from reservations where sku = $1 and state = 'reserved'", sku) == 100
    assert (await services.inventory.available([node], [sku]))[node][sku] == 0
    per_shard: dict[int, int] = {}
    for k, bucket in enumerate(await services.inventory.bucket_snapshot(node)):
        on_hand, reserved, available = bucket[sku]
        assert reserved <= on_hand and available == on_hand - reserved
        port = shard_of(services, bucket_id(node, k))
        per_shard[port] = per_shard.get(port, 0) + reserved
    assert len([p for p, units in per_shard.items() if units]) > 1  # the reservations ran on several shards
    async with services.pool.acquire() as conn:
        assert await inventory.in_step(conn, services.redis)


async def test_release_on_a_cluster_returns_units_to_the_bucket_that_took_them(bucket_stack, world):
    cluster, services, client = bucket_stack
    world = type(world)(client, secrets.token_hex(3))
    node = world.id("wh")
    r = await client.put(f"/nodes/{node}", json={
        "kind": "warehouse", "name": "wh", "lat": 31.2304, "lng": 121.4737, "capabilities": ["ship"],
        "capacity_per_hour": 1_000_000, "stock_buckets": 4})
    assert r.status_code == 201, r.text
    sku = await world.sku("rel")
    await world.stock(node, sku, 8)
    orders = [(await world.post_order(world.order(f"r-{i}", [(sku, 2)], mode="ship"))).json() for i in range(4)]
    assert all(o["status"] == "allocated" for o in orders)
    before = [b[sku] for b in await services.inventory.bucket_snapshot(node)]

    assert (await client.post(f"/orders/{orders[0]['id']}/cancel")).json()["status"] == "cancelled"

    after = [b[sku] for b in await services.inventory.bucket_snapshot(node)]
    changed = [k for k in range(4) if before[k] != after[k]]
    assert len(changed) == 1 and after[changed[0]][1] == before[changed[0]][1] - 2
    assert (await services.inventory.available([node], [sku]))[node][sku] == 2
    async with services.pool.acquire() as conn:
        assert await inventory.in_step(conn, services.redis)
