"""The reconciler puts Redis and PostgreSQL back in step by itself: reservations of a dead process
that no order holds are released (and its claims taken over at once), reservations Redis lost are
put back, drift is repaired and counted."""

from __future__ import annotations

import secrets
import time

import pytest

from oms.infra.ids import _b36
from oms.orders import claims
from oms.stock import inventory, liveness
from oms.stock.inventory import Inventory
from oms.stock.reconciler import Reconciler

LAT, LNG = 30.2741, 120.1551  # Hangzhou: away from the other tests' Shanghai stores


def old_id(prefix: str, age_s: float) -> str:
    """An id made `age_s` seconds ago (ids carry their time)."""
    return f"{prefix}{_b36(int((time.time() - age_s) * 1000), 9)}{_b36(secrets.randbits(50), 10)}"


@pytest.fixture
def reconciler(services):
    return Reconciler(services.pool, services.redis, services.inventory, services.fence, dead_for_s=0.0)


async def in_step(services, node: str) -> bool:
    async with services.pool.acquire() as conn:
        levels, records = await inventory.expected_from_postgres(conn)
    want = {k: v for k, v in levels.items() if k[0] == node}
    held = {k.decode() for k in await services.redis.hkeys(inventory.holders_key(node))}
    avail = (await services.inventory.available([node], [sku for _, sku in want]))[node] if want else {}
    return (await services.inventory.snapshot([node]) == want and held == {f for n, f in records if n == node}
            and all(avail[s] == o - r for (_, s), (o, r) in want.items()))


async def test_a_dead_process_reservation_without_order_is_released_and_its_claim_taken_over(
        world, services, client, reconciler):
    node = await world.node("dead", LAT, LNG)
    sku = await world.sku("dead")
    await world.stock(node, sku, 2)
    body = world.order("dead-1", [(sku, 2)], lat=LAT, lng=LNG)
    # a process reserved for this order and died before writing it (kill -9): its reservation
    # holds both units, its claim holds the order
    dead = "w-dead-" + world.uid
    await services.redis.sadd(liveness.WORKERS_KEY, dead)
    fid, oid = old_id("f", 5), old_id("o", 5)
    assert (await Inventory(services.redis, owner=dead, heal=services.fence.heal).reserve(node, fid, [(sku, 2)])).ok
    await services.redis.set(claims.claim_key("manual", body["external_id"]), claims.claim_value(oid, dead))
    assert (await services.inventory.available([node], [sku]))[node][sku] == 0

    await reconciler.reconcile()  # sees it missing once (dead_for_s=0)
    report = await reconciler.reconcile()
    assert await in_step(services, node)
    assert (await services.inventory.available([node], [sku]))[node][sku] == 2
    assert await liveness.reconciled(services.redis, dead)
    assert report.released >= 0 and dead not in {m.decode() for m in await services.redis.smembers(liveness.WORKERS_KEY)}

    started = time.monotonic()
    r = await world.post_order(body)  # the retry takes the dead claim over at once
    assert r.status_code == 201 and r.json()["status"] == "allocated", r.text
    assert time.monotonic() - started < 3
    assert await in_step(services, node)


async def test_a_live_process_in_flight_reservation_is_left_alone(world, services, reconciler):
    node = await world.node("inflight", LAT, LNG)
    sku = await world.sku("inflight")
    await world.stock(node, sku, 3)
    fid = old_id("f", 1)  # young: its order write may still be on the way
    assert (await services.inventory.reserve(node, fid, [(sku, 1)])).ok
    await reconciler.reconcile()
    await reconciler.reconcile()
    assert (await services.inventory.available([node], [sku]))[node][sku] == 2
    await services.inventory.release(node, fid)


async def test_reservations_redis_lost_are_put_back_and_released_ones_given_back(world, services, reconciler):
    node = await world.node("lost", LAT, LNG)
    sku = await world.sku("lost")
    await world.stock(node, sku, 5)
    kept = (await world.post_order(world.order("lost-1", [(sku, 2)], lat=LAT, lng=LNG))).json()
    gone = (await world.post_order(world.order("lost-2", [(sku, 1)], lat=LAT, lng=LNG))).json()
    kept_fid, gone_fid = kept["fulfillments"][0]["id"], gone["fulfillments"][0]["id"]
    # Redis lost one reservation (e.g. a rebuild raced its write) ...
    await services.inventory.release(node, kept_fid)
    # ... and missed the release of another (PostgreSQL released it; Redis was away)
    await services.pool.execute("update reservations set state = 'released' where fulfillment_id = $1", gone_fid)
    assert (await services.inventory.available([node], [sku]))[node][sku] == 4
    assert not await in_step(services, node)

    report = await reconciler.reconcile()
    assert report.reapplied >= 1 and report.released >= 1
    assert await in_step(services, node)
    assert (await services.inventory.available([node], [sku]))[node][sku] == 3


async def test_drift_is_repaired_and_counted_in_ops_summary_and_metrics(world, services, client, reconciler):
    node = await world.node("drift", LAT, LNG)
    sku = await world.sku("drift")
    await world.stock(node, sku, 6)
    await world.post_order(world.order("drift-1", [(sku, 2)], lat=LAT, lng=LNG))
    before = (await client.get("/ops/summary", params={"fresh": "true"})).json()["reconciler"]

    await services.redis.hincrby(inventory.avail_key(node), sku, 7)      # e.g. an old snapshot restored
    await services.redis.hincrby(inventory.reserved_key(node), sku, -1)
    first = await reconciler.reconcile()  # available set to on-hand - reserved at once
    assert first.drift >= 1 and first.full
    # reserved against the sum of the records: when the full pass that follows at once saw it too
    second = await reconciler.reconcile()
    assert second.full and second.drift >= 1
    assert await in_step(services, node)

    # on-hand differing from PostgreSQL is repaired when seen twice (a stock change may be in flight)
    await services.redis.hset(inventory.onhand_key(node), sku, 50)
    await services.redis.hincrby(inventory.avail_key(node), sku, 44)
    await reconciler.reconcile()
    assert (await services.inventory.snapshot([node]))[(node, sku)][0] == 50
    await reconciler.reconcile()
    assert await in_step(services, node)

    after = (await client.get("/ops/summary", params={"fresh": "true"})).json()["reconciler"]
    assert after["drift_repaired"] - before["drift_repaired"] >= 3
    assert after["passes"] - before["passes"] == 4 and after["last_pass_at"]
    metrics = (await client.get("/metrics")).text
    assert 'oms_reconcile_repairs_total{kind="drift"}' in metrics


async def test_one_process_at_a_time_holds_the_reconciler_lease(services):
    a = Reconciler(services.pool, services.redis, services.inventory, services.fence)
    b = Reconciler(services.pool, services.redis, services.inventory, services.fence)
    await services.redis.delete("oms:reconciler:lease")
    assert await a._lease() and not await b._lease()
    assert await a._lease()  # renewed by its holder
    await a.release_lease()
    assert await b._lease()
    await b.release_lease()
