"""Intake benchmark: drive POST /orders at `oms serve --workers 2`, print orders/s and latency,
then check from PostgreSQL that no (node, SKU) is oversold.

    .venv/bin/python loadtests/ingest.py [--orders 30000] [--concurrency 64] [--clients 1]

Runs its own embedded servers under .oms-bench, emptied first unless --keep (or uses
OMS_DATABASE_URL / OMS_REDIS_URL / OMS_DATA_DIR as given), seeds the demo city with deep stock
plus one hot SKU with little stock, and sends traffic only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds() -> dict[int, tuple[str, int, float]]:
    """pid -> (command name, parent pid, CPU seconds so far), for every process (Linux /proc)."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        name, rest = st[st.index("(") + 1 : st.rindex(")")], st[st.rindex(")") + 2 :].split()
        out[int(d)] = (name, int(rest[1]), (int(rest[11]) + int(rest[12])) / tick)
    return out


def _is_dispatcher(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"channels" in f.read()
    except OSError:
        return False


def _own_servers(data_dir: Path | None) -> tuple[int, int]:
    """The pids of the embedded PostgreSQL postmaster and Redis under `data_dir` (-1 when unknown)."""
    d = data_dir or Path(os.environ.get("OMS_DATA_DIR", ROOT / ".oms-bench"))
    pids = []
    for f in (d / "pg" / "postmaster.pid", d / "redis" / "redis.pid"):
        try:
            pids.append(int(f.read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            pids.append(-1)
    return pids[0], pids[1]


def cpu_split(before: dict, after: dict, server_pid: int, data_dir: Path | None = None) -> dict[str, float]:
    """CPU seconds spent between two readings by the server's workers, its PostgreSQL and Redis,
    the load generator, and other work on the box.

    PostgreSQL and Redis are the bench's own servers (by the pid files under the data directory),
    so test servers or other benches running meanwhile land in "other work"; with servers given by
    URL, every process named postgres / redis-server counts.
    """
    split = {"oms workers": 0.0, "oms dispatcher": 0.0, "postgres": 0.0, "redis": 0.0,
             "load generator": 0.0, "other work": 0.0}
    pg_pid, redis_pid = _own_servers(data_dir)
    me = os.getpid()
    for pid, (name, ppid, t) in after.items():
        spent = t - before.get(pid, (name, ppid, 0.0))[2]
        if ppid == server_pid and _is_dispatcher(pid):  # `oms serve` runs the outbox dispatcher as a child
            split["oms dispatcher"] += spent
        elif ppid == server_pid or pid == server_pid:
            split["oms workers"] += spent
        elif name == "postgres" and (pg_pid < 0 or pg_pid in (pid, ppid)):
            split["postgres"] += spent
        elif name == "redis-server" and (redis_pid < 0 or pid == redis_pid):
            split["redis"] += spent
        elif me in (pid, ppid):
            split["load generator"] += spent
        else:
            split["other work"] += spent
    return split


def build_bodies(n: int, seed: int, skus: list[str], hot: str, prefix: str) -> list[bytes]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        mode = "delivery" if rnd.random() < 0.3 else "ship"
        lines = [{"sku": hot if rnd.random() < 0.05 else rnd.choice(skus), "quantity": 1, "unit_price": 9900}]
        if rnd.random() < 0.2:
            lines.append({"sku": rnd.choice(skus), "quantity": 1, "unit_price": 4900})
        body = {"channel": rnd.choice(["tmall", "jd", "douyin", "miniprogram"]), "external_id": f"{prefix}-{i}",
                "delivery_mode": mode,
                "destination": {"lat": 31.23 + rnd.uniform(-0.12, 0.12), "lng": 121.47 + rnd.uniform(-0.15, 0.15),
                                "address": "上海市****"},
                "lines": lines}
        out.append(json.dumps(body).encode())
    return out


class _Client(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time; the response head is parsed
    just enough to find its status and length (kept lean: it shares the CPUs with the server)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(self.buf[:end]).lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15 : head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None]) if at >= 0 else 0
        if len(self.buf) >= end + 4 + length:
            status = int(head[9:12])
            del self.buf[: end + 4 + length]
            waiter, self.waiter = self.waiter, None
            waiter.set_result(status)

    def connection_lost(self, exc) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc or ConnectionError("server closed the connection"))

    async def request(self, data: bytes) -> int:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


async def _worker(port: int, token: str, bodies: list[bytes], lat: list[float], codes: dict[int, int]) -> None:
    _, client = await asyncio.get_running_loop().create_connection(_Client, "127.0.0.1", port)
    head = (f"POST /orders HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\n").encode()
    requests = [head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body for body in bodies]
    for data in requests:
        t0 = time.perf_counter()
        code = await client.request(data)
        lat.append(time.perf_counter() - t0)
        codes[code] = codes.get(code, 0) + 1
    client.transport.close()


def _client_process(port: int, token: str, bodies: list[bytes], concurrency: int, q: mp.Queue) -> None:
    async def main():
        lat: list[float] = []
        codes: dict[int, int] = {}
        chunks = [bodies[i::concurrency] for i in range(concurrency)]
        await asyncio.gather(*(_worker(port, token, c, lat, codes) for c in chunks if c))
        return lat, codes

    try:
        import uvloop  # the server's loop too: the load generator should cost as little as it can
    except ImportError:
        q.put(asyncio.run(main()))
    else:
        q.put(uvloop.run(main()))


class Load(NamedTuple):
    """One measured run: wall time, sorted latencies (s), HTTP status counts, CPU split (s)."""

    elapsed: float
    lat: list[float]
    codes: dict[int, int]
    cpu: dict[str, float]

    @property
    def rate(self) -> float:
        return len(self.lat) / self.elapsed

    def pct(self, q: float) -> float:
        """The q-quantile of latency, in ms."""
        return self.lat[min(len(self.lat) - 1, int(len(self.lat) * q))] * 1000


def drive(port: int, token: str, bodies: list[bytes], concurrency: int, clients: int = 1,
          server_pid: int | None = None) -> Load:
    """POST every body to /orders from `clients` load processes over `concurrency` connections."""
    q: mp.Queue = mp.Queue()
    per = [bodies[i::clients] for i in range(clients)]
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    procs = [mp.Process(target=_client_process, args=(port, token, chunk, max(1, concurrency // clients), q))
             for chunk in per]
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    elapsed = time.perf_counter() - t0
    cpu = cpu_split(cpu0, cpu_seconds(), server_pid if server_pid is not None else -1)
    for p in procs:
        p.join()
    codes: dict[int, int] = {}
    for r in results:
        for k, v in r[1].items():
            codes[k] = codes.get(k, 0) + v
    return Load(elapsed, sorted(x for r in results for x in r[0]), codes, cpu)


def wait_for_port(port: int, timeout: float = 60, settle: float = 1.5) -> None:
    """Wait until something accepts on 127.0.0.1:port, then `settle` seconds more (all workers up)."""
    deadline = time.time() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if time.time() > deadline:
                raise RuntimeError(f"nothing listens on port {port} after {timeout:.0f} s") from None
            time.sleep(0.2)
    time.sleep(settle)


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(15)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def bench_env() -> tuple[dict[str, str], bool]:
    """The environment for `oms` commands, and whether the embedded servers are this bench's own."""
    env = dict(os.environ)
    env.setdefault("OMS_DATA_DIR", str(ROOT / ".oms-bench"))
    own = not (env.get("OMS_DATABASE_URL") or env.get("OMS_REDIS_URL")) and "OMS_DATA_DIR" not in os.environ
    return env, own


def prepare_oms(env: dict[str, str], own: bool, keep: bool, hot: dict[str, int]) -> list[str]:
    """Empty (unless keep) and seed the OMS: the demo city with deep stock everywhere plus each
    hot SKU with its units at the warehouse only. Returns the other SKUs."""
    oms = [str(BIN / "oms")]
    if own and not keep:
        # every run starts from empty servers, so runs compare (open picks, keys and rows pile up)
        subprocess.run(oms + ["stop-embedded"], env=env, check=True, capture_output=True)
        shutil.rmtree(env["OMS_DATA_DIR"], ignore_errors=True)
    subprocess.run(oms + ["migrate"], env=env, check=True, capture_output=True)
    subprocess.run(oms + ["seed-demo"], env=env, check=True, capture_output=True)
    setup = """
import asyncio, json, sys
from oms.config import Settings
from oms.wiring import Services
from oms.stock import inventory
hot = json.loads(sys.argv[1])
async def main():
    s = await Services.start(Settings.from_env(), prepare=False)
    async with s.pool.acquire() as c:
        await c.execute("update stock set on_hand = 100000")
        for sku, units in hot.items():
            await c.execute("insert into skus (sku, name) values ($1, 'hot') on conflict do nothing", sku)
            await c.execute("delete from stock where sku = $1", sku)
            await c.execute("insert into stock (node_id, sku, on_hand) values ('SH-WH-JIADING', $1, $2)", sku, units)
        await inventory.rebuild(c, s.redis)
        skus = [r['sku'] for r in await c.fetch("select sku from skus where sku <> all($1::text[]) order by sku", list(hot))]
    await s.close()
    print(','.join(skus))
asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", setup, json.dumps(hot)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return out.strip().split(",")


def check_oms(env: dict[str, str], prefix: str, hot: list[str]) -> dict:
    """From PostgreSQL and Redis: oversold (node, SKU) pairs, whether Redis is in step, units of
    each hot SKU reserved, and the statuses of the orders whose external id starts with prefix."""
    check = """
import asyncio, json, sys
from oms.config import Settings
from oms.wiring import Services
from oms.infra.db import Q
from oms.stock import inventory
async def main():
    s = await Services.start(Settings.from_env(), prepare=False)
    async with s.pool.acquire() as c:
        bad = await c.fetch(Q['oversold_pairs'])
        hot = {sku: await c.fetchval("select coalesce(sum(quantity),0) from reservations where sku=$1 and state='reserved'", sku)
               for sku in json.loads(sys.argv[2])}
        st = await c.fetch("select status, count(*) n from orders where external_id like $1 group by status", sys.argv[1] + '-%')
        in_step = await inventory.in_step(c, s.redis)
    await s.close()
    print(json.dumps({"oversold_pairs": len(bad), "hot_reserved": hot, "in_step": in_step,
                      "statuses": dict((r['status'], r['n']) for r in st)}))
asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", check, prefix, json.dumps(hot)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def _start_pyspy(pid: int, out: str) -> subprocess.Popen:
    """py-spy sampling the server and its workers until stopped (costs CPU: compare profiles, not rates)."""
    spy = subprocess.Popen([str(BIN / "py-spy"), "record", "--pid", str(pid), "--subprocesses", "--format", "raw",
                            "--rate", "250", "--nonblocking", "-o", out],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached before the load starts
    return spy


def _stop_pyspy(spy: subprocess.Popen) -> None:
    spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    try:
        spy.wait(30)
    except subprocess.TimeoutExpired:
        spy.kill()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--orders", type=int, default=30000)
    ap.add_argument("--concurrency", type=int, default=64, help="connections in all")
    ap.add_argument("--clients", type=int, default=1, help="load-generator processes")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2000)
    ap.add_argument("--keep", action="store_true", help="reuse .oms-bench instead of starting empty")
    ap.add_argument("--profile", metavar="FILE",
                    help="record the workers with py-spy (pip install py-spy) during the measured run, as "
                         "collapsed stacks in FILE; loadtests/pyspy_top.py prints its top frames")
    args = ap.parse_args()

    env, own = bench_env()
    env["OMS_ADMIN_TOKEN"] = token = "bench-token"
    # deep stock everywhere, and one hot SKU with 200 units at the warehouse only
    skus = prepare_oms(env, own, args.keep, {"SKU-HOT-1": 200})
    port = free_port()
    server = subprocess.Popen([str(BIN / "oms"), "serve", "--port", str(port), "--workers", str(args.workers)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port)
        prefix = f"b{int(time.time())}"
        # warm-up (caches, connections), not measured
        warm = build_bodies(args.warmup, 1, skus, "SKU-HOT-1", prefix + "w")
        drive(port, token, warm, min(args.concurrency, 32))

        bodies = build_bodies(args.orders, 2, skus, "SKU-HOT-1", prefix)
        spy = _start_pyspy(server.pid, args.profile) if args.profile else None
        try:
            load = drive(port, token, bodies, args.concurrency, args.clients, server.pid)
        finally:
            if spy is not None:
                _stop_pyspy(spy)
        lat, elapsed, cpu, codes = load.lat, load.elapsed, load.cpu, load.codes
        out = check_oms(env, prefix, ["SKU-HOT-1"])
        print(f"orders: {len(lat)} in {elapsed:.2f} s with {args.concurrency} connections, {args.workers} workers, {args.clients} load process(es)")
        print(f"throughput: {load.rate:,.0f} orders/s")
        print(f"latency: p50 {load.pct(0.5):.1f} ms, p99 {load.pct(0.99):.1f} ms, mean {statistics.fmean(lat) * 1000:.1f} ms")
        print("CPU per order (ms): " + ", ".join(f"{k} {v / len(lat) * 1000:.3f}" for k, v in cpu.items())
              + f"; machine {sum(cpu.values()) / elapsed * 100:.0f}% of one core busy on average")
        print(f"HTTP status counts: {codes}")
        print(f"order statuses: {out['statuses']}")
        print(f"hot SKU (200 units): {out['hot_reserved']['SKU-HOT-1']} reserved")
        print(f"oversold (node, SKU) pairs in PostgreSQL: {out['oversold_pairs']}; Redis in step with PostgreSQL: {out['in_step']}")
        return 0 if out["oversold_pairs"] == 0 and out["hot_reserved"]["SKU-HOT-1"] <= 200 else 1
    finally:
        stop_server(server)


if __name__ == "__main__":
    sys.exit(main())
