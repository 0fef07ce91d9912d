"""What one reconciler pass costs with many open reservations (a sale day's backlog at the
central warehouse, waiting for picking).

    .venv/bin/python loadtests/reconcile_bench.py [--open 10000 200000] [--recent 200]

Fills N open reservations at one warehouse, made over the last two hours (and `--recent` in
the last seconds), straight through the reserve script and SQL (no HTTP), then times reconciler
passes: fast and full ones (a version without them: its one kind of pass). Per pass: wall time,
the reconciler's CPU, reservation rows PostgreSQL returned and records read from Redis (as the
pass reports them; a version without the counts: what it reads by construction), Redis and
PostgreSQL CPU, the longest Redis command (SLOWLOG) and the worst PING a prober thread saw
meanwhile (what every reservation waited behind). Empties and uses its own embedded servers
under .oms-bench-reconcile. The version before: run the same file with PYTHONPATH pointing at
a checkout of it.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import BIN, ROOT, _own_servers, cpu_seconds  # noqa: E402

NODE, SKU = "bench-dc", "BENCH-SKU"


def _fid(age_s: float) -> str:
    from oms.infra.ids import _b36

    return f"f{_b36(int((time.time() - age_s) * 1000), 9)}{_b36(secrets.randbits(50), 10)}"


async def fill(s, n: int, recent: int) -> None:
    """n open one-unit reservations made over the last two hours, `recent` in the last seconds."""
    from oms.stock.inventory import Inventory

    inv = Inventory(s.redis, owner="w-bench")
    async with s.pool.acquire() as c:
        await c.execute("insert into nodes (id, kind, name, lat, lng, h3_cell) values ($1, 'warehouse', $1, 31.2, 121.4, '')"
                        " on conflict do nothing", NODE)
        await c.execute("insert into skus (sku) values ($1) on conflict do nothing", SKU)
        new = await c.fetchval("insert into stock (node_id, sku, on_hand) values ($1, $2, 10000000)"
                               " on conflict do nothing returning on_hand", NODE, SKU)
    if new:
        await s.fence.rebucket(NODE)  # installs the node (and its marker) from PostgreSQL
    ages = [30 + (7200 - 30) * i / max(n, 1) for i in range(n)] + [1.0 + i / max(recent, 1) for i in range(recent)]
    for i in range(0, len(ages), 10_000):
        fids = [_fid(a) for a in ages[i:i + 10_000]]
        oids = ["o" + f[1:] for f in fids]
        async with s.pool.acquire() as c, c.transaction():
            await c.execute(
                "with k as (insert into order_keys (id, channel, external_id) select o, 'manual', o from unnest($1::text[]) o)"
                " insert into orders (id, channel, external_id, status, channel_status, delivery_mode, dest_lat, dest_lng)"
                " select o, 'manual', o, 'allocated', 'paid', 'ship', 0, 0 from unnest($1::text[]) o", oids)
            await c.execute("insert into fulfillments (id, order_id, node_id, status)"
                            " select f, o, $3, 'allocated' from unnest($1::text[], $2::text[]) t(f, o)", fids, oids, NODE)
            await c.execute("insert into reservations (fulfillment_id, sku, order_id, node_id, quantity, state)"
                            " select f, $3, o, $4, 1, 'reserved' from unnest($1::text[], $2::text[]) t(f, o)",
                            fids, oids, SKU, NODE)
        for j in range(0, len(fids), 1000):
            await asyncio.gather(*(inv._reserve_at(NODE, f, ["w-bench", f, SKU, 1]) for f in fids[j:j + 1000]))
    async with s.pool.acquire() as c:
        await c.execute("analyze reservations")


class Pinger(threading.Thread):
    """PINGs Redis in a loop from its own thread and connection; keeps the worst round trip."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        import redis

        self.r = redis.Redis.from_url(url)
        self.worst = 0.0
        self.running = True

    def run(self) -> None:
        while self.running:
            t = time.perf_counter()
            self.r.ping()
            self.worst = max(self.worst, time.perf_counter() - t)
            time.sleep(0.0005)


