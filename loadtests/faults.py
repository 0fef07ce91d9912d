"""Fault injection under steady load: in-doubt commits, Redis flushed or restarted empty, a worker
killed, PostgreSQL stopped — against `oms serve --workers 2`, then a table of what held.

    .venv/bin/python loadtests/faults.py [--clients 32] [--seconds 8] [--only flushall,kill-worker]

Runs its own embedded PostgreSQL and Redis under .oms-faults (emptied first), seeds the demo city
with deep stock plus one hot SKU (200 units at the warehouse), and puts a PostgreSQL wire proxy
(tests/faultkit.py) between the service and PostgreSQL to cut connections at COMMIT. Each
scenario: `--clients` shoppers post orders for `--seconds`, retrying 503s and broken connections
as a channel would; the fault lands after 2 s. Then, from PostgreSQL and Redis:
  no oversell        no (node, SKU) with reserved + committed > on-hand in PostgreSQL
  in step            Redis holds what PostgreSQL implies (within 30 s, no restart, no rebuild)
  no false backorder no parcel order for deep-stock SKUs was backordered
  once               every order that got a 2xx exists exactly once
Traffic only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from faultkit import PgProxy, Serve  # noqa: E402
from oms.config import Settings  # noqa: E402
from oms.infra import embedded  # noqa: E402
from oms.infra.db import Q  # noqa: E402
from oms.stock import inventory  # noqa: E402
from oms.wiring import Services  # noqa: E402

BIN = Path(sys.executable).parent
TOKEN = "faults-token"
HOT = "SKU-HOT-1"
WAREHOUSE = "SH-WH-JIADING"
SCENARIOS = ["baseline", "in-doubt-commit", "flushall", "redis-empty-restart", "kill-worker", "postgres-stop"]


class Load:
    """Shoppers posting orders until stopped; each order retried until it is in (or 30 s)."""

    def __init__(self, url: str, skus: list[str], prefix: str, clients: int) -> None:
        self.url, self.skus, self.prefix, self.clients = url, skus, prefix, clients
        self.requests: list[tuple[float, int]] = []  # (time answered, status; 0 = connection failed)
        self.orders: dict[str, tuple[str, float]] = {}  # external id -> (final status, time)
        self.failed_orders = 0
        self.stop = asyncio.Event()
        self._n = 0

    def body(self) -> dict:
        self._n += 1
        rnd = random.Random(f"{self.prefix}-{self._n}")
        ship = rnd.random() < 0.8
        return {"channel": "manual", "external_id": f"{self.prefix}-{self._n}",
                "delivery_mode": "ship" if ship else "delivery",
                "destination": {"lat": 31.23 + rnd.uniform(-0.1, 0.1), "lng": 121.47 + rnd.uniform(-0.1, 0.1),
                                "address": "上海市****"},
                "lines": [{"sku": HOT if rnd.random() < 0.05 else rnd.choice(self.skus), "quantity": 1,
                           "unit_price": 9900}]}

    async def shopper(self, client: httpx.AsyncClient) -> None:
        while not self.stop.is_set():
            body = self.body()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    r = await client.post(self.url + "/orders", json=body)
                    status = r.status_code
                except httpx.HTTPError:
                    status = 0
                self.requests.append((time.monotonic(), status))
                if status in (200, 201):
                    self.orders[body["external_id"]] = (r.json()["status"], time.monotonic())
                    break
                if status not in (0, 503):
                    break
                await asyncio.sleep(0.2)
            else:
                self.failed_orders += 1

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=self.clients, max_keepalive_connections=self.clients)
        async with httpx.AsyncClient(timeout=30, limits=limits, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            await asyncio.gather(*(self.shopper(c) for _ in range(self.clients)))


class Rig:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.env = {**os.environ, "OMS_DATA_DIR": str(data_dir), "OMS_ADMIN_TOKEN": TOKEN}
        for k in ("OMS_DATABASE_URL", "OMS_REDIS_URL"):
            self.env.pop(k, None)

    def oms(self, *args: str) -> None:
        subprocess.run([str(BIN / "oms"), *args], env=self.env, check=True, capture_output=True)

    async def start(self) -> None:
        self.oms("stop-embedded")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.pg_url, self.redis_url = embedded.resolve_urls(None, None, self.data_dir)
        self.env.update(OMS_DATABASE_URL=self.pg_url, OMS_REDIS_URL=self.redis_url)
        self.oms("migrate")
        self.oms("seed-demo")
        self.settings = Settings(database_url=self.pg_url, redis_url=self.redis_url, data_dir=self.data_dir,
                                 admin_token=TOKEN)
        self.svc = await Services.start(self.settings, prepare=False)
        async with self.svc.pool.acquire() as c:
            await c.execute("update stock set on_hand = 100000")
            await c.execute(f"insert into skus (sku, name) values ('{HOT}', 'hot') on conflict do nothing")
            await c.execute(f"delete from stock where sku = '{HOT}'")
            await c.execute(f"insert into stock (node_id, sku, on_hand) values ('{WAREHOUSE}', '{HOT}', 200)")
            await inventory.rebuild(c, self.svc.redis)
            self.skus = [r["sku"] for r in await c.fetch(f"select sku from skus where sku <> '{HOT}' order by sku")]
        self.proxy = await PgProxy(self.pg_url, only_app="oms-writer").start()
        self.server = Serve({"OMS_DATABASE_URL": self.proxy.url, "OMS_REDIS_URL": self.redis_url,
                             "OMS_ADMIN_TOKEN": TOKEN, "OMS_DATA_DIR": str(self.data_dir),
                             "OMS_RECONCILE_INTERVAL_S": "1"}, self.data_dir / "serve.log", workers=2)
        await self.server.wait_ready()

    async def stop(self) -> None:
        self.server.stop()
        await self.proxy.close()
        await self.svc.close()
        self.oms("stop-embedded")

    # ---- the faults --------------------------------------------------------------------------
    async def in_doubt_commit(self) -> float:
        for _ in range(10):  # the batch and its one-by-one retry lose their replies after COMMIT
            self.proxy.arm("after_commit", times=2)
            await asyncio.sleep(0.3)
        self.proxy.mode = None
        return time.monotonic()

    async def flushall(self) -> float:
        await self.svc.redis.flushall()
        at = time.monotonic()
        async with httpx.AsyncClient(timeout=30) as c:  # a stock recount in the window
            r = await c.put(f"{self.server.url}/inventory/{WAREHOUSE}/{HOT}", json={"on_hand": 200},
                            headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code in (200, 503), r.text
        return at

    async def redis_empty_restart(self) -> float:
        sock = self.data_dir / "redis" / "redis.sock"
        import redis

        try:
            redis.Redis(unix_socket_path=str(sock)).shutdown(nosave=True)
        except redis.ConnectionError:
            pass
        for p in (self.data_dir / "redis").iterdir():
            if p.name.startswith("appendonly") or p.suffix == ".rdb":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        await asyncio.sleep(0.5)
        embedded.redis_url(self.data_dir)
        return time.monotonic()

    async def kill_worker(self) -> float:
        os.kill(self.server.workers()[0], signal.SIGKILL)
        return time.monotonic()

    async def postgres_stop(self) -> float:
        import pgserver

        pgdata = self.data_dir / "pg"
        pgserver.pg_ctl(["-w", "stop", "-m", "immediate"], pgdata=pgdata, user=embedded._pg_user())
        await asyncio.sleep(3)
        pgserver.postgres_server.PostgresServer._instances.pop(pgdata.resolve(), None)
        await asyncio.to_thread(embedded.postgres_url, self.data_dir)
        await self.svc.pool.expire_connections()
        return time.monotonic()

    # ---- the checks --------------------------------------------------------------------------
    async def agree(self) -> bool:
        async with self.svc.pool.acquire() as c:
            levels, records = await inventory.expected_from_postgres(c)
            nodes = [r["id"] for r in await c.fetch(Q["node_ids"])]
        if await self.svc.inventory.snapshot(nodes) != levels:
            return False
        held = set()
        for n in nodes:
            held |= {(n, f.decode()) for f in await self.svc.redis.hkeys(inventory.holders_key(n))}
        return held == set(records)

    async def check(self, load: Load) -> dict[str, bool]:
        deadline = time.monotonic() + 30
        in_step = await self.agree()
        while not in_step and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            in_step = await self.agree()
        async with self.svc.pool.acquire() as c:
            oversold = await c.fetch(Q["oversold_pairs"])
            stored = await c.fetch("select external_id, status, delivery_mode, "
                                   "(select array_agg(sku) from order_lines l where l.order_id = o.id) skus "
                                   "from orders o where external_id like $1", load.prefix + "-%")
        false_backorders = [r for r in stored if r["status"] == "backordered" and r["delivery_mode"] == "ship"
                            and HOT not in r["skus"]]
        return {"no oversell": not oversold, "in step": in_step, "no false backorder": not false_backorders,
                "once": len(stored) == len({r["external_id"] for r in stored}) and set(load.orders) <= {
                    r["external_id"] for r in stored}}


async def scenario(rig: Rig, name: str, clients: int, seconds: float) -> dict:
    load = Load(rig.server.url, rig.skus, f"{name}-{int(time.time())}", clients)
    runner = asyncio.ensure_future(load.run())
    await asyncio.sleep(2)
    fault_at = time.monotonic()
    inject = {"in-doubt-commit": rig.in_doubt_commit, "flushall": rig.flushall,
              "redis-empty-restart": rig.redis_empty_restart, "kill-worker": rig.kill_worker,
              "postgres-stop": rig.postgres_stop}.get(name)
    back_at = await inject() if inject else fault_at
    await asyncio.sleep(max(seconds - (time.monotonic() - fault_at) - 2, 1))
    load.stop.set()
    await runner
    # recovery: from the fault's end (the flush, the kill, PostgreSQL or Redis back) to the next
    # order answered as allocated
    allocated_after = [t for st, t in load.orders.values() if t > back_at and st == "allocated"]
    recovery = (min(allocated_after) - back_at) if allocated_after and inject else 0.0
    held = await rig.check(load)
    statuses: dict[int, int] = {}
    for _, s in load.requests:
        statuses[s] = statuses.get(s, 0) + 1
    return {"scenario": name, "orders": len(load.orders), "requests ok": sum(v for k, v in statuses.items() if k in (200, 201)),
            "requests failed": sum(v for k, v in statuses.items() if k not in (200, 201)),
            "500s": statuses.get(500, 0), "orders never in": load.failed_orders,
            "recovery s": recovery, "held": held, "statuses": statuses}


def table(rows: list[dict]) -> str:
    head = f"{'scenario':<20} {'orders':>6} {'req ok':>7} {'req failed':>10} {'500s':>5} {'never in':>8} {'recovery s':>10}  invariants"
    lines = [head, "-" * len(head)]
    for r in rows:
        inv = ", ".join(f"{k} {'✓' if v else '✗'}" for k, v in r["held"].items())
        lines.append(f"{r['scenario']:<20} {r['orders']:>6} {r['requests ok']:>7} {r['requests failed']:>10} "
                     f"{r['500s']:>5} {r['orders never in']:>8} {r['recovery s']:>10.2f}  {inv}")
    return "\n".join(lines)


async def main() -> int:
    import logging

    logging.getLogger("asyncpg").setLevel(logging.CRITICAL)  # our own checker's pool while PostgreSQL is down
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--only", default=",".join(SCENARIOS))
    args = ap.parse_args()
    rig = Rig(ROOT / ".oms-faults")
    await rig.start()
    rows = []
    try:
        for name in args.only.split(","):
            cuts, rebuilt = rig.proxy.cuts, await rig.svc.redis.get("oms:inv:epoch")
            rows.append(await scenario(rig, name, args.clients, args.seconds))
            print(f"{name}: HTTP statuses {rows[-1]['statuses']} (0 = connection broken); connections cut at "
                  f"COMMIT: {rig.proxy.cuts - cuts}; Redis rebuilt: "
                  f"{await rig.svc.redis.get('oms:inv:epoch') != rebuilt}", flush=True)
    finally:
        await rig.stop()
    print()
    print(f"oms serve --workers 2, {args.clients} clients, {args.seconds:.0f} s per scenario, fault at 2 s")
    print(table(rows))
    good = all(all(r["held"].values()) and not r["500s"] and not r["orders never in"] for r in rows)
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
