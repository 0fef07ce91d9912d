"""In-doubt writes: the connection to PostgreSQL cut right after the server committed (or right
before it ran the statement) — the order exists once or not at all, its reservation follows
what PostgreSQL holds, a retry returns the same order, nothing is oversold."""

from __future__ import annotations

import asyncio

import pytest

from faultkit import PgProxy
from oms.errors import Unavailable, WriteInDoubt
from oms.infra import db
from oms.orders.intake import IntakeService
from oms.orders.model import NormalizedOrder
from oms.orders.writer import OrderWriter

import msgspec

LAT, LNG = 30.2741, 120.1551  # Hangzhou: away from the other tests' Shanghai stores


@pytest.fixture
async def proxied(services, settings):
    """An intake whose order writes go through a proxy the test can cut."""
    proxy = await PgProxy(settings.database_url).start()
    pool = await db.create_pool(proxy.url, 2, reset_on_release=False)
    intake = IntakeService(settings, services.pool, services.redis, services.allocator, services.skus,
                           OrderWriter(pool))
    yield proxy, intake
    await intake.close()
    services.allocator.doubts = services.intake.doubts
    await pool.close()
    await proxy.close()


async def reserved_in_pg(services, node: str, sku: str) -> int:
    return await services.pool.fetchval(
        "select coalesce(sum(quantity), 0) from reservations where node_id = $1 and sku = $2 and state = 'reserved'",
        node, sku)


async def assert_in_step(services, node: str, sku: str, on_hand: int) -> None:
    """Redis holds what PostgreSQL implies for (node, sku), and nothing is oversold."""
    pg_reserved = await reserved_in_pg(services, node, sku)
    assert pg_reserved <= on_hand
    assert await services.inventory.snapshot([node]) == ({(node, sku): (on_hand, pg_reserved)}
                                                         if on_hand or pg_reserved else {})
    assert (await services.inventory.available([node], [sku]))[node][sku] == on_hand - pg_reserved


async def submit(intake: IntakeService, body: dict):
    order = msgspec.convert(body, NormalizedOrder)
    try:
        return await intake.submit(order, cause="test")
    except Unavailable as exc:
        return exc


@pytest.mark.parametrize("cuts", [1, 2], ids=["writer-retry-finds-it", "read-back-finds-it"])
async def test_connection_cut_after_commit_keeps_the_order_once_with_its_reservation(world, services, proxied, cuts):
    """One cut: the writer's one-by-one retry finds the order already there under its own id.
    Two (the retry's reply lost too): the in-doubt read-back finds it."""
    proxy, intake = proxied
    node = await world.node("doubt", LAT, LNG)
    sku = await world.sku("doubt")
    await world.stock(node, sku, 3)
    body = world.order("doubt-1", [(sku, 2)], lat=LAT, lng=LNG)

    proxy.arm("after_commit", times=cuts)
    first = await submit(intake, body)
    assert proxy.cuts == cuts  # the write's reply was lost after PostgreSQL committed it
    # the caller is told 503 (in doubt) or, when the read-back came in time, gets its order
    if isinstance(first, Exception):
        assert isinstance(first, WriteInDoubt), first
    else:
        assert first[0].status == "allocated"

    stored = await services.pool.fetch("select id from orders where external_id = $1", body["external_id"])
    assert len(stored) == 1
    await asyncio.sleep(0.3)  # the resolver has read it back by now, even if the caller was not told
    assert not intake.doubts.pending
    assert await reserved_in_pg(services, node, sku) == 2
    await assert_in_step(services, node, sku, 3)  # reservation kept: 1 left, not 3

    again, created = await intake.submit(msgspec.convert(body, NormalizedOrder), cause="retry")
    assert again.id == stored[0]["id"] and not created and again.status == "allocated"
    # one more unit is all there is: a second one would be an oversell
    other = (await world.post_order(world.order("doubt-2", [(sku, 2)], lat=LAT, lng=LNG))).json()
    assert sum(l["quantity"] for f in other["fulfillments"] for l in f["lines"]) == 1, other
    await assert_in_step(services, node, sku, 3)


async def test_connection_cut_before_the_statement_ran_releases_and_the_retry_creates_it(world, services, proxied):
    proxy, intake = proxied
    node = await world.node("doubt-lost", LAT, LNG)
    sku = await world.sku("doubt-lost")
    await world.stock(node, sku, 2)
    body = world.order("doubt-lost-1", [(sku, 2)], lat=LAT, lng=LNG)

    proxy.arm("before_execute", times=2)  # the batch, and the writer's one-by-one retry of it
    first = await submit(intake, body)
    assert proxy.cuts == 2
    assert isinstance(first, Unavailable)  # not kept: 503, nothing kept
    await asyncio.sleep(0.3)
    assert not intake.doubts.pending
    assert await services.pool.fetchval("select count(*) from orders where external_id = $1", body["external_id"]) == 0
    await assert_in_step(services, node, sku, 2)  # released: both units available again

    order, created = await intake.submit(msgspec.convert(body, NormalizedOrder), cause="retry")
    assert created and order.status == "allocated"
    await assert_in_step(services, node, sku, 2)


async def test_while_postgres_cannot_answer_the_reservation_stays_and_the_claim_holds(world, services, proxied,
                                                                                     monkeypatch):
    proxy, intake = proxied
    node = await world.node("doubt-wait", LAT, LNG)
    sku = await world.sku("doubt-wait")
    await world.stock(node, sku, 1)
    body = world.order("doubt-wait-1", [(sku, 1)], lat=LAT, lng=LNG)

    real = intake.doubts.resolve_once
    calls = 0

    async def unreachable():  # PostgreSQL does not answer the read-back for a while
        nonlocal calls
        calls += 1
        if calls < 10:
            raise ConnectionRefusedError("postgres is restarting")
        await real()

    monkeypatch.setattr(intake.doubts, "resolve_once", unreachable)
    proxy.arm("after_commit", times=2)
    first = await submit(intake, body)
    assert isinstance(first, WriteInDoubt)
    # meanwhile: the unit stays reserved (no oversell to another order) ...
    assert (await services.inventory.available([node], [sku]))[node][sku] == 0
    rival = (await world.post_order(world.order("doubt-wait-2", [(sku, 1)], lat=LAT, lng=LNG))).json()
    assert rival["status"] == "backordered"
    # ... and a retry of the same order finds it once PostgreSQL says it was kept
    for _ in range(100):
        if not intake.doubts.pending:
            break
        await asyncio.sleep(0.1)
    assert calls >= 10 and not intake.doubts.pending
    again, created = await intake.submit(msgspec.convert(body, NormalizedOrder), cause="retry")
    assert not created and again.status == "allocated"
    await assert_in_step(services, node, sku, 1)
