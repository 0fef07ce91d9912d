"""The OMS against two baselines on the same stack, back to back, with the same load driver.

    .venv/bin/python loadtests/compare.py [--orders 10000] [--concurrency 64] [--workers 2]
                                          [--only oms-mixed,oms-hot,oms-sellout,floor,record-floor,rowlock-hot]

Phases, each with the same number of orders over the same connections from the driver of
loadtests/ingest.py, each server with the same number of workers:

  oms-mixed    the OMS, `oms serve`: 30 % one-hour / 70 % parcel orders over Shanghai, 1–2 lines
               (as ingest.py: 5 % of lines are a SKU with 200 units at the warehouse)
  oms-hot      the OMS again: every order one unit of one SKU held at the warehouse only, with
               stock for --hot-stock of the orders (default 90 %): most succeed, then it sells out
  oms-sellout  the OMS again: every order one unit of a SKU with 200 units — a stampede
  floor        loadtests/floor_app.py, the stack's floor: the oms-mixed bodies, byte for byte,
               one Lua take at one node and a COPY per event-loop turn
  record-floor loadtests/record_app.py, the floor writing DESIGN.md's record with the OMS's own
               rows and group commit (order, lines, fulfilment, reservations, history; the
               outbox and rollup triggers, the foreign keys): the oms-mixed bodies. What the OMS
               would do if routing, the claim and its answer cost nothing: a bound on the first
               ratio (its ratio to the floor is printed as "record floor / floor")
  rowlock-hot  loadtests/rowlock_app.py, the classic design (SELECT … FOR UPDATE per order in
               PostgreSQL): the oms-hot bodies, byte for byte, with the same stock

Each server is warmed up (--warmup mixed orders, not measured) and stopped before the next
starts; all of them use one embedded PostgreSQL and Redis under .oms-bench (emptied first),
the baselines each in a database of their own. Every phase is checked for oversell: the OMS by
its (node, SKU) reservations against on-hand in PostgreSQL and Redis in step; the baselines by
units sold (allocated order lines in PostgreSQL) against the stock they were given. Exit status
1 when anything oversold or a store of stock disagrees with PostgreSQL; the speed targets are
printed, not enforced (the machine is shared: only ratios within one run mean anything).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import (BIN, ROOT, Load, bench_env, build_bodies, check_oms, drive, free_port,  # noqa: E402
                    prepare_oms, stop_server, wait_for_port)

PHASES = ("oms-mixed", "oms-hot", "oms-sellout", "floor", "record-floor", "rowlock-hot")
NODE = "SH-WH-JIADING"  # the demo warehouse: the OMS's hot SKUs live there, the baselines' one node
TOKEN = "bench-token"
MIXED_HOT, HOT, SELLOUT = "SKU-HOT-1", "SKU-HOT-2", "SKU-HOT-3"
DEEP = 100_000
CHANNELS = ["tmall", "jd", "douyin", "miniprogram"]


def hot_bodies(n: int, seed: int, sku: str, prefix: str) -> list[bytes]:
    """Parcel orders of one unit of `sku`, to points over Shanghai."""
    rnd = random.Random(seed)
    return [json.dumps({"channel": rnd.choice(CHANNELS), "external_id": f"{prefix}-{i}", "delivery_mode": "ship",
                        "destination": {"lat": 31.23 + rnd.uniform(-0.12, 0.12),
                                        "lng": 121.47 + rnd.uniform(-0.15, 0.15), "address": "上海市****"},
                        "lines": [{"sku": sku, "quantity": 1, "unit_price": 9900}]}).encode()
            for i in range(n)]


@dataclass
class Row:
    phase: str
    server: str
    load: Load
    sold: str = ""  # "<units sold>/<stock>" of the phase's hot SKU
    oversold: int = 0
    in_step: bool = True
    notes: list[str] = field(default_factory=list)


def _with_db(url: str, dbname: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + dbname))


async def _fresh_database(pg_url: str, dbname: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(f'drop database if exists "{dbname}" with (force)')
        await conn.execute(f'create database "{dbname}"')
    finally:
        await conn.close()
    return _with_db(pg_url, dbname)


def checkpoint(pg_url: str) -> None:
    """Write the previous phase's dirty pages now, not during the next measurement."""
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute("checkpoint")
        finally:
            await conn.close()

    asyncio.run(run())


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rows: list[Row] = []

    def measure(self, phase: str, server: str, port: int, pid: int, bodies: list[bytes], pg_url: str) -> Load:
        checkpoint(pg_url)
        load = drive(port, TOKEN, bodies, self.args.concurrency, 1, pid)
        print(f"  {phase}: {load.rate:,.0f} orders/s, p99 {load.pct(0.99):.1f} ms", flush=True)
        return load

    def warm(self, port: int, bodies: list[bytes]) -> None:
        if bodies:
            drive(port, TOKEN, bodies, min(self.args.concurrency, 32))

    def start(self, cmd: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, int]:
        """Start a server on a free port; its stderr goes to a file (a pipe nobody reads could fill)."""
        port = free_port()
        log = tempfile.TemporaryFile()
        server = subprocess.Popen(cmd + ["--port", str(port), "--workers", str(self.args.workers)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_for_port(port)
            if server.poll() is not None:
                raise RuntimeError("exited")
        except RuntimeError as exc:
            stop_server(server)
            log.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} did not start ({exc}): {log.read().decode()[-2000:]}") from None
        return server, port


def one_round(args: argparse.Namespace, only: list[str], baselines_first: bool) -> list[Row]:
    """Empty and seed the servers, then run the phases asked for; the OMS's first unless told."""
    hot_stock = max(1, int(args.orders * args.hot_stock))
    bench = Bench(args)
    env, own = bench_env()
    env["OMS_ADMIN_TOKEN"] = TOKEN
    if args.no_dispatcher:
        env["OMS_DISPATCHER"] = "0"
    print(f"seeding (embedded servers {'emptied, ' if own else ''}demo city, deep stock) ...", flush=True)
    skus = prepare_oms(env, own, False, {MIXED_HOT: 200, HOT: hot_stock, SELLOUT: args.sellout_stock})
    from oms.infra import embedded  # the same servers the OMS uses (started by prepare_oms)

    pg_url, redis_url = embedded.resolve_urls(env.get("OMS_DATABASE_URL"), env.get("OMS_REDIS_URL"),
                                              Path(env["OMS_DATA_DIR"]).resolve())
    prefix = f"c{int(time.time())}"
    warm = build_bodies(args.warmup, 1, skus, MIXED_HOT, prefix + "w")
    mixed = build_bodies(args.orders, 2, skus, MIXED_HOT, prefix + "m")
    hot = hot_bodies(args.orders, 3, HOT, prefix + "h")
    sellout = hot_bodies(args.orders, 4, SELLOUT, prefix + "s")
    baseline_stock = {**{sku: DEEP for sku in skus}, MIXED_HOT: 200, HOT: hot_stock}

    def run_oms() -> None:
        """The OMS: one server for its three phases."""
        oms_phases = [p for p in ("oms-mixed", "oms-hot", "oms-sellout") if p in only]
        if not oms_phases:
            return
        print(f"oms serve --workers {args.workers} ...", flush=True)
        server, port = bench.start([str(BIN / "oms"), "serve", "--keep-embedded"], env)
        try:
            bench.warm(port, warm)
            plan = {"oms-mixed": (mixed, "m", MIXED_HOT, 200), "oms-hot": (hot, "h", HOT, hot_stock),
                    "oms-sellout": (sellout, "s", SELLOUT, args.sellout_stock)}
            for phase in oms_phases:
                bodies, tag, sku, units = plan[phase]
                load = bench.measure(phase, "oms", port, server.pid, bodies, pg_url)
                out = check_oms(env, prefix + tag, [sku])
                sold = out["hot_reserved"][sku]
                row = Row(phase, "oms", load, f"{sold}/{units}", out["oversold_pairs"] + (sold > units), out["in_step"])
                row.notes.append("statuses " + json.dumps(out["statuses"], sort_keys=True))
                if phase == "oms-sellout" and sold != units:
                    row.notes.append(f"expected all {units} units sold")
                bench.rows.append(row)
        finally:
            stop_server(server)

    def run_baselines() -> None:
        """The floors on the mixed bodies, the row-lock design on the hot ones; each its own database."""
        import floor_app
        import record_app
        import rowlock_app

        for phase, app, bodies, tag in (("floor", "floor", mixed, "m"), ("record-floor", "record", mixed, "m"),
                                        ("rowlock-hot", "rowlock", hot, "h")):
            if phase not in only:
                continue
            db_url = asyncio.run(_fresh_database(pg_url, f"{app}_bench"))
            benv = dict(env, BASELINE_DATABASE_URL=db_url, BASELINE_REDIS_URL=redis_url, BASELINE_TOKEN=TOKEN,
                        BASELINE_NODE=NODE)
            if app == "record" and args.bare_record:
                benv["BASELINE_RECORD_BARE"] = "1"
            if app == "rowlock":
                asyncio.run(rowlock_app.load_stock(db_url, NODE, baseline_stock))
            else:
                load = floor_app.load_stock if app == "floor" else record_app.load_stock
                asyncio.run(load(db_url, redis_url, NODE, baseline_stock))
            print(f"{app}_app.py --workers {args.workers} ...", flush=True)
            server, port = bench.start([sys.executable, str(ROOT / "loadtests" / f"{app}_app.py")], benv)
            try:
                bench.warm(port, warm)
                load = bench.measure(phase, app, port, server.pid, bodies, pg_url)
            finally:
                stop_server(server)
            checks = {"floor": floor_app.check, "record": record_app.check}
            if app in checks:
                out = asyncio.run(checks[app](db_url, redis_url, NODE, baseline_stock, prefix + tag))
            else:
                out = asyncio.run(rowlock_app.check(db_url, NODE, baseline_stock, prefix + tag))
            sku = HOT if phase == "rowlock-hot" else MIXED_HOT
            row = Row(phase, app, load, f"{out['sold'].get(sku, 0)}/{baseline_stock[sku]}", len(out["oversold"]),
                      out["in_step"])
            row.notes.append("statuses " + json.dumps(out["statuses"], sort_keys=True))
            bench.rows.append(row)

    try:
        for part in ((run_baselines, run_oms) if baselines_first else (run_oms, run_baselines)):
            part()
    finally:
        if own:
            subprocess.run([str(BIN / "oms"), "stop-embedded"], env=env, capture_output=True)
    order = {p: i for i, p in enumerate(PHASES)}
    return sorted(bench.rows, key=lambda r: order[r.phase])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, default=10000, help="orders per phase")
    ap.add_argument("--concurrency", type=int, default=64, help="connections")
    ap.add_argument("--workers", type=int, default=2, help="worker processes of every server")
    ap.add_argument("--warmup", type=int, default=2000, help="mixed orders per server before measuring")
    ap.add_argument("--hot-stock", type=float, default=0.9, help="hot SKU units, as a share of --orders")
    ap.add_argument("--sellout-stock", type=int, default=200, help="units of the oms-sellout SKU")
    ap.add_argument("--only", default=",".join(PHASES),
                    help="comma-separated phases to run (default all): " + ", ".join(PHASES))
    ap.add_argument("--no-dispatcher", action="store_true",
                    help="serve the OMS without its outbox dispatcher (OMS_DISPATCHER=0), to see its share; "
                         "a real deployment runs it, so the default measures with it")
    ap.add_argument("--bare-record", action="store_true",
                    help="the record floor with every trigger and foreign-key check off (BASELINE_RECORD_BARE=1): "
                         "how much of its cost they are; for measuring only")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat everything from empty servers, the baselines first in every second round; "
                         "medians at the end (other work on a shared machine drifts within a run)")
    args = ap.parse_args()
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    if unknown := set(only) - set(PHASES):
        ap.error(f"unknown phase(s) {', '.join(sorted(unknown))}; choose from {', '.join(PHASES)}")
    status = 0
    rounds: list[list[Row]] = []
    for n in range(args.rounds):
        if args.rounds > 1:
            print(f"\n=== round {n + 1} of {args.rounds}{' (baselines first)' if n % 2 else ''} ===", flush=True)
        rows = one_round(args, only, baselines_first=n % 2 == 1)
        status |= report(rows, args)
        rounds.append(rows)
    if args.rounds > 1:
        summarize(rounds)
    return status


