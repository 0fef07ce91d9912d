"""OMS_DATABASE_READ_URL on real servers: a PostgreSQL primary of this module's own and a streaming
replica of it (pg_basebackup -R, then the standby on a free 127.0.0.1 port).

Pick lists, GET /orders, GET /orders/{id} and the ops summary read the replica: with its replay
paused they lag while the primary has the row, and catch up when it resumes. An order the replica
has not got yet is still found (the primary answers); a replica that is down costs nothing but a
count in /metrics; with both down the answer is the usual 503 with Retry-After. Store actions and
intake never touch the replica: they work while it lags.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import msgspec
import pytest

from oms.infra import embedded
from oms.ops import summary as ops
from oms.wiring import Services

ADMIN = {"Authorization": "Bearer test-admin-token"}
LAT, LNG = 31.2304, 121.4737


def _pg_bin(name: str) -> str:
    import pgserver

    return str(Path(pgserver._commands.POSTGRES_BIN_PATH) / name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Standby:
    """A hot standby of the primary at `primary_url`, streaming from it, on 127.0.0.1:`port`."""

    def __init__(self, root: Path, primary_url: str) -> None:
        self.data = root / "standby"
        self.sockets = root / "standby-sockets"
        self.log = root / "standby.log"
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        # the embedded primary listens on a unix socket only; its directory is the URL's host
        self.primary_socket_dir = parse_qs(urlsplit(primary_url).query)["host"][0]
        self.proc: subprocess.Popen | None = None
        # PostgreSQL refuses to run as root: the embedded server runs as its own system user
        self.user = "pgserver" if os.geteuid() == 0 else None

    def _own(self, path: Path) -> None:
        path.mkdir(mode=0o700, exist_ok=True)
        if self.user:
            shutil.chown(path, self.user, self.user)

    def create(self) -> None:
        self._own(self.data)
        self._own(self.sockets)
        subprocess.run([_pg_bin("pg_basebackup"), "-h", self.primary_socket_dir, "-U", "postgres", "-D",
                        str(self.data), "-R", "-X", "stream", "-c", "fast"],
                       check=True, user=self.user, capture_output=True, timeout=60)

    def start(self) -> None:
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [_pg_bin("postgres"), "-D", str(self.data), "-h", "127.0.0.1", "-p", str(self.port),
                 "-k", str(self.sockets), "-c", "hot_standby=on"],
                user=self.user, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        """Fast shutdown of the standby this fixture started, by its pid."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown (SIGTERM would wait for clients to leave)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    async def connect(self) -> asyncpg.Connection:
        deadline = time.monotonic() + 30
        while True:
            try:
                return await asyncpg.connect(self.url, timeout=2)
            except (OSError, asyncpg.CannotConnectNowError, asyncpg.PostgresConnectionError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the standby did not start; see {self.log}") from None
                await asyncio.sleep(0.1)


@dataclass
class Cluster:
    svc: Services
    client: httpx.AsyncClient
    primary: asyncpg.Connection
    standby: Standby
    root: Path

    async def caught_up(self) -> None:
        """Wait until the replica has replayed everything the primary wrote so far."""
        target = await self.primary.fetchval("select pg_current_wal_lsn()::text")
        replica = await self.standby.connect()
        try:
            deadline = time.monotonic() + 30
            while not await replica.fetchval("select pg_last_wal_replay_lsn() >= $1::text::pg_lsn", target):
                assert time.monotonic() < deadline, "the replica did not catch up"
                await asyncio.sleep(0.05)
        finally:
            await replica.close()

    @contextlib.asynccontextmanager
    async def replay_paused(self):
        """The replica stops applying WAL (it keeps receiving it) until the block ends."""
        await self.caught_up()
        replica = await self.standby.connect()
        try:
            await replica.execute("select pg_wal_replay_pause()")
            while await replica.fetchval("select pg_get_wal_replay_pause_state()") != "paused":
                await asyncio.sleep(0.02)
            yield
        finally:
            await replica.execute("select pg_wal_replay_resume()")
            await replica.close()

    async def fallbacks(self) -> dict[str, float]:
        r = await self.client.get("/metrics")
        assert r.status_code == 200, r.text
        return {m.group(1): float(m.group(2)) for m in
                re.finditer(r'^oms_read_replica_fallbacks_total\{reason="(\w+)"\} (\S+)$', r.text, re.M)}


def _restart_primary(root: Path) -> None:
    import pgserver

    pgserver.postgres_server.PostgresServer._instances.pop((root / "pg").resolve(), None)
    embedded.postgres_url(root)


@pytest.fixture(scope="module")
async def cluster(settings, tmp_path_factory):
    from oms.app import create_app

    root = tmp_path_factory.mktemp("replica")
    primary_url = await asyncio.to_thread(embedded.postgres_url, root)
    standby = Standby(root, primary_url)
    await asyncio.to_thread(standby.create)
    standby.start()
    await (await standby.connect()).close()
    mine = msgspec.structs.replace(settings, database_url=primary_url, database_read_url=standby.url,
                                   redis_url=embedded.redis_url(root), timers=False)
    svc = await Services.start(mine)
    svc.reads.retry_after_s = 0.5  # a stopped replica is tried again soon: the tests restart it
    app = create_app(mine)
    app.state.services = svc
    cluster = None
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://oms.test",
                                     headers=ADMIN, timeout=60) as client:
            cluster = Cluster(svc, client, await asyncpg.connect(primary_url), standby, root)
            yield cluster
    finally:
        if cluster is not None:
            await cluster.primary.close(timeout=5)
        await svc.close()
        standby.stop()
        await asyncio.to_thread(embedded.stop_postgres, root)
        embedded.stop_redis(root)


