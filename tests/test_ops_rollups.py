"""The rollups behind /ops/summary (017_ops_rollups.sql) equal a direct count over the orders,
through creations, status changes, reason changes, moves and deletes, folded or not; the summary
counts each order in its own minute across minute (and hour) boundaries; the bounded at-risk read
judges exactly what a scan of every open fulfilment would; and the triggers never make two
writers wait for each other."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime, timedelta, timezone

import asyncpg
import pytest

from oms.infra.db import Q
from oms.infra.db import SQL_DIR
from oms.network.promise import PromiseClock
from oms.orders import model
from oms.ops import summary as ops

LAT, LNG = 31.2304, 121.4737


# ---- the figures counted directly, as the summary computed them before the rollups ---------------

DIRECT_MINUTES = """
select date_trunc('minute', created_at) as minute, channel, count(*) as orders,
       coalesce(sum(total_fen) filter (where paid_at is not null and status <> 'cancelled'), 0) as gmv_fen,
       count(*) filter (where status not in ('created', 'backordered', 'cancelled')) as accepted,
       count(*) filter (where status = 'backordered') as backordered,
       count(*) filter (where status = 'cancelled') as cancelled
  from orders group by 1, 2"""
ROLLUP_MINUTES = """
select minute, channel, sum(orders) as orders, sum(gmv_fen) as gmv_fen, sum(accepted) as accepted,
       sum(backordered) as backordered, sum(cancelled) as cancelled
  from ops_minute group by 1, 2
