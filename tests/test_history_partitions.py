"""order_history is partitioned by month: rows land in their month, nothing fails for want of a
partition, and the migration keeps every existing row (ids and order) when it converts the table."""

from __future__ import annotations

from datetime import datetime, timezone


from dbkit import own_database
from oms.infra import db


async def _partition_of(conn, order_id: str) -> set[str]:
    return {r["p"] for r in await conn.fetch(
        "select tableoid::regclass::text p from order_history where order_id = $1", order_id)}


async def test_history_rows_land_in_their_months_partition_and_far_dates_in_the_default(world, services):
    node = await world.node("hist", 31.2304, 121.4737)
    sku = await world.sku("hist")
    await world.stock(node, sku, 5)
    order = (await world.post_order(world.order("h-1", [(sku, 1)]))).json()
    async with services.pool.acquire() as conn:
        assert await conn.fetchval(
            "select count(*) from pg_partitioned_table where partrelid = 'order_history'::regclass") == 1
        month = datetime.now(timezone.utc).strftime("%Y_%m")
        assert await _partition_of(conn, order["id"]) == {f"order_history_{month}"}
        ahead = await conn.fetchval("select count(*) from pg_inherits where inhparent = 'order_history'::regclass")
        assert ahead >= 13 + 1  # this month, twelve ahead, the default
        await conn.execute("insert into order_history (order_id, at, to_status, cause) values ($1, $2, 'allocated', 'test')",
                           order["id"], datetime(2099, 1, 1, tzinfo=timezone.utc))
        assert "order_history_default" in await _partition_of(conn, order["id"])
    r = await world.c.get(f"/orders/{order['id']}")
    assert [h["to_status"] for h in r.json()["history"]][0] == "allocated"


async def test_the_migration_keeps_every_history_row_with_its_id(settings):
    async with own_database(settings, upto=21, prefix="oms_hist_") as conn:
        await conn.execute("""insert into orders (id, channel, external_id, status, channel_status, delivery_mode,
                                  dest_lat, dest_lng) values ('o-old', 'manual', 'old-1', 'allocated', 'paid', 'ship', 31.2, 121.4)""")
        old = [datetime(2026, 3, 5, tzinfo=timezone.utc), datetime(2026, 4, 30, 23, 59, tzinfo=timezone.utc)]
        for at in old:
            await conn.execute("insert into order_history (order_id, at, to_status, cause) values ('o-old', $1, 'allocated', 'test')", at)
        before = [tuple(r) for r in await conn.fetch("select id, at from order_history order by id")]

        assert (await db.migrate(conn))[:1] == ["021_history_partitions.sql"]

        after = [tuple(r) for r in await conn.fetch("select id, at from order_history order by id")]
        assert after == before
        assert await _partition_of(conn, "o-old") == {"order_history_2026_03", "order_history_2026_04"}
        new_id = await conn.fetchval("insert into order_history (order_id, to_status, cause) values ('o-old', 'cancelled', 'test') returning id")
        assert new_id > max(i for i, _ in before)