@pytest.fixture
async def store(cluster, uid):
    """A store with a SKU in stock and a token: (node id, sku, store auth header)."""
    c = cluster.client
    node, sku = f"rr-store-{uid}", f"rr-sku-{uid}"
    r = await c.put(f"/nodes/{node}", json={"kind": "store", "name": node, "lat": LAT, "lng": LNG,
                                            "capabilities": ["delivery", "pickup", "ship"],
                                            "delivery_radius_m": 5000, "capacity_per_hour": 60})
    assert r.status_code in (200, 201), r.text
    assert (await c.put(f"/skus/{sku}", json={"name": "tea", "unit_price": 100})).status_code == 200
    assert (await c.put(f"/inventory/{node}/{sku}", json={"on_hand": 100})).status_code == 200
    token = (await c.post(f"/nodes/{node}/tokens", json={})).json()["token"]
    return node, sku, {"Authorization": f"Bearer {token}"}


def _order(uid: str, ext: str, sku: str, quantity: int = 1) -> dict:
    return {"channel": "manual", "external_id": f"{ext}-{uid}", "delivery_mode": "delivery",
            "destination": {"lat": LAT, "lng": LNG, "address": "x"},
            "lines": [{"sku": sku, "quantity": quantity, "unit_price": 100}]}


async def _post(c: httpx.AsyncClient, body: dict) -> dict:
    r = await c.post("/orders", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "allocated", r.text
    return r.json()


async def _pick_list_ids(c: httpx.AsyncClient, node: str, auth: dict) -> set[str]:
    r = await c.get(f"/stores/{node}/picklist", headers=auth)
    assert r.status_code == 200, r.text
    return {e["order_id"] for e in r.json()["items"]}


async def _listed_ids(c: httpx.AsyncClient) -> set[str]:
    r = await c.get("/orders", params={"limit": 500})
    assert r.status_code == 200, r.text
    return {o["id"] for o in r.json()["items"]}


async def test_pick_list_and_order_list_are_read_from_the_replica_and_lag_while_its_replay_is_paused(cluster, store, uid):
    c = cluster.client
    node, sku, auth = store
    first = await _post(c, _order(uid, "first", sku))
    async with cluster.replay_paused():
        second = await _post(c, _order(uid, "second", sku))
        assert await cluster.primary.fetchval("select status from orders where id = $1", second["id"]) == "allocated"
        # the replica's view: the first order, not yet the second
        assert first["id"] in await _pick_list_ids(c, node, auth)
        assert second["id"] not in await _pick_list_ids(c, node, auth)
        listed = await _listed_ids(c)
        assert first["id"] in listed and second["id"] not in listed
        gauges = (await c.get("/metrics")).text
        assert "oms_read_replica_up 1.0" in gauges
        lag = re.search(r"^oms_read_replica_lag_bytes (\S+)$", gauges, re.M)
        assert lag and float(lag.group(1)) > 0, gauges[-2000:]
        # the store acts on the primary: an order its list does not show yet can be picked
        r = await c.post(f"/stores/{node}/orders/{second['id']}/picked", headers=auth)
        assert r.status_code == 200, r.text
    await cluster.caught_up()
    assert second["id"] in await _listed_ids(c)
    r = await c.get(f"/stores/{node}/picklist", headers=auth)
    handover = {e["order_id"] for e in r.json()["awaiting_handover"]}
    assert first["id"] in {e["order_id"] for e in r.json()["items"]} and second["id"] in handover


async def test_an_order_created_while_the_replica_lags_is_found_on_the_primary(cluster, store, uid):
    c = cluster.client
    _, sku, _ = store
    before = (await cluster.fallbacks()).get("behind", 0)
    async with cluster.replay_paused():
        order = await _post(c, _order(uid, "fresh", sku))
        r = await c.get(f"/orders/{order['id']}")
        assert r.status_code == 200, r.text
        assert r.json()["id"] == order["id"] and r.json()["status"] == "allocated"
        r = await c.get("/orders", params={"channel": "manual", "external_id": f"fresh-{uid}"})
        assert [o["id"] for o in r.json()["items"]] == [order["id"]]
        # an id nobody has is still a 404 (asked of both)
        assert (await c.get(f"/orders/none-{uid}")).status_code == 404
    assert (await cluster.fallbacks()).get("behind", 0) == before + 3


async def test_a_stopped_replica_costs_reads_nothing_and_they_return_to_it_when_it_is_back(cluster, store, uid):
    c = cluster.client
    node, sku, auth = store
    order = await _post(c, _order(uid, "down", sku))
    await cluster.caught_up()
    before = (await cluster.fallbacks()).get("unavailable", 0)
    cluster.standby.stop()
    try:
        assert (await c.get(f"/orders/{order['id']}")).status_code == 200
        assert order["id"] in await _listed_ids(c)
        assert order["id"] in await _pick_list_ids(c, node, auth)
        r = await c.get("/ops/summary", params={"fresh": "true"})
        assert r.status_code == 200, r.text
        assert r.json()["totals"]["orders"] >= 1
        await asyncio.sleep(cluster.svc.reads.retry_after_s)  # the replica is tried again, and fails again
        assert (await c.get(f"/orders/{order['id']}")).status_code == 200
        down = (await cluster.fallbacks()).get("unavailable", 0)
        assert down >= before + 5, (before, down)
        assert cluster.svc.reads.replica_up is False
        assert "oms_read_replica_up 0.0" in (await c.get("/metrics")).text
    finally:
        cluster.standby.start()
    await cluster.caught_up()
    await asyncio.sleep(cluster.svc.reads.retry_after_s)
    assert (await c.get(f"/orders/{order['id']}")).status_code == 200
    assert cluster.svc.reads.replica_up is True
    after = (await cluster.fallbacks()).get("unavailable", 0)
    assert (await c.get(f"/orders/{order['id']}")).status_code == 200
    assert order["id"] in await _pick_list_ids(c, node, auth)
    assert (await cluster.fallbacks()).get("unavailable", 0) == after  # served by the replica again


async def test_ops_summary_reads_the_replica_folds_on_the_primary_and_stays_exact(cluster, store, uid):
    c = cluster.client
    _, sku, _ = store

    async def summary() -> dict:
        r = await c.get("/ops/summary", params={"fresh": "true"})
        assert r.status_code == 200, r.text
        return {ch["channel"]: ch for ch in r.json()["channels"]}.get("manual", {"orders": 0})

    since = ops.day_start(ops.datetime.now(ops.timezone.utc))
    count = "select count(*) from orders where channel = 'manual' and created_at >= $1"
    for i in range(3):
        await _post(c, _order(uid, f"sum-{i}", sku))
    await cluster.caught_up()
    assert (await summary())["orders"] == await cluster.primary.fetchval(count, since)
    async with cluster.replay_paused():
        for i in range(3, 5):
            await _post(c, _order(uid, f"sum-{i}", sku))
        on_primary = await cluster.primary.fetchval(count, since)
        lagging = (await summary())["orders"]
        assert lagging == on_primary - 2  # the replica's figures: without the two it has not replayed
    await cluster.svc.redis.delete(ops.FOLD_THROTTLE_KEY)
    await cluster.caught_up()
    assert (await summary())["orders"] == on_primary  # exact once the replica has caught up
    # the fold (a write) ran on the primary: nothing is left unfolded there
    assert await cluster.primary.fetchval("select count(*) from ops_minute where not folded") == 0
    assert (await cluster.fallbacks()).get("error", 0) == 0  # no statement of it was sent to the replica


async def test_primary_and_replica_both_down_is_503_with_retry_after_and_reads_recover(cluster, store, uid):
    c = cluster.client
    node, sku, auth = store
    order = await _post(c, _order(uid, "both", sku))
    cluster.standby.stop()
    await asyncio.to_thread(embedded.stop_postgres, cluster.root)
    try:
        for path, headers in ((f"/orders/{order['id']}", {}), ("/orders", {}), (f"/stores/{node}/picklist", auth),
                              ("/ops/summary?fresh=true", {})):
            r = await c.get(path, headers=headers)
            assert r.status_code == 503, (path, r.status_code, r.text)
            assert r.headers.get("retry-after"), path
    finally:
        await asyncio.to_thread(_restart_primary, cluster.root)
        cluster.standby.start()
    cluster.primary = await asyncpg.connect(cluster.svc.settings.database_url)
    deadline = time.monotonic() + 30
    while (r := await c.get(f"/orders/{order['id']}")).status_code != 200:
        assert r.status_code == 503 and time.monotonic() < deadline, r.text
        await asyncio.sleep(0.3)
    await cluster.caught_up()
    assert order["id"] in await _pick_list_ids(c, node, auth)