having (sum(orders), sum(gmv_fen), sum(accepted), sum(backordered), sum(cancelled)) <> (0, 0, 0, 0, 0)"""

DIRECT_KINDS = r"""
select regexp_replace(regexp_replace(regexp_replace(regexp_replace(
           split_part(coalesce(reason, 'no reason recorded'), ': ', 1),
           '\s*\([^)]*\)', '', 'g'),
           'stock moved at [^;]*?(while|;|$)', 'stock moved \1', 'g'),
           '''[^'']*''', '''…''', 'g'),
           '-?\d+(\.\d+)?', 'N', 'g') as kind, count(*) as orders
  from orders where status = 'backordered' group by 1"""
ROLLUP_KINDS = "select kind, sum(orders) as orders from ops_backorder_kind group by 1 having sum(orders) <> 0"

DIRECT_SKUS = """
select date_trunc('hour', o.created_at) as hour, l.sku, count(*) as lines, sum(l.quantity) as units,
       count(distinct l.order_id) as orders
  from order_lines l join orders o on o.id = l.order_id
 where l.status = 'backordered' group by 1, 2"""
ROLLUP_SKUS = """
select hour, sku, sum(lines) as lines, sum(units) as units, sum(orders) as orders
  from ops_hour_sku group by 1, 2 having (sum(lines), sum(units), sum(orders)) <> (0, 0, 0)"""

DIRECT_WORK = """
select node_id, count(*) filter (where status = 'allocated') as to_pick,
       count(*) filter (where status = 'picked') as picked
  from fulfillments where status in ('allocated', 'picked') group by 1"""
ROLLUP_WORK = """
select node_id, sum(to_pick) as to_pick, sum(picked) as picked
  from ops_node_work group by 1 having (sum(to_pick), sum(picked)) <> (0, 0)"""

PAIRS = {"minutes": (DIRECT_MINUTES, ROLLUP_MINUTES, 2), "backorder kinds": (DIRECT_KINDS, ROLLUP_KINDS, 1),
         "backordered SKUs": (DIRECT_SKUS, ROLLUP_SKUS, 2), "open work": (DIRECT_WORK, ROLLUP_WORK, 1)}


def _keyed(rows: list, key_len: int) -> dict:
    return {tuple(r)[:key_len]: tuple(int(v) for v in tuple(r)[key_len:]) for r in rows}


async def assert_rollups_match(pool: asyncpg.Pool, step: str, *, fold: bool = False) -> None:
    """Every rollup, summed by key, equals the direct count, read in one snapshot."""
    async with pool.acquire() as conn:
        if fold:
            await conn.execute(Q["ops_fold"])
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            for name, (direct, rollup, key_len) in PAIRS.items():
                want = _keyed(await conn.fetch(direct), key_len)
                got = _keyed(await conn.fetch(rollup), key_len)
                diff = {k: (want.get(k), got.get(k)) for k in want.keys() | got.keys() if want.get(k) != got.get(k)}
                assert not diff, f"after {step}: {name} drifted (direct, rollup): {diff}"


def _spot(world) -> tuple[float, float]:
    """A place of this test's own: routing looks at the nearest stores only, and earlier tests put many at LAT, LNG."""
    h = int(world.uid, 16)
    return 31.05 + (h % 1000) * 0.00025, 121.20 + (h // 1000 % 1000) * 0.00035


async def _store(world, name: str, capacity: int) -> tuple[str, dict]:
    lat, lng = _spot(world)
    node = await world.node(name, lat, lng, capacity=capacity)
    r = await world.c.post(f"/nodes/{node}/tokens", json={"label": "rollup test"})
    assert r.status_code == 201, r.text
    return node, {"Authorization": f"Bearer {r.json()['token']}"}


async def _post(world, body: dict) -> dict:
    r = await world.post_order(body)
    assert r.status_code == 201, r.text
    return r.json()


# ---- the rollups cannot drift ---------------------------------------------------------------------

async def test_rollups_equal_a_direct_count_through_orders_and_status_changes(world, client, services):
    pool = services.pool
    await assert_rollups_match(pool, "what earlier tests left")
    node, staff = await _store(world, "roll", capacity=30)
    sku = await world.sku("roll-sku", 1200)
    short = await world.sku("roll-short", 900)  # no stock until later
    await world.stock(node, sku, 6)

    at = dict(zip(("lat", "lng"), _spot(world)))
    placed = [await _post(world, world.order(f"roll-{i}", [(sku, 1)], channel=ch, **at))
              for i, ch in enumerate(("jd", "tmall", "jd", "douyin"))]
    back = await _post(world, world.order("roll-back", [(short, 3)], channel="jd", **at))
    mixed = await _post(world, world.order("roll-mixed", [(sku, 1), (short, 2)], channel="tmall", **at))
    unpaid = await _post(world, world.order("roll-unpaid", [(sku, 1)], channel="douyin", paid_at=None, **at))
    assert [o["status"] for o in placed] == ["allocated"] * 4
    assert back["status"] == "backordered" and mixed["status"] == "partially_allocated"
    await assert_rollups_match(pool, "intake")

    r = await client.post(f"/orders/{placed[1]['id']}/cancel")
    assert r.status_code == 200, r.text
    r = await client.post(f"/stores/{node}/orders/{placed[0]['id']}/picked", headers=staff)
    assert r.status_code == 200, r.text
    await assert_rollups_match(pool, "a cancel and a pick")

    # a reason rewritten moves a backorder between kinds; a creation time moved, between minutes and hours
    await pool.execute("update orders set reason = 'no node has it: stock moved at N2 while routing' where id = $1",
                       back["id"])
    await pool.execute("update orders set created_at = created_at - interval '61 minutes' where id = $1", mixed["id"])
    await assert_rollups_match(pool, "a reason and a creation time rewritten")
    await assert_rollups_match(pool, "a fold", fold=True)

    # stock arrives: the backorders are allocated again, their short lines no longer count
    await world.stock(node, short, 10)
    await services.allocator.retry_backorders(short)
    got = (await client.get(f"/orders/{back['id']}")).json()
    assert got["status"] == "allocated", got
    await assert_rollups_match(pool, "the backorder retried")

    # a paid-at arriving changes GMV; a deleted order takes its lines and fulfilments with it
    await pool.execute("update orders set paid_at = now() where id = $1", unpaid["id"])
    await pool.execute("delete from orders where id = $1", placed[3]["id"])
    await assert_rollups_match(pool, "a payment and a delete")
    # a statement that changes many orders at once, then rolled back: nothing counted
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("update orders set status = 'cancelled' where id = any($1::text[])",
                           [placed[2]["id"], mixed["id"], back["id"]])
        await tx.rollback()
    await assert_rollups_match(pool, "a rolled-back change", fold=True)


async def test_the_bounded_at_risk_read_judges_what_a_scan_of_every_open_fulfilment_would(world, services):
    """Summary at-risk and late per node and its list agree with the promise rule applied to every open
    fulfilment (promise.sql promise_open_fulfillments), including a deep queue and late orders."""
    node, _ = await _store(world, "risk", capacity=600)  # fast while the orders are routed here
    sku = await world.sku("risk-sku")
    await world.stock(node, sku, 40)
    now = datetime.now(timezone.utc)
    at = dict(zip(("lat", "lng"), _spot(world)))
    ids = [(await _post(world, world.order(f"risk-{i}", [(sku, 1)], paid_at=now.isoformat(), **at)))["id"]
           for i in range(13)]
    # a parcel: no promise, never at risk
    ship = await _post(world, world.order("risk-ship", [(sku, 1)], mode="ship", paid_at=now.isoformat(), **at))
    # promises from 3 minutes ago (late) to 52 minutes ahead, one in the queue every ten minutes: all at
    # risk; one 9 hours ahead, thirteenth in the queue (130 + 25 minutes): beyond the node's horizon
    await services.pool.execute(
        "update orders set promised_by = now() + make_interval(mins => (5 * k - 8)::int)"
        "  from unnest($1::text[]) with ordinality as t(id, k) where orders.id = t.id", ids[:12])
    await services.pool.execute("update orders set promised_by = now() + interval '9 hours' where id = $1", ids[12])
    await world.node("risk", *_spot(world), capacity=6)  # then ten minutes per order

    clock = PromiseClock.from_settings(services.settings)
    now = datetime.now(timezone.utc)
    async with services.pool.acquire() as conn:
        await conn.execute(Q["ops_fold"])
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            work = await ops.open_work(conn, clock, now, {})
            full = await conn.fetch(Q["promise_open_fulfillments"])
    want: dict[str, list[int]] = {}
    keys = []
    for r in full:
        left = clock.minutes_left(r["promised_by"], "allocated", now)
        e = clock.estimate(left, r["status"], r["ahead"], r["capacity_per_hour"])
        counts = want.setdefault(r["node_id"], [0, 0, 0, 0])
        counts[0] += r["status"] == "allocated"
        counts[1] += r["status"] == "picked"
        counts[2] += e.at_risk
        counts[3] += e.late
        if e.at_risk:
            keys.append((left, r["order_id"]))
    got = {n: [l["to_pick"], l["picked"], l["at_risk"], l["late"]] for n, l in work.load.items()}
    assert got == want
    assert sorted((w.minutes_left, w.order_id) for w in work.at_risk) == sorted(keys)[:ops.AT_RISK_LISTED]
    placed = await services.pool.fetch("select o.id, o.status, f.node_id, f.status as f_status from orders o"
                                       " left join fulfillments f on f.order_id = o.id where o.id = any($1::text[])",
                                       ids + [ship["id"]])
    assert got[node] == [14, 0, 12, 1], [tuple(r) for r in placed if r["node_id"] != node or r["f_status"] != "allocated"]
    listed = {w.order_id for w in work.at_risk}
    assert set(ids[:12]) <= listed and ids[12] not in listed and ship["id"] not in listed


def test_the_at_risk_read_and_its_index_name_every_status_an_order_with_open_work_can_have():
    def statuses(sql: str) -> set[str]:
        return set(re.findall(r"'([a-z_]+)'", re.search(r"o?\.?status in \(([^)]*)\)", sql).group(1)))

    index = re.search(r"create index orders_open_by_promise.*?;", (SQL_DIR / "migrations" / "017_ops_rollups.sql")
                      .read_text(), re.S).group(0)
    assert statuses(Q["ops_promise_candidates"]) == statuses(index) == {str(s) for s in model._WORK}


# ---- minute and hour boundaries ------------------------------------------------------------------

async def _insert_orders(pool: asyncpg.Pool, channel: str, rows: list[tuple[str, datetime, str, int]]) -> None:
    """Orders written the way a bulk load would (one statement): id, created_at, status, total."""
    await pool.execute(
        "with k as (insert into order_keys (id, channel, external_id) select unnest($2::text[]), $1, unnest($2::text[]))"
        " insert into orders (id, channel, external_id, status, channel_status, delivery_mode, dest_lat, dest_lng,"
        " paid_at, total_fen, reason, created_at)"
        " select i, $1, i, s, 'paid', 'ship', 31.2, 121.4, c, t,"
        "        case when s = 'backordered' then 'no node has ''X'' in stock: X' end, c"
        "   from unnest($2::text[], $3::timestamptz[], $4::text[], $5::bigint[]) as r(i, c, s, t)",
        channel, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows])


