"""/ops/summary at sale volume: its computation time at 10k and at 1M orders of a day.

    .venv/bin/python loadtests/ops_summary_bench.py [--sizes 10000,1000000] [--calls 7]

Runs its own embedded servers under .oms-bench (emptied first; or uses OMS_DATABASE_URL /
OMS_REDIS_URL / OMS_DATA_DIR as given), seeds the demo city, then fills orders straight into
PostgreSQL with generate_series, 100k per statement (the API would take hours). The rollups fill
the way the service fills them: the triggers fire on these inserts.

- The day: orders spread over the last 24 hours, every tenth a one-hour delivery from a store, the
  rest parcels from the warehouse with a 48-hour promise; 2% backordered for one of three
  reasons, 2.5% cancelled, the rest handed over.
- The live work, the same at every size (--live, default 3,000): open orders of the last 45
  minutes, to pick or picked, with their reservations. What is open at once depends on what the
  network picks per hour, not on how many orders the day has had; the at-risk list and the
  oversell check read it (bounded by index), so it is held constant to measure the day's volume.

At each size it prints the summary's computation time (median of --calls calls of build_summary,
the Redis cache bypassed; the first call, which folds what the fill appended, is not counted), and
for comparison the same figures counted by scanning the day's orders, as the summary did before
the rollups. Done when the time at the largest size is under 3 x the time at the smallest.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CHUNK = 100_000

#: one chunk of bench orders, one row per order, every column a function of i (deterministic)
CHUNK_TABLE = """
create temp table if not exists bench_chunk (
    i bigint, id text, fid text, channel text, created_at timestamptz, mode text, sku text, quantity int,
    status text, fstatus text, node_id text, promised_by timestamptz, reason text)"""
CHUNK_ROWS = """
insert into bench_chunk
with g as (
    select i, $3::timestamptz - make_interval(secs => ((i * 2654435761) % $8::bigint) / 1000.0) as created_at,
           case when i % 10 = 0 then 'delivery' else 'ship' end as mode,
           $6::text[] as skus
      from generate_series($1::bigint, $2::bigint) as i
), s as (
    select g.*, skus[1 + (i * 7) % cardinality(skus)] as sku, (1 + i % 3)::int as quantity,
           case when i % 50 = 7 then 'backordered'
                when i % 40 = 3 then 'cancelled'
                when $7 then (array['allocated', 'picking', 'picked'])[1 + i % 3]
                when mode = 'delivery' then 'delivered'
                else 'shipped' end as status
      from g
)
select i, case when $7 then 'bench-live-o' else 'bench-o' end || i as id,
       case when $7 then 'bench-live-f' else 'bench-f' end || i as fid,
       (array['tmall', 'jd', 'douyin', 'miniprogram'])[1 + i % 4] as channel,
       created_at, mode, sku, quantity, status,
       case status when 'allocated' then 'allocated' when 'picking' then 'allocated' when 'picked' then 'picked'
                   when 'cancelled' then 'cancelled' else 'shipped' end as fstatus,
       case when mode = 'delivery' then ($4::text[])[1 + i % cardinality($4::text[])] else $5 end as node_id,
       created_at + case when mode = 'delivery' then interval '60 minutes' else interval '48 hours' end as promised_by,
       case when status <> 'backordered' then null
            when i % 3 = 0 then format('no node has ''%s'' in stock: %s', sku, sku)
            when i % 3 = 1 then format('no node within %s m can deliver (ring 2): %s', 1000 + i % 5 * 500, sku)
            else format('stock moved at WH1 while routing: %s', sku) end as reason
  from s;
"""
FILL = [
    """insert into order_keys (id, channel, external_id) select id, channel, id from bench_chunk""",
    """insert into orders (id, channel, external_id, status, channel_status, delivery_mode, dest_lat, dest_lng,
                           promised_by, paid_at, total_fen, reason, created_at, updated_at)
       select id, channel, id, status, 'paid', mode, 31.23, 121.47, promised_by, created_at, quantity * 1990, reason,
              created_at, created_at
         from bench_chunk""",
    """insert into order_lines (order_id, line_no, sku, quantity, unit_price_fen, status, reason)
       select id, 1, sku, quantity, 1990,
              case status when 'backordered' then 'backordered' when 'cancelled' then 'cancelled' else 'open' end,
              reason
         from bench_chunk""",
    """insert into fulfillments (id, order_id, node_id, status, created_at, updated_at)
       select fid, id, node_id, fstatus, created_at, created_at from bench_chunk where status <> 'backordered'""",
    """insert into reservations (fulfillment_id, sku, order_id, node_id, quantity, state)
       select fid, sku, id, node_id, quantity, 'reserved' from bench_chunk where fstatus in ('allocated', 'picked')""",
]

#: what the summary counted before the rollups (sql/queries/ops.sql before 017): the day's orders scanned
SCAN = [  # (query, its parameter: the day's start, the chart's first minute, or none)
    ("""select channel, count(*), coalesce(sum(total_fen) filter (where paid_at is not null and status <> 'cancelled'), 0),
               count(*) filter (where status not in ('created', 'backordered', 'cancelled')),
               count(*) filter (where status = 'backordered'), count(*) filter (where status = 'cancelled')
          from orders where created_at >= $1 group by channel""", "since"),
    ("""select channel, date_trunc('minute', created_at), count(*) from orders
         where created_at >= $1 group by 1, 2""", "minute0"),
    ("""select l.sku, count(*), sum(l.quantity), count(distinct l.order_id)
          from order_lines l join orders o on o.id = l.order_id
         where l.status = 'backordered' and o.created_at >= $1 group by l.sku""", "since"),
    ("""select f.id, o.promised_by, row_number() over (partition by f.node_id, f.status order by o.promised_by)
          from fulfillments f join orders o on o.id = f.order_id where f.status in ('allocated', 'picked')""", None),
]


async def fill(conn, lo: int, hi: int, now: datetime, stores: list[str], warehouse: str, skus: list[str],
               *, live: bool = False) -> None:
    """Orders lo..hi-1: the day's (over the last 24 hours, handed over) or live ones (the last 45 minutes, open)."""
    spread_ms = 45 * 60_000 if live else 86_400_000
    for a in range(lo, hi, CHUNK):
        await conn.execute(CHUNK_TABLE)
        await conn.execute("truncate bench_chunk")
        await conn.execute(CHUNK_ROWS, a, min(a + CHUNK, hi) - 1, now, stores, warehouse, skus, live, spread_ms)
        async with conn.transaction():  # one chunk, one transaction: the triggers fire once per statement
            for statement in FILL:
                await conn.execute(statement)
    await conn.execute("analyze orders, order_lines, fulfillments, reservations")


