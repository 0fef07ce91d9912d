"""The comparison baselines in loadtests/ (the stack's floor, the floor writing the OMS's record,
the row-lock design) are correct designs, not strawmen: they take orders, answer like the OMS,
and never oversell under a stampede.

Each app runs as it does in loadtests/compare.py (2 uvicorn workers on one port) against this
session's PostgreSQL and Redis logical db; the record floor in a database of its own, migrated.
"""

from __future__ import annotations

import asyncio
import os
from contextlib import AsyncExitStack
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

LOADTESTS = Path(__file__).resolve().parent.parent / "loadtests"
sys.path.insert(0, str(LOADTESTS))

import floor_app  # noqa: E402
import record_app  # noqa: E402
import rowlock_app  # noqa: E402
from ingest import free_port, stop_server, wait_for_port  # noqa: E402

from tests.dbkit import fresh_database  # noqa: E402

TOKEN = "baseline-test-token"
NODE = "WH-BASELINE"


async def _load(app: str, db_url: str, settings, stock: dict[str, int]) -> None:
    if app == "rowlock":
        await rowlock_app.load_stock(db_url, NODE, stock)
    else:
        load = floor_app.load_stock if app == "floor" else record_app.load_stock
        await load(db_url, settings.redis_url, NODE, stock)


async def _check(app: str, db_url: str, settings, stock: dict[str, int]) -> dict:
    if app == "rowlock":
        return await rowlock_app.check(db_url, NODE, stock)
    check = floor_app.check if app == "floor" else record_app.check
    return await check(db_url, settings.redis_url, NODE, stock)


def _order(ext: str, lines: list[tuple[str, int]]) -> dict:
    return {"channel": "tmall", "external_id": ext, "delivery_mode": "ship",
            "destination": {"lat": 31.23, "lng": 121.47, "address": "上海市****"},
            "lines": [{"sku": s, "quantity": q, "unit_price": 990} for s, q in lines]}


@pytest.fixture(scope="module", params=["floor", "record", "rowlock"])
async def baseline(request, settings):
    """(name, base URL, database URL) of the app running with 2 workers."""
    async with AsyncExitStack() as stack:
        db_url = settings.database_url
        if request.param == "record":  # the OMS's schema, without the session's nodes and orders
            db_url = await stack.enter_async_context(fresh_database(settings, "record_"))
            await record_app.load_stock(db_url, settings.redis_url, NODE, {})
        port = free_port()
        env = dict(os.environ, BASELINE_DATABASE_URL=db_url, BASELINE_REDIS_URL=settings.redis_url,
                   BASELINE_TOKEN=TOKEN, BASELINE_NODE=NODE)
        server = subprocess.Popen([sys.executable, str(LOADTESTS / f"{request.param}_app.py"), "--port", str(port),
                                   "--workers", "2"], env=env, stdout=subprocess.DEVNULL)  # stderr: shown on failure
        try:
            await asyncio.to_thread(wait_for_port, port, timeout=30, settle=1.0)
            yield request.param, f"http://127.0.0.1:{port}", db_url
        finally:
            stop_server(server)


async def test_baseline_takes_orders_and_answers_like_the_oms(baseline, settings):
    app, url, db_url = baseline
    stock = {"A": 100, "B": 100}
    await _load(app, db_url, settings, stock)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        answers = [await c.post("/orders", json=_order(f"ok-{i}", [("A", 1), ("B", 2)])) for i in range(5)]
        assert [r.status_code for r in answers] == [201] * 5, [r.text for r in answers]
        assert {r.json()["status"] for r in answers} == {"allocated"}
        assert len({r.json()["id"] for r in answers}) == 5
        assert {r.json()["node_id"] for r in answers} == {NODE}
        short = await c.post("/orders", json=_order("too-many", [("A", 1), ("B", 1000)]))
        assert short.status_code == 201 and short.json()["status"] == "backordered"
        assert (await c.post("/orders", json={"channel": "tmall"})).status_code == 400
        unauthorised = await c.post("/orders", json=_order("x", [("A", 1)]), headers={"Authorization": "Bearer no"})
        assert unauthorised.status_code == 401
    result = await _check(app, db_url, settings, stock)
    # all-or-nothing: the backordered order took no A
    assert result["sold"] == {"A": 5, "B": 10}
    assert result["oversold"] == [] and result["in_step"]


async def test_a_stampede_of_50_orders_on_10_units_sells_exactly_10(baseline, settings):
    app, url, db_url = baseline
    stock = {"HOT": 10}
    await _load(app, db_url, settings, stock)
    limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, limits=limits,
                                 timeout=20) as c:
        answers = await asyncio.gather(*(c.post("/orders", json=_order(f"hot-{i}", [("HOT", 1)])) for i in range(50)))
    assert {r.status_code for r in answers} == {201}, [r.text for r in answers if r.status_code != 201]
    assert sorted(r.json()["status"] for r in answers).count("allocated") == 10
    result = await _check(app, db_url, settings, stock)
    assert result["sold"] == {"HOT": 10}
    assert result["statuses"] == {"allocated": 10, "backordered": 40}
    assert result["oversold"] == [] and result["in_step"]