async def test_summary_counts_each_order_in_its_minute_across_minute_and_hour_boundaries(world, services):
    channel = world.id("edge")  # a channel of its own: its figures are only these orders
    sku = await world.sku("edge-sku")
    hour = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    m = hour  # a minute that is also an hour boundary
    ms = timedelta(milliseconds=1)
    rows = [(world.id("e1"), m - ms, "allocated", 100),  # the last millisecond of the minute (and hour) before
            (world.id("e2"), m, "allocated", 200),  # the first of the minute
            (world.id("e3"), m + timedelta(seconds=59.999), "backordered", 400),  # the last of the minute
            (world.id("e4"), m + timedelta(seconds=60), "allocated", 800)]  # the first of the next
    await _insert_orders(services.pool, channel, rows)
    await services.pool.execute(
        "insert into order_lines (order_id, line_no, sku, quantity, status, reason)"
        " select unnest($1::text[]), 1, $2, 5000, 'backordered', 'no node has it'", [r[0] for r in rows], sku)
    await services.pool.execute("update orders set status = 'cancelled' where id = $1", world.id("e4"))

    async def summary(now: datetime, since: datetime):
        return await ops.build_summary(services, now=now, since=since)

    def minute_counts(s) -> dict[datetime, int]:
        series = s.orders_per_minute.series.get(channel, [])
        return {t: n for t, n in zip(s.orders_per_minute.minutes, series) if n}

    early = await summary(m + timedelta(seconds=30), m - timedelta(hours=1))
    assert minute_counts(early) == {m - timedelta(minutes=1): 1, m: 2}
    later = await summary(m + timedelta(seconds=90), m - timedelta(hours=1))  # the window moved on a minute
    assert minute_counts(later) == {m - timedelta(minutes=1): 1, m: 2, m + timedelta(minutes=1): 1}
    assert sum(later.orders_per_minute.gmv_fen) >= 100 + 200 + 400

    def totals(s) -> tuple:
        c = next((c for c in s.channels if c.channel == channel), None)
        return (c.orders, c.gmv_fen, c.accepted, c.backordered, c.cancelled) if c else (0, 0, 0, 0, 0)

    def short(s) -> tuple:
        o = next((o for o in s.out_of_stock if o.sku == sku), None)
        return (o.lines, o.units, o.orders) if o else (0, 0, 0)

    # since anywhere in a minute: the rollup's whole minutes plus the orders of the part minute
    for since, want, lines in (
            (m - timedelta(hours=1), (4, 700, 2, 1, 1), 4),
            (m - ms, (4, 700, 2, 1, 1), 4),
            (m, (3, 600, 1, 1, 1), 3),
            (m + ms, (2, 400, 0, 1, 1), 2),
            (m + timedelta(seconds=59.999), (2, 400, 0, 1, 1), 2),
            (m + timedelta(seconds=59.9995), (1, 0, 0, 0, 1), 1),
            (m + timedelta(seconds=60), (1, 0, 0, 0, 1), 1),
            (m + timedelta(seconds=60) + ms, (0, 0, 0, 0, 0), 0)):
        s = await summary(m + timedelta(minutes=5), since)
        assert totals(s) == want, since
        assert short(s) == (lines, 5000 * lines, lines), since


