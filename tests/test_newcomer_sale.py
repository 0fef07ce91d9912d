"""`oms simulate-sale` against a real `oms serve --demo-channels` over the demo city: orders from all
four channels through the signed webhooks, store staff at work, buyers cancelling, nothing
answered 5xx, nothing oversold, the ops summary moving, and few backorders, each with its reason."""

from __future__ import annotations

import json
import subprocess
import sys

import asyncpg
import pytest

from newcomer_demo_server import ADMIN_TOKEN, ROOT, DemoServer



@pytest.fixture(scope="module")
async def demo(server_urls, tmp_path_factory):
    server = DemoServer(*server_urls, tmp_path_factory.mktemp("sale") / "data")
    try:
        await server.start()
        yield server
    finally:
        await server.stop()


async def summary(server: DemoServer) -> dict:
    async with server.client() as c:
        r = await c.get("/ops/summary", params={"fresh": "true"})
        assert r.status_code == 200, r.text
        return r.json()


async def test_a_twenty_second_sale_fills_the_ops_wall_without_errors_or_oversell(demo, tmp_path):
    before = await summary(demo)
    assert before["totals"]["orders"] == 0
    report = tmp_path / "sale.json"
    out = subprocess.run(
        [sys.executable, "-m", "oms.cli", "simulate-sale", "--url", demo.url, "--seconds", "20", "--rate", "10",
         "--seed", "11", "--report", str(report)],
        cwd=ROOT, env=demo.env(), capture_output=True, text=True, timeout=150)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:] + demo.output()
    result = json.loads(report.read_text())
    counts = result["counts"]

    # every channel sold, through its own signed webhook and the demo platform API
    assert all(result["orders_by_channel"].get(ch, 0) > 0 for ch in ("douyin", "tmall", "jd", "miniprogram")), result
    assert result["platform_api_calls"] > 0 and result["platform_api_refused"] == 0
    # staff and buyers did everything a sale has
    for what in ("picked", "handed to couriers", "collected by buyers", "rejected by stores", "cancelled by buyers"):
        assert counts.get(what, 0) > 0, (what, counts)
    assert result["http"].get("5xx", 0) == 0 and not result["server_errors"], result["server_errors"]
    assert result["oversell_ok"] is True

    # the record agrees: statuses in PostgreSQL, nothing oversold
    conn = await asyncpg.connect(demo.database_url)
    try:
        channels = {r["channel"] for r in await conn.fetch("select distinct channel from orders")}
        states = {r["status"] for r in await conn.fetch("select distinct status from fulfillments")}
        cancelled = await conn.fetchval("select count(*) from orders where status = 'cancelled'")
        oversold = await conn.fetch(
            "select r.node_id, r.sku from reservations r left join stock s using (node_id, sku) "
            "where r.state = 'reserved' group by r.node_id, r.sku, s.on_hand having sum(r.quantity) > coalesce(s.on_hand, 0)")
    finally:
        await conn.close()
    assert channels == {"douyin", "tmall", "jd", "miniprogram"}
    assert {"shipped", "collected", "rejected"} <= states, states
    assert cancelled > 0 and oversold == []

    after = await summary(demo)
    assert after["totals"]["orders"] == result["oms_totals"]["orders"] > 100
    assert after["oversell"]["ok"] and after["routing"]["samples"] > 0
    assert sum(ch["orders"] for ch in after["channels"]) == after["totals"]["orders"]

    # a normal sale backorders little, and says why for each one
    assert result["backordered_share"] < 0.05, result["backorder_reasons"]
    assert sum(r["orders"] for r in result["backorder_reasons"]) == after["backorders"]["open"]
    for reason in result["backorder_reasons"]:
        assert (reason["example"] or reason["reason"]) in out.stdout
    assert "0 oversold" in out.stdout and "orders" in out.stdout


async def test_the_sale_refuses_a_server_that_is_not_on_this_machine(demo):
    out = subprocess.run([sys.executable, "-m", "oms.cli", "simulate-sale", "--url", "http://example.com:8000",
                          "--seconds", "1"], cwd=ROOT, env=demo.env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "only talks to a server on this machine" in out.stderr


async def test_the_demo_shop_credentials_stay_the_same_across_restarts(demo):
    from oms.demo import channels

    first = channels.load(demo.data_dir)
    assert first is not None and first.env["OMS_DOUYIN_APP_KEY"] and first.platform_port == demo.platform_port
    assert channels.load_or_create(demo.data_dir) == first
    # a channel the user configured keeps the user's variables
    env = {"OMS_JD_APP_KEY": "mine", "OMS_JD_APP_SECRET": "my-secret"}
    set_now = channels.apply(first, env)
    assert env["OMS_JD_APP_SECRET"] == "my-secret" and "OMS_JD_API_URL" not in env
    assert "OMS_DOUYIN_APP_SECRET" in set_now and ADMIN_TOKEN not in env.values()
