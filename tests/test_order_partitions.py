"""`orders` is partitioned by month (022_order_partitions.sql): an order lands in its month, the
unique (channel, external_id) still holds across months through order_keys, start-up keeps the
next months ready (and moves rows the default partition took meanwhile), deleting an order
takes its children with it, and the ops rollups stay exact through deletes and month moves."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta, timezone

import asyncpg
import pytest

from oms.infra import db
from oms.infra.db import Q
from oms.orders.claims import claim_key
from oms.orders.rows import HistoryRow, LineRow, NewOrderRows, OrderRow
from oms.orders.writer import OrderWriter
from dbkit import own_database
from test_ops_rollups import assert_rollups_match


def _month(d: datetime, ahead: int = 0) -> datetime:
    """The first instant (UTC) of the month `ahead` months after d's."""
    m = d.year * 12 + d.month - 1 + ahead
    return datetime(m // 12, m % 12 + 1, 1, tzinfo=timezone.utc)


def _part(table: str, d: datetime) -> str:
    return f"{table}_{d:%Y_%m}"


async def _partition_of(conn, order_id: str) -> str | None:
    return await conn.fetchval("select tableoid::regclass::text from orders where id = $1", order_id)


async def _past_month_partition(conn) -> datetime:
    """Last month's partition, as the ensure had made it a month ago; its first instant."""
    last = _month(datetime.now(timezone.utc), -1)
    await conn.execute(f"create table if not exists {_part('orders', last)} partition of orders"
                       f" for values from ('{last.isoformat()}') to ('{_month(last, 1).isoformat()}')")
    return last


def _rows(order_id: str, channel: str, external_id: str, sku: str) -> NewOrderRows:
    """A backordered order as intake writes it: the order, one short line, its history."""
    return NewOrderRows(
        order=OrderRow(id=order_id, channel=channel, external_id=external_id, status="backordered",
                       channel_status="paid", delivery_mode="ship", buyer=None, dest_lat=31.2, dest_lng=121.4,
                       dest_address="", dest_approximate=False, pickup_node_id=None, promised_by=None,
                       paid_at=datetime.now(timezone.utc), total_fen=500, freight_fen=0, discount_fen=0,
                       reason="no node has it", channel_updated_at=None),
        lines=[LineRow(order_id=order_id, line_no=1, sku=sku, quantity=2, unit_price_fen=250, platform_line_id=None,
                       platform_sku_id=None, status="backordered", reason="no node has it")],
        history=[HistoryRow(order_id=order_id, from_status=None, to_status="backordered", cause="test", detail=None)])


async def _children(conn, order_id: str) -> tuple[int, int, int, int, int]:
    return tuple(await conn.fetchrow(
        "select (select count(*) from order_keys where id = $1), (select count(*) from orders where id = $1),"
        "       (select count(*) from order_lines where order_id = $1),"
        "       (select count(*) from fulfillments where order_id = $1),"
        "       (select count(*) from order_history where order_id = $1)", order_id))


# ---- where orders land ----------------------------------------------------------------------------

async def test_an_order_lands_in_its_months_partition_and_a_far_date_in_the_default(world, services):
    node = await world.node("part", 31.2304, 121.4737)
    sku = await world.sku("part")
    await world.stock(node, sku, 5)
    r = await world.post_order(world.order("p-1", [(sku, 1)]))
    assert r.status_code == 201, r.text
    order = r.json()
    async with services.pool.acquire() as conn:
        assert await conn.fetchval(
            "select count(*) from pg_partitioned_table where partrelid = 'orders'::regclass") == 1
        assert await _partition_of(conn, order["id"]) == _part("orders", datetime.now(timezone.utc))
        assert await conn.fetchrow("select channel, external_id from order_keys where id = $1", order["id"]) == \
            ("manual", world.id("p-1"))
        await conn.execute(
            "update orders set created_at = '2099-01-01T00:00:00Z' where id = $1", order["id"])
        assert await _partition_of(conn, order["id"]) == "orders_default"
    got = await world.c.get(f"/orders/{order['id']}")
    assert got.status_code == 200 and got.json()["fulfillments"][0]["lines"] == [{"sku": sku, "quantity": 1}]


# ---- one order per channel order, across months ---------------------------------------------------

async def _order_from_last_month(world, services, name: str) -> tuple[dict, dict, str]:
    """(the pushed body, the order as created, its SKU): one unit of 5, moved into last month."""
    node = await world.node(name, 31.2304, 121.4737)
    sku = await world.sku(name)
    await world.stock(node, sku, 5)
    body = world.order(f"{name}-1", [(sku, 1)])
    first = (await world.post_order(body)).json()
    async with services.pool.acquire() as conn:
        last = await _past_month_partition(conn)
        await conn.execute("update orders set created_at = $2 where id = $1", first["id"], last + timedelta(days=3))
        assert await _partition_of(conn, first["id"]) == _part("orders", last)
    return body, first, sku


async def test_a_push_of_an_order_stored_in_an_earlier_month_makes_no_second_order(world, services):
    body, first, sku = await _order_from_last_month(world, services, "dup")
    # the Redis claim gone (a flush): only PostgreSQL's unique key stands between the push and a second order
    await services.redis.delete(claim_key(body["channel"], body["external_id"]))
    again = await world.post_order(body)
    assert again.status_code in (200, 201), again.text
    assert again.json()["id"] == first["id"]
    ids = await services.pool.fetch("select id from orders where channel = $1 and external_id = $2",
                                    body["channel"], body["external_id"])
    assert [r["id"] for r in ids] == [first["id"]]
    stock = (await world.c.get(f"/inventory/{sku}")).json()
    assert sum(n["available"] for n in stock["nodes"]) == 4, stock  # the second attempt's units went back


async def test_an_order_is_listed_by_its_external_id_from_any_month_through_its_key(world, services):
    body, first, _ = await _order_from_last_month(world, services, "byext")
    async with services.pool.acquire() as conn:
        # tiny test tables make a scan cheapest; with scans priced out, only an index path avoids one
        async with conn.transaction():
            await conn.execute("set local enable_seqscan = off")
            plan = "\n".join(r[0] for r in await conn.fetch(
                "explain " + Q["orders_list_by_external"], None, body["external_id"], None, None, None, 50))
    assert "order_keys" in plan and "Seq Scan" not in plan, plan  # no month read whole
    for query in (f"external_id={body['external_id']}", f"external_id={body['external_id']}&channel={body['channel']}"):
        got = (await world.c.get(f"/orders?{query}")).json()["items"]
        assert [o["id"] for o in got] == [first["id"]], (query, got)
    got = (await world.c.get(f"/orders?external_id={body['external_id']}&channel=jd-other")).json()["items"]
    assert got == []


async def test_a_batch_skips_an_order_stored_in_an_earlier_month_and_a_second_copy_with_their_children(services):
    channel, sku = "manual", "sku-" + secrets.token_hex(3)
    writer = OrderWriter(services.pool)
    old_ext, new_ext = "old-" + secrets.token_hex(3), "new-" + secrets.token_hex(3)
    old_id = "o-old-" + secrets.token_hex(3)
    assert await writer.write(_rows(old_id, channel, old_ext, sku))
    async with services.pool.acquire() as conn:
        last = await _past_month_partition(conn)
        await conn.execute("update orders set created_at = $2 where id = $1", old_id, last)
        assert await _partition_of(conn, old_id) == _part("orders", last)

    ids = ["o-b1-" + secrets.token_hex(3), "o-b2-" + secrets.token_hex(3), "o-b3-" + secrets.token_hex(3)]
    batch = [_rows(ids[0], channel, old_ext, sku), _rows(ids[1], channel, new_ext, sku),
             _rows(ids[2], channel, new_ext, sku)]
    written = await writer._write_batch(batch)
    assert written == [False, True, False]
    async with services.pool.acquire() as conn:
        assert await _children(conn, ids[0]) == (0, 0, 0, 0, 0)
        assert await _children(conn, ids[1]) == (1, 1, 1, 0, 1)
        assert await _children(conn, ids[2]) == (0, 0, 0, 0, 0)
        assert await conn.fetchval("select id from order_keys where channel = $1 and external_id = $2",
                                   channel, old_ext) == old_id
    await assert_rollups_match(services.pool, "a batch with duplicates")


# ---- start-up keeps the months ready --------------------------------------------------------------

async def test_the_ensure_makes_the_next_months_and_moves_rows_the_default_took(services):
    now = datetime.now(timezone.utc)
    far = _month(now, 7)  # past the three months start-up keeps ready
    order_id, channel = "o-far-" + secrets.token_hex(3), "far-" + secrets.token_hex(3)
    async with services.pool.acquire() as conn:
        assert await conn.fetchval(Q["partitions_ensure"]) == 0  # start-up already made them
        for ahead in range(4):
            assert await conn.fetchval("select to_regclass($1) is not null", _part("orders", _month(now, ahead)))
        assert await conn.fetchval("select to_regclass($1)", _part("orders", far)) is None
        await conn.execute(
            "with k as (insert into order_keys (id, channel, external_id) values ($1, $2, $1))"
            " insert into orders (id, channel, external_id, status, channel_status, delivery_mode, dest_lat, dest_lng,"
            " created_at) values ($1, $2, $1, 'allocated', 'paid', 'ship', 31.2, 121.4, $3)",
            order_id, channel, far + timedelta(days=9))
        await conn.execute("insert into order_history (order_id, to_status, cause) values ($1, 'allocated', 'test')",
                           order_id)
        assert await _partition_of(conn, order_id) == "orders_default"
        counted = await conn.fetchval("select sum(orders) from ops_minute where channel = $1", channel)

        made = await conn.fetchval("select oms_partitions(7)")
        assert made >= 4  # orders' months four to seven (order_history had them from 021)
        assert await _partition_of(conn, order_id) == _part("orders", far)
        assert await _children(conn, order_id) == (1, 1, 0, 0, 1)
        assert await conn.fetchval("select sum(orders) from ops_minute where channel = $1", channel) == counted == 1
        assert await conn.fetchval("select oms_partitions(7)") == 0
        await conn.execute("delete from orders where id = $1", order_id)
    await assert_rollups_match(services.pool, "the default's rows moved into their month")


# ---- deletes and month moves ----------------------------------------------------------------------

async def test_deleting_an_order_deletes_its_key_and_children_and_the_rollups_stay_exact(world, services):
    node = await world.node("del", 31.2304, 121.4737)
    sku, short = await world.sku("del"), await world.sku("del-short")
    await world.stock(node, sku, 5)
    mixed = [(await world.post_order(world.order(f"del-{i}", [(sku, 1), (short, 2)], channel="jd"))).json()
             for i in range(2)]
    assert [o["status"] for o in mixed] == ["partially_allocated"] * 2
    await assert_rollups_match(services.pool, "intake")
    async with services.pool.acquire() as conn:
        assert await _children(conn, mixed[0]["id"]) == (1, 1, 2, 1, 1)
        await conn.execute("delete from orders where id = $1", mixed[0]["id"])
        assert await _children(conn, mixed[0]["id"]) == (0, 0, 0, 0, 0)
        await assert_rollups_match(services.pool, "an order deleted")
        assert await conn.fetchval("select count(*) from reservations where order_id = $1", mixed[0]["id"]) == 0
        # a key alone cannot go while its order is there (its lines would leave uncounted)
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute("delete from order_keys where id = $1", mixed[1]["id"])
        assert await _children(conn, mixed[1]["id"]) == (1, 1, 2, 1, 1)
        # an order moved to another partition, deleted by a statement naming one more id that matches none
        await conn.execute("update orders set created_at = created_at - interval '40 days' where id = $1",
                           mixed[1]["id"])
        await conn.execute("delete from orders where id = any($1)", [mixed[1]["id"], world.id("none")])
        assert await _children(conn, mixed[1]["id"]) == (0, 0, 0, 0, 0)
    await assert_rollups_match(services.pool, "orders deleted", fold=True)


async def test_an_order_moved_to_another_month_keeps_the_rollups_exact(world, services):
    sku = await world.sku("move-short")  # no stock anywhere: the order waits, its line counted short
    order = (await world.post_order(world.order("move-1", [(sku, 3)], channel="douyin"))).json()
    assert order["status"] == "backordered"
    async with services.pool.acquire() as conn:
        last = await _past_month_partition(conn)
        await conn.execute("update orders set created_at = $2 where id = $1", order["id"], last + timedelta(hours=5))
        assert await _partition_of(conn, order["id"]) == _part("orders", last)
        assert await _children(conn, order["id"]) == (1, 1, 1, 0, 1)  # a move is no delete
    await assert_rollups_match(services.pool, "an order moved a month back")
    r = await world.c.post(f"/orders/{order['id']}/cancel")
    assert r.status_code == 200, r.text
    await assert_rollups_match(services.pool, "the moved order cancelled", fold=True)


async def test_a_month_retired_by_detaching_it_takes_its_keys_and_children_along(settings):
    async with own_database(settings, upto=None, prefix="oms_orders_") as conn:  # a database of its own: the rollups keep counting it
        await conn.execute("create table orders_2026_03 partition of orders"
                           " for values from ('2026-03-01T00:00:00Z') to ('2026-04-01T00:00:00Z')")
        await conn.execute("with k as (insert into order_keys (id, channel, external_id) values ('o-ret', 'manual', 'ret-1'))"
                           " insert into orders (id, channel, external_id, status, channel_status, delivery_mode,"
                           " dest_lat, dest_lng, created_at) values ('o-ret', 'manual', 'ret-1', 'allocated', 'paid',"
                           " 'ship', 31.2, 121.4, '2026-03-05T00:00:00Z')")
        await conn.execute("insert into order_lines (order_id, line_no, sku, quantity) values ('o-ret', 1, 'S', 1)")
        await conn.execute("insert into order_history (order_id, to_status, cause) values ('o-ret', 'allocated', 'test')")
        await conn.execute("alter table orders detach partition orders_2026_03")
        await conn.execute("delete from order_keys k using orders_2026_03 o where k.id = o.id")
        assert await _children(conn, "o-ret") == (0, 0, 0, 0, 0)
        assert await conn.fetchval("select count(*) from orders_2026_03") == 1  # the archive
        # the channel order is new again
        assert await conn.fetchval("insert into order_keys (id, channel, external_id) values ('o-ret2', 'manual', 'ret-1')"
                                   " on conflict (channel, external_id) do nothing returning id") == "o-ret2"


# ---- the migration --------------------------------------------------------------------------------

async def test_the_migration_moves_every_order_with_its_children_and_counts(settings):
    async with own_database(settings, upto=22, prefix="oms_orders_") as conn:
        await conn.execute("insert into skus (sku) values ('S')")
        old = [datetime(2026, 3, 5, tzinfo=timezone.utc), datetime(2026, 4, 30, 23, 59, tzinfo=timezone.utc)]
        for i, at in enumerate(old):
            await conn.execute("""insert into orders (id, channel, external_id, status, channel_status, delivery_mode,
                                      dest_lat, dest_lng, created_at, reason)
                                  values ($1, 'manual', $1, 'backordered', 'paid', 'ship', 31.2, 121.4, $2, 'no node has S')""",
                               f"o-old-{i}", at)
            await conn.execute("insert into order_lines (order_id, line_no, sku, quantity, status)"
                               " values ($1, 1, 'S', 2, 'backordered')", f"o-old-{i}")
            await conn.execute("insert into order_history (order_id, at, to_status, cause) values ($1, $2, 'backordered', 'test')",
                               f"o-old-{i}", at)
        before = [tuple(r) for r in await conn.fetch("select * from orders order by id")]
        rollups = [tuple(r) for r in await conn.fetch(
            "select 'm', minute, channel, orders from ops_minute union all select 's', hour, sku, lines from ops_hour_sku"
            " order by 1, 2, 3")]

        assert (await db.migrate(conn))[:1] == ["022_order_partitions.sql"]

        assert [tuple(r) for r in await conn.fetch("select * from orders order by id")] == before
        assert {await _partition_of(conn, "o-old-0"), await _partition_of(conn, "o-old-1")} == \
            {"orders_2026_03", "orders_2026_04"}
        assert [tuple(r) for r in await conn.fetch(
            "select 'm', minute, channel, orders from ops_minute union all select 's', hour, sku, lines from ops_hour_sku"
            " order by 1, 2, 3")] == rollups  # moved, not counted again
        assert await conn.fetch("select conrelid::regclass::text t from pg_constraint"
                                " where contype = 'f' and confrelid = 'orders'::regclass") == []
        assert await conn.fetchval("select to_regclass('orders_unpartitioned')") is None
        # the same channel order again: refused through its key, though its order sits in March
        assert await conn.fetchval(
            "insert into order_keys (id, channel, external_id) values ('o-again', 'manual', 'o-old-0')"
            " on conflict (channel, external_id) do nothing returning id") is None
        await conn.execute("delete from orders where id = 'o-old-0'")
        assert await _children(conn, "o-old-0") == (0, 0, 0, 0, 0)
        assert await conn.fetchval("select sum(lines) from ops_hour_sku") == 1


async def test_the_timer_job_makes_the_coming_months_hourly_not_only_at_start_up(services):
    import time

    from oms.orders import timers

    far = _month(datetime.now(timezone.utc), 3)
    async with services.pool.acquire() as conn:
        assert await conn.fetchval("select to_regclass($1)", _part("orders", far)) is not None
        assert await conn.fetchval(f"select count(*) from {_part('orders', far)}") == 0
        await conn.execute(f"drop table {_part('orders', far)}")  # as if the service had run for months
        job = timers.TimerJob(services, 60)
        await job.ensure_partitions()  # just started: the start-up's ensure is an hour good
        assert await conn.fetchval("select to_regclass($1)", _part("orders", far)) is None
        job._partitions_at = time.monotonic() - timers.PARTITIONS_EVERY_S - 1
        await job.ensure_partitions()
        assert await conn.fetchval("select to_regclass($1)", _part("orders", far)) is not None