# ---- writers never wait for each other on a counter -----------------------------------------------

async def test_two_transactions_counting_into_one_minute_do_not_wait_for_each_other(world, services):
    channel = world.id("busy")
    now = datetime.now(timezone.utc)
    async with services.pool.acquire() as a, services.pool.acquire() as b:
        ta, tb = a.transaction(), b.transaction()
        await ta.start()
        await tb.start()
        try:
            await a.execute("set local statement_timeout = '3s'")
            await b.execute("set local statement_timeout = '3s'")
            for conn, name in ((a, "b1"), (b, "b2")):
                await conn.execute(
                    "with k as (insert into order_keys (id, channel, external_id) values ($1, $2, $1))"
                    " insert into orders (id, channel, external_id, status, channel_status, delivery_mode, dest_lat,"
                    " dest_lng, created_at) values ($1, $2, $1, 'allocated', 'paid', 'ship', 31.2, 121.4, $3)",
                    world.id(name), channel, now)
            # both still open, both counted into the same minute and channel: neither waited
            await asyncio.wait_for(a.execute("update orders set status = 'cancelled' where id = $1", world.id("b1")), 5)
        finally:
            await tb.commit()
            await ta.commit()
    rows = await services.pool.fetch(
        "select sum(orders), sum(cancelled) from ops_minute where channel = $1", channel)
    assert [tuple(r) for r in rows] == [(2, 1)]


@pytest.mark.parametrize("at", ["2024-03-09T23:59:59.999999+00:00", "2024-03-10T00:00:00+00:00"])
async def test_minutes_and_hours_are_utc_whatever_the_session_time_zone(services, at):
    stamp = datetime.fromisoformat(at)
    async with services.pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute("set local timezone = 'Asia/Kathmandu'")  # +05:45: not a whole hour
            minute, hour = await conn.fetchrow("select ops_minute_of($1), ops_hour_of($1)", stamp)
    assert minute == stamp.replace(second=0, microsecond=0)
    assert hour == stamp.replace(minute=0, second=0, microsecond=0)


async def test_the_timer_round_folds_the_rollups_when_nobody_opens_the_summary(world, services):
    from oms.orders import timers

    sku = await world.sku("fold-sku", 500)
    node, _ = await _store(world, "fold", capacity=30)
    await world.stock(node, sku, 5)
    at = dict(zip(("lat", "lng"), _spot(world)))
    await _post(world, world.order("fold-1", [(sku, 1)], channel="jd", **at))
    assert await services.pool.fetchval("select count(*) from ops_minute where not folded") > 0
    await services.redis.delete(ops.FOLD_THROTTLE_KEY)  # a fold a moment ago would skip this one
    await timers.run_once(services)
    assert await services.pool.fetchval("select count(*) from ops_minute where not folded") == 0
    await assert_rollups_match(services.pool, "folded by the timer round")