async def one_pass(s, rec, full: bool | None, pinger: Pinger, n_open: int) -> dict:
    await s.redis.slowlog_reset()
    pg_pid, redis_pid = _own_servers(None)
    before = cpu_seconds()
    pinger.worst = 0.0
    t0, c0 = time.perf_counter(), time.thread_time()
    report = await (rec.reconcile() if full is None else rec.reconcile(full=full))
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    after = cpu_seconds()
    worst_ping = pinger.worst
    slow = await s.redis.slowlog_get(100_000)
    longest = max(slow, key=lambda e: e["duration"]) if slow else None

    def spent(pid: int, name: str) -> float:
        # PostgreSQL: its backends (children of the postmaster); Redis: its main process only (a
        # child is an AOF rewrite or a snapshot, not the pass)
        return sum(t - before.get(p, (nm, pp, 0.0))[2] for p, (nm, pp, t) in after.items()
                   if nm == name and (p == pid or (name == "postgres" and pp == pid)))

    return {
        "wall_ms": wall * 1000, "cpu_ms": cpu * 1000,
        "pg_rows": getattr(report, "pg_rows_read", n_open),  # before: every open reservation, each pass
        "records": getattr(report, "records_read", 2 * n_open),  # before: the index, then the Lua walk
        "pg_cpu_ms": spent(pg_pid, "postgres") * 1000, "redis_cpu_ms": spent(redis_pid, "redis-server") * 1000,
        "longest_us": longest["duration"] if longest else 0,
        "longest_cmd": (longest["command"].decode(errors="replace")[:24] if longest else ""),
        "ping_ms": worst_ping * 1000,
    }


async def run(sizes: list[int], recent: int, passes: int) -> None:
    from oms.config import Settings
    from oms.infra import embedded
    from oms.stock.reconciler import Reconciler
    from oms.wiring import Services

    settings = Settings.from_env()
    _, redis_url = embedded.resolve_urls(settings.database_url, settings.redis_url, settings.data_dir)
    s = await Services.start(settings, prepare=True)
    has_full = "full" in inspect.signature(Reconciler.reconcile).parameters
    version = "recent index + full pass" if has_full else "before (every record, every pass)"
    pinger = Pinger(redis_url)
    pinger.start()
    await s.redis.config_set("slowlog-log-slower-than", 0)
    await s.redis.config_set("slowlog-max-len", 100_000)
    filled = 0
    try:
        print(f"reconciler: {version}")
        print(f"{'open':>8} {'pass':<5} {'wall ms':>8} {'recon CPU ms':>12} {'PG rows':>8} {'Redis recs':>10} "
              f"{'PG CPU ms':>9} {'Redis CPU ms':>12} {'longest Redis cmd':>26} {'worst PING ms':>13}")
        for n in sizes:
            t = time.perf_counter()
            await fill(s, n - filled, recent)
            filled = n
            print(f"(filled {n:,} open reservations in {time.perf_counter() - t:.0f} s)", file=sys.stderr)
            rec = Reconciler(s.pool, s.redis, s.inventory, s.fence)
            await (rec.reconcile(full=True) if has_full else rec.reconcile())  # warm: connections, scripts
            if has_full:
                await rec.reconcile(full=False)  # the first fast pass trims the fill's ids off the recent index
            kinds = [("fast", False), ("full", True)] if has_full else [("every", None)]
            for name, full in kinds:
                for _ in range(passes):
                    f = await one_pass(s, rec, full, pinger, n + recent)
                    print(f"{n:>8,} {name:<5} {f['wall_ms']:>8.1f} {f['cpu_ms']:>12.1f} {f['pg_rows']:>8,} "
                          f"{f['records']:>10,} {f['pg_cpu_ms']:>9.0f} {f['redis_cpu_ms']:>12.0f} "
                          f"{f['longest_us'] / 1000:>8.1f} ms {f['longest_cmd']:<14} {f['ping_ms']:>10.1f}")
    finally:
        pinger.running = False
        await s.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--open", type=int, nargs="+", default=[10_000, 200_000])
    ap.add_argument("--recent", type=int, default=200)
    ap.add_argument("--passes", type=int, default=3)
    args = ap.parse_args()
    os.environ["OMS_DATA_DIR"] = str(ROOT / ".oms-bench-reconcile")
    oms = [str(BIN / "oms")]
    subprocess.run(oms + ["stop-embedded"], check=True, capture_output=True)
    shutil.rmtree(os.environ["OMS_DATA_DIR"], ignore_errors=True)
    try:
        asyncio.run(run(sorted(args.open), args.recent, args.passes))
    finally:
        subprocess.run(oms + ["stop-embedded"], check=True, capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