def _ratios(rows: list[Row]) -> dict[str, float]:
    by = {r.phase: r.load.rate for r in rows}
    out = {}
    if "oms-mixed" in by and "floor" in by:
        out["OMS mixed / floor"] = by["oms-mixed"] / by["floor"]
    if "oms-hot" in by and "rowlock-hot" in by:
        out["OMS hot / row-lock"] = by["oms-hot"] / by["rowlock-hot"]
    if "record-floor" in by and "floor" in by:
        out["record floor / floor"] = by["record-floor"] / by["floor"]
    if "record-floor" in by and "rowlock-hot" in by:
        out["record floor / row-lock"] = by["record-floor"] / by["rowlock-hot"]
    return out


def summarize(rounds: list[list[Row]]) -> None:
    print(f"\n=== {len(rounds)} rounds: median (each round) ===")
    for phase in PHASES:
        runs = [r for rows in rounds for r in rows if r.phase == phase]
        if runs:
            rates = [r.load.rate for r in runs]
            p99s = [r.load.pct(0.99) for r in runs]
            print(f"{phase:<12} {statistics.median(rates):>9,.0f} orders/s ({', '.join(f'{x:,.0f}' for x in rates)}); "
                  f"p99 {statistics.median(p99s):.1f} ms ({', '.join(f'{x:.1f}' for x in p99s)})")
    per_round = [_ratios(rows) for rows in rounds]
    for name in per_round[0]:
        values = [r[name] for r in per_round]
        print(f"{name}: median {statistics.median(values):.2f} ({', '.join(f'{v:.2f}' for v in values)})")


