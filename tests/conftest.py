"""Shared fixtures: real PostgreSQL and Redis (embedded unless OMS_DATABASE_URL / OMS_REDIS_URL),
started once per session; a fresh database and Redis logical db for the run; one app client."""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import pytest_asyncio

from oms.infra import embedded
from oms.config import Settings

ADMIN_TOKEN = "test-admin-token"
ROOT = Path(__file__).resolve().parent.parent


def _with_db(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def _redis_db(url: str, db: int) -> str:
    if url.startswith("unix://"):
        base = url.split("?")[0]
        return f"{base}?db={db}"
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


@pytest.fixture(scope="session")
def server_urls():
    """The servers' URLs; with OMS_TEST_STOP_EMBEDDED=1 (make test) the embedded servers this
    session started are stopped at its end."""
    data_dir = Path(os.environ.get("OMS_DATA_DIR", ROOT / ".oms-test")).resolve()
    before = embedded.running(data_dir)
    yield embedded.resolve_urls(os.environ.get("OMS_DATABASE_URL"), os.environ.get("OMS_REDIS_URL"), data_dir)
    if os.environ.get("OMS_TEST_STOP_EMBEDDED") == "1":
        embedded.stop_started(data_dir, before)


@pytest_asyncio.fixture(scope="session")
async def settings(server_urls) -> Settings:
    """A database of its own for this run (dropped after), and Redis logical db 15 flushed."""
    pg_url, redis_url = server_urls
    dbname = "oms_test_" + secrets.token_hex(4)
    admin = await asyncpg.connect(pg_url)
    await admin.execute(f'create database "{dbname}"')
    await admin.close()
    import redis.asyncio as aioredis

    if os.environ.get("OMS_TEST_REDIS_CLUSTER") == "1":
        # the same tests against a three-master Redis Cluster of this session's own (db 0 only)
        from oms.infra.redis_cluster_local import start_cluster

        from oms.stock.redis_batch import client

        cluster = start_cluster(Path(tempfile.mkdtemp(prefix="oms-test-cluster-")), masters=3)
        r = client(cluster.url)
        await r.set("oms:test-session", secrets.token_hex(8), ex=3600)
        await r.aclose()
        yield Settings(database_url=_with_db(pg_url, dbname), redis_url=cluster.url,
                       data_dir=Path(os.environ.get("OMS_DATA_DIR", ROOT / ".oms-test")).resolve(),
                       admin_token=ADMIN_TOKEN, write_batch_max=256, pg_pool_size=10)
        cluster.stop()
        admin = await asyncpg.connect(pg_url)
        await admin.execute(f'drop database if exists "{dbname}" with (force)')
        await admin.close()
        return
    # a logical db of our own: sessions running side by side must not flush each other's stock
    session_id = secrets.token_hex(8)
    for db in range(15, 0, -1):
        test_redis = _redis_db(redis_url, db)
        r = aioredis.Redis.from_url(test_redis)
        if await r.set("oms:test-session", session_id, nx=True, ex=3600):
            await r.flushdb()
            await r.set("oms:test-session", session_id, ex=3600)
            await r.aclose()
            break
        await r.aclose()
    else:
        raise RuntimeError("no free Redis logical db (1-15) for this test session")
    yield Settings(database_url=_with_db(pg_url, dbname), redis_url=test_redis,
                   data_dir=Path(os.environ.get("OMS_DATA_DIR", ROOT / ".oms-test")).resolve(),
                   admin_token=ADMIN_TOKEN, write_batch_max=256, pg_pool_size=10)
    admin = await asyncpg.connect(pg_url)
    await admin.execute(f'drop database if exists "{dbname}" with (force)')
    await admin.close()
    r = aioredis.Redis.from_url(test_redis)
    await r.flushdb()
    await r.aclose()


@pytest_asyncio.fixture(scope="session")
async def services(settings):
    """The app's services, started in the tests' event loop (so tests may use them directly)."""
    from oms.wiring import Services

    svc = await Services.start(settings)
    yield svc
    await svc.close()


@pytest_asyncio.fixture(scope="session")
async def app(services):
    from oms.app import create_app

    app = create_app(services.settings)
    app.state.services = services  # lifespan is not run by the ASGI transport; we started them
    return app


@pytest_asyncio.fixture(scope="session")
async def client(app) -> httpx.AsyncClient:
    """An HTTP client speaking ASGI to the app in-process, with the admin token."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://oms.test", timeout=60,
                                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as c:
        yield c


@pytest.fixture
def uid() -> str:
    """A fresh suffix so each test's nodes, SKUs and orders are its own."""
    return secrets.token_hex(3)


class World:
    """Builds small networks through the public API."""

    def __init__(self, client: httpx.AsyncClient, uid: str) -> None:
        self.c = client
        self.uid = uid

    def id(self, name: str) -> str:
        return f"{name}-{self.uid}"

    async def node(self, name: str, lat: float, lng: float, *, kind: str = "store",
                   capabilities: tuple[str, ...] = ("delivery", "pickup", "ship"), radius: int = 5000,
                   capacity: int = 60) -> str:
        node_id = self.id(name)
        r = await self.c.put(f"/nodes/{node_id}", json={
            "kind": kind, "name": name, "lat": lat, "lng": lng, "capabilities": list(capabilities),
            "delivery_radius_m": radius, "capacity_per_hour": capacity})
        assert r.status_code in (200, 201), r.text
        return node_id

    async def sku(self, name: str, price: int = 1000) -> str:
        sku = self.id(name)
        r = await self.c.put(f"/skus/{sku}", json={"name": name, "unit_price": price})
        assert r.status_code == 200, r.text
        return sku

    async def stock(self, node_id: str, sku: str, on_hand: int) -> dict:
        r = await self.c.put(f"/inventory/{node_id}/{sku}", json={"on_hand": on_hand})
        assert r.status_code == 200, r.text
        return r.json()

    def order(self, ext: str, lines: list[tuple[str, int]], *, lat: float = 31.2304, lng: float = 121.4737,
              mode: str = "delivery", pickup: str | None = None, channel: str = "manual", **extra) -> dict:
        body = {"channel": channel, "external_id": self.id(ext), "delivery_mode": mode,
                "destination": {"lat": lat, "lng": lng, "address": "上海市黄浦区****"},
                "lines": [{"sku": s, "quantity": q, "unit_price": 1000} for s, q in lines], **extra}
        if pickup:
            body["pickup_node_id"] = pickup
        return body

    async def post_order(self, body: dict) -> httpx.Response:
        return await self.c.post("/orders", json=body)


@pytest.fixture
def world(client, uid) -> World:
    return World(client, uid)