async def timed(fn, calls: int) -> float:
    """Median milliseconds of `calls` calls, after one untimed call."""
    await fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


async def run(sizes: list[int], calls: int, live: int) -> int:
    from oms.config import Settings
    from oms.ops import summary as ops
    from oms.stock import inventory
    from oms.wiring import Services

    s = await Services.start(Settings.from_env(), prepare=True)
    results = []
    try:
        async with s.pool.acquire() as conn:
            stores = [r["id"] for r in await conn.fetch("select id from nodes where kind = 'store' and active order by id")]
            warehouse = await conn.fetchval("select id from nodes where kind = 'warehouse' order by id limit 1")
            skus = [r["sku"] for r in await conn.fetch("select sku from skus order by sku")]
            await conn.execute(  # deep stock everywhere: the oversell check has reservations to read, no violation
                "insert into stock (node_id, sku, on_hand) select n, k, 1000000 from unnest($1::text[]) n, unnest($2::text[]) k"
                " on conflict (node_id, sku) do update set on_hand = excluded.on_hand", stores + [warehouse], skus)
        now = datetime.now(timezone.utc)
        since = ops.day_start(now)
        minute0 = now.replace(second=0, microsecond=0) - ops.timedelta(minutes=ops.WINDOW_MINUTES - 1)
        print(f"demo city: {len(stores)} stores, 1 warehouse, {len(skus)} SKUs; orders over the 24 h before {now:%H:%M} UTC")
        async with s.pool.acquire() as conn:
            await fill(conn, 0, live, now, stores, warehouse, skus, live=True)
        have = 0
        for size in sizes:
            t0 = time.perf_counter()
            async with s.pool.acquire() as conn:
                await fill(conn, have, size, now, stores, warehouse, skus)
                await inventory.rebuild(conn, s.redis)
            filled = time.perf_counter() - t0
            have = size
            summary_ms = await timed(lambda: ops.build_summary(s, now=now), calls)

            async def scan() -> None:
                async with s.pool.acquire() as conn:
                    for q, param in SCAN:
                        await conn.fetch(q, *({"since": (since,), "minute0": (minute0,)}.get(param, ())))

            scan_ms = await timed(scan, max(3, calls // 2))
            got = await ops.build_summary(s, now=now)
            print(f"{size:>9,} orders (filled in {filled:5.1f} s): summary {summary_ms:7.1f} ms median of {calls}"
                  f"  | the same figures by scanning the day: {scan_ms:8.1f} ms"
                  f"  [today {got.totals.orders:,} orders, {got.backorders.open:,} backordered, "
                  f"{got.open_picks:,} open picks, {got.at_risk_total:,} at risk]")
            results.append((size, summary_ms))
    finally:
        await s.close()
    (small, t_small), (big, t_big) = results[0], results[-1]
    ok = t_big < 3 * t_small
    print(f"{big:,} orders: {t_big:.1f} ms {'<' if ok else '>='} 3 x {small:,} orders ({3 * t_small:.1f} ms): "
          f"{'flat' if ok else 'NOT flat'}")
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,1000000", help="cumulative order counts, ascending")
    ap.add_argument("--calls", type=int, default=7)
    ap.add_argument("--live", type=int, default=3000, help="open orders (to pick, picked) at every size")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    own = "OMS_DATA_DIR" not in os.environ and not (os.environ.get("OMS_DATABASE_URL") or os.environ.get("OMS_REDIS_URL"))
    os.environ.setdefault("OMS_DATA_DIR", str(ROOT / ".oms-bench"))
    oms = [str(BIN / "oms")]
    if own:
        subprocess.run(oms + ["stop-embedded"], check=True, capture_output=True)
        shutil.rmtree(os.environ["OMS_DATA_DIR"], ignore_errors=True)
    subprocess.run(oms + ["seed-demo"], check=True, capture_output=True)
    try:
        return asyncio.run(run(sizes, args.calls, args.live))
    finally:
        if own:
            subprocess.run(oms + ["stop-embedded"], check=True, capture_output=True)


if __name__ == "__main__":
    sys.exit(main())
