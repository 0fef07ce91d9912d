"""Intake without HTTP: IntakeService.submit called by concurrent tasks in one process.

    .venv/bin/python loadtests/intake_core.py [--orders 10000] [--concurrency 64]

Prints orders/s and CPU per order of this process, PostgreSQL and Redis: what an order costs
once the HTTP edge is taken away (compare with loadtests/ingest.py's split). Empties and seeds
its own embedded servers under .oms-bench, like ingest.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import BIN, ROOT, build_bodies, cpu_seconds, cpu_split  # noqa: E402


async def run(n: int, concurrency: int) -> None:
    import msgspec

    from oms.config import Settings
    from oms.orders.model import NormalizedOrder
    from oms.wiring import Services

    s = await Services.start(Settings.from_env(), prepare=True)
    try:
        async with s.pool.acquire() as c:
            await c.execute("update stock set on_hand = 100000")
            skus = [r["sku"] for r in await c.fetch("select sku from skus order by sku")]
            from oms.stock import inventory

            await inventory.rebuild(c, s.redis)
        raw = build_bodies(n + 2000, 7, skus, skus[0], f"core{time.time_ns()}")
        orders = [msgspec.json.decode(b, type=NormalizedOrder) for b in raw]

        async def drive(batch):
            it = iter(batch)

            async def worker():
                for o in it:
                    await s.intake.submit(o, cause="bench")

            await asyncio.gather(*(worker() for _ in range(concurrency)))

        await drive(orders[:2000])  # warm-up: caches, connections
        before, c0, t0 = cpu_seconds(), time.process_time(), time.perf_counter()
        await drive(orders[2000:])
        wall, cpu, after = time.perf_counter() - t0, time.process_time() - c0, cpu_seconds()
        print(f"{n} orders with {concurrency} concurrent tasks: {n / wall:,.0f} orders/s in one process")
        split = cpu_split(before, after, -1)  # this process is the "load generator"
        print(f"CPU per order (ms): intake process {cpu / n * 1000:.3f}, "
              f"postgres {split['postgres'] / n * 1000:.3f}, redis {split['redis'] / n * 1000:.3f}; "
              f"other work on the box {split['other work'] / n * 1000:.3f}")
    finally:
        await s.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--orders", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()
    own = "OMS_DATA_DIR" not in os.environ and not (os.environ.get("OMS_DATABASE_URL") or os.environ.get("OMS_REDIS_URL"))
    os.environ.setdefault("OMS_DATA_DIR", str(ROOT / ".oms-bench"))
    oms = [str(BIN / "oms")]
    if own:
        subprocess.run(oms + ["stop-embedded"], check=True, capture_output=True)
        shutil.rmtree(os.environ["OMS_DATA_DIR"], ignore_errors=True)
    subprocess.run(oms + ["seed-demo"], check=True, capture_output=True)
    try:
        import uvloop

        uvloop.run(run(args.orders, args.concurrency))
    finally:
        if own:
            subprocess.run(oms + ["stop-embedded"], check=True, capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