def report(rows: list[Row], args: argparse.Namespace) -> int:
    print()
    print(f"{args.orders} orders per phase, {args.concurrency} connections, {args.workers} workers per server, "
          f"1 load process, {os.cpu_count()} cores (shared: compare within this run)"
          + ("; the OMS without its dispatcher" if args.no_dispatcher else ""))
    head = f"{'phase':<12} {'server':<8} {'orders/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'CPU ms/order':>12} {'disp.':>5} " \
           f"{'pg':>5} {'redis':>5} {'load':>5} {'box':>5}  " \
           f"{'HTTP':<12} {'hot SKU sold':>13} {'oversold':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        cpu = r.load.cpu["oms workers"] / len(r.load.lat) * 1000  # the server's worker processes
        disp = r.load.cpu.get("oms dispatcher", 0.0) / len(r.load.lat) * 1000
        pg = r.load.cpu["postgres"] / len(r.load.lat) * 1000
        redis = r.load.cpu["redis"] / len(r.load.lat) * 1000
        load = r.load.cpu["load generator"] / len(r.load.lat) * 1000
        box = r.load.cpu["other work"] / len(r.load.lat) * 1000
        codes = " ".join(f"{k}×{v}" for k, v in sorted(r.load.codes.items()))
        print(f"{r.phase:<12} {r.server:<8} {r.load.rate:>9,.0f} {r.load.pct(0.5):>7.1f} {r.load.pct(0.99):>7.1f} "
              f"{cpu:>12.3f} {disp:>5.3f} {pg:>5.3f} {redis:>5.3f} {load:>5.3f} {box:>5.3f}  {codes:<12} {r.sold:>13} {r.oversold:>8}")
    print("CPU ms/order: the server's worker processes only; disp.: the OMS's outbox dispatcher (a child of\n"
          "`oms serve`); pg, redis: the bench's own servers; load: the load generator; box: every\n"
          "other process on the box (well above ~0.05: other work competed during that phase);\n"
          "hot SKU sold: units of the phase's scarce SKU sold / its stock, warm-up included;\n"
          "oversold: (node, SKU) pairs sold beyond their stock")
    print()
    for r in rows:
        print(f"{r.phase}: {'; '.join(r.notes)}" + ("" if r.in_step else "; STOCK STORE NOT IN STEP WITH POSTGRESQL"))
    by = {r.phase: r for r in rows}
    print()
    # the record floor bounds the OMS: its ratios are what the OMS's would be with routing, the
    # claim and the answer free, so a bound under the target says the target is out of reach
    targets = {"OMS mixed / floor": 0.8, "OMS hot / row-lock": 6.0, "record floor / floor": 0.8,
               "record floor / row-lock": 6.0}
    for name, ratio in _ratios(rows).items():
        what = "target" if name.startswith("OMS") else "the OMS's bound against its target"
        print(f"{name + ':':<25} {ratio:.2f}  ({what} ≥ {targets[name]:g}: "
              f"{'met' if ratio >= targets[name] else 'NOT met'})")
    if "oms-mixed" in by:
        p99 = by["oms-mixed"].load.pct(0.99)
        print(f"OMS mixed p99:        {p99:.1f} ms at {args.concurrency} connections "
              f"(target < 100 ms: {'met' if p99 < 100 else 'NOT met'})")
    bad = [r.phase for r in rows if r.oversold or not r.in_step]
    errors = [r.phase for r in rows if set(r.load.codes) - {200, 201}]
    print(f"oversold: {'none' if not bad else 'IN ' + ', '.join(bad)}"
          + (f"; non-2xx answers in {', '.join(errors)}" if errors else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
