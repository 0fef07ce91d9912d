"""Ops: /metrics (Prometheus text, counters that move), /ops/summary (numbers that match what was
posted), the oversell check (a violation forced in the database is reported, zero otherwise),
and two worker processes that report one truth."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h3
import httpx
from prometheus_client.parser import text_string_to_metric_families

from oms.stock import inventory

ROOT = Path(__file__).resolve().parent.parent
LAT, LNG = 31.2304, 121.4737


# ---- helpers ---------------------------------------------------------------------------------

def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a Prometheus exposition: (sample name, labels) -> value."""
    out: dict[tuple[str, frozenset], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(client: httpx.AsyncClient) -> dict:
    r = await client.get("/metrics")  # the client sends the admin token
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return parse_metrics(r.text)


async def summary(client: httpx.AsyncClient) -> dict:
    r = await client.get("/ops/summary", params={"fresh": "true"})
    assert r.status_code == 200, r.text
    return r.json()


def channel_row(s: dict, channel: str) -> dict:
    return next((c for c in s["channels"] if c["channel"] == channel),
                {"orders": 0, "gmv_fen": 0, "accepted": 0, "backordered": 0, "cancelled": 0})


def store_row(s: dict, node_id: str) -> dict:
    return next(x for x in s["stores"] if x["node_id"] == node_id)


async def posted(world, body: dict) -> dict:
    r = await world.post_order(body)
    assert r.status_code == 201, r.text
    return r.json()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`oms serve` as a subprocess on a free 127.0.0.1 port, against the test database and Redis."""

    def __init__(self, settings, tmp: Path, workers: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "server.log"
        env = {k: v for k, v in os.environ.items()
               if k not in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir", "OMS_PREPARED")}
        env.update(OMS_DATABASE_URL=settings.database_url, OMS_REDIS_URL=settings.redis_url,
                   OMS_ADMIN_TOKEN=settings.admin_token, OMS_DATA_DIR=str(tmp / "data"), PYTHONUNBUFFERED="1")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "oms.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", str(workers)],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    async def wait_ready(self, timeout: float = 45.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"oms serve exited ({self.proc.returncode}):\n{self.output()}")
                try:
                    if (await c.get(self.url + "/healthz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        raise AssertionError(f"oms serve did not answer /healthz in {timeout}s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server and its workers: its own session
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


# ---- /metrics --------------------------------------------------------------------------------

async def test_metrics_parse_as_prometheus_text_and_counters_move(client, world, services, monkeypatch):
    node = await world.node("met", LAT, LNG)
    sku = await world.sku("met-sku", 2500)
    none = await world.sku("met-none", 2500)  # no stock anywhere
    await world.stock(node, sku, 3)
    before = await scrape(client)

    for i in range(2):
        await posted(world, world.order(f"met-ok-{i}", [(sku, 1)], channel="douyin"))
    short = await posted(world, world.order("met-short", [(none, 5)], channel="douyin"))
    assert short["status"] == "backordered"
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("oms_orders_received_total", channel="douyin") == 3
    assert delta("oms_order_outcomes_total", channel="douyin", outcome="accepted") == 2
    assert delta("oms_order_outcomes_total", channel="douyin", outcome="backordered") == 1
    assert delta("oms_stockouts_total", sku=none) == 1
    assert delta("oms_stockouts_total", sku=sku) == 0
    assert delta("oms_routing_decision_seconds_count") == 3
    assert delta("oms_routing_decision_seconds_bucket", le="+Inf") == 3
    # state read at scrape time from PostgreSQL / Redis
    assert sample(after, "oms_ops_scrape_ok") == 1
    assert sample(after, "oms_open_picks", node=node) == 2
    assert sample(after, "oms_orders_at_risk", node=node) == 0
    assert sample(after, "oms_oversold_pairs", source="postgres") == 0
    assert sample(after, "oms_oversold_pairs", source="redis") == 0

    # a reservation that loses the race: routing saw stock that was gone when it reserved
    real = services.inventory.available

    async def stale(nodes, skus):  # every read routing makes
        got = await real(nodes, skus)
        return {n: {s: (a + 100 if (n, s) == (node, sku) else a) for s, a in per.items()} for n, per in got.items()}

    monkeypatch.setattr(services.inventory, "available", stale)
    lost = await posted(world, world.order("met-race", [(sku, 2)], channel="douyin"))
    monkeypatch.undo()
    assert lost["status"] == "backordered"
    final = await scrape(client)
    assert sample(final, "oms_reservation_failures_total", sku=sku) - sample(after, "oms_reservation_failures_total", sku=sku) >= 1


async def test_metrics_and_summary_count_cancellations_from_the_channel(client, world):
    node = await world.node("cxl", LAT, LNG)
    sku = await world.sku("cxl-sku")
    await world.stock(node, sku, 5)
    before_m, before_s = await scrape(client), await summary(client)
    order = await posted(world, world.order("cxl-1", [(sku, 1)], channel="tmall"))
    again = world.order("cxl-1", [(sku, 1)], channel="tmall", status="cancelled")
    r = await world.post_order(again)
    assert r.status_code in (200, 201), r.text
    assert r.json()["id"] == order["id"] and r.json()["status"] == "cancelled"
    after_m, after_s = await scrape(client), await summary(client)
    key = ("oms_order_outcomes_total", frozenset({("channel", "tmall"), ("outcome", "cancelled")}))
    assert after_m.get(key, 0) - before_m.get(key, 0) == 1
    assert channel_row(after_s, "tmall")["cancelled"] - channel_row(before_s, "tmall")["cancelled"] == 1
    assert channel_row(after_s, "tmall")["gmv_fen"] == channel_row(before_s, "tmall")["gmv_fen"]
    assert store_row(after_s, node)["open_picks"] == 0


async def test_the_page_and_its_assets_are_served_by_the_app_without_a_token(client):
    page = await client.get("/ops", headers={"Authorization": ""})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-type"].count("charset") == 1
    # no build step and nothing from the internet: every script and style sheet is the app's own
    assert "/ops/assets/ops.js" in page.text and "/ops/assets/ops.css" in page.text
    assert "http://" not in page.text and "https://" not in page.text
    for name, kind in (("ops.js", "text/javascript"), ("ops.css", "text/css")):
        r = await client.get(f"/ops/assets/{name}", headers={"Authorization": ""})
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        assert "https://" not in r.text
    m = await client.get("/metrics")
    assert m.headers["content-type"].count("charset") == 1


async def test_grafana_dashboard_uses_only_metrics_the_service_exports(client):
    r = await client.get("/ops/assets/grafana-dashboard.json")
    assert r.status_code == 200
    dashboard = r.json()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|total|count|sum)$", "", name) for e in exprs for name in re.findall(r"\boms_[a-z_]+", e)}
    families = {f.name for f in text_string_to_metric_families((await client.get("/metrics")).text)}
    assert used and used <= families, used - families
    assert (await client.get("/ops/assets/nope.js")).status_code == 404


# ---- /ops/summary ----------------------------------------------------------------------------

async def test_summary_needs_the_admin_token(client):
    r = await client.get("/ops/summary", headers={"Authorization": ""})
    assert r.status_code == 401
    r = await client.get("/ops/summary", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    r = await client.get("/ops/map", headers={"Authorization": ""})
    assert r.status_code == 401


async def test_summary_numbers_match_what_was_posted(client, world, services):
    node = await world.node("sum", LAT, LNG, capacity=60)
    sku = await world.sku("sum-sku", 1000)
    none = await world.sku("sum-none", 1000)  # no stock anywhere
    await world.stock(node, sku, 10)
    before = await summary(client)

    a = await posted(world, world.order("sum-a", [(sku, 1)], channel="jd"))
    b = await posted(world, world.order("sum-b", [(sku, 2)], channel="jd"))
    rush = await posted(world, world.order("sum-rush", [(sku, 1)], channel="jd"))
    # fifty minutes pass for this one: ten left, less than courier (25) + picking
    await services.pool.execute("update orders set promised_by = now() + interval '10 minutes' where id = $1",
                                rush["id"])
    back = await posted(world, world.order("sum-back", [(none, 50)], channel="jd"))
    gone = await posted(world, world.order("sum-gone", [(sku, 1)], channel="jd"))
    assert [o["status"] for o in (a, b, rush, back, gone)] == ["allocated"] * 3 + ["backordered", "allocated"]
    r = await client.post(f"/orders/{gone['id']}/cancel")
    assert r.status_code == 200, r.text
    after = await summary(client)

    assert after["totals"]["orders"] - before["totals"]["orders"] == 5
    jd0, jd1 = channel_row(before, "jd"), channel_row(after, "jd")
    assert jd1["orders"] - jd0["orders"] == 5
    assert jd1["accepted"] - jd0["accepted"] == 3
    assert jd1["backordered"] - jd0["backordered"] == 1
    assert jd1["cancelled"] - jd0["cancelled"] == 1
    # GMV: paid orders not cancelled, the backordered one included (it was sold); in fen
    assert jd1["gmv_fen"] - jd0["gmv_fen"] == 1000 + 2000 + 1000 + 50 * 1000
    assert after["totals"]["gmv_fen"] - before["totals"]["gmv_fen"] == 54_000
    assert after["last_hour"]["orders"] - before["last_hour"]["orders"] == 5
    per_minute = after["orders_per_minute"]
    assert len(per_minute["minutes"]) == len(per_minute["total"]) == 60
    assert sum(per_minute["series"]["jd"]) - sum(before["orders_per_minute"]["series"].get("jd", [0])) == 5
    assert sum(per_minute["total"]) == after["last_hour"]["orders"]

    assert after["backorders"]["open"] - before["backorders"]["open"] == 1
    recent = {x["order_id"]: x for x in after["backorders"]["recent"]}
    assert back["id"] in recent and recent[back["id"]]["reason"]
    assert sum(r["orders"] for r in after["backorders"]["reasons"]) >= 1
    oos = {x["sku"]: x for x in after["out_of_stock"]}
    assert oos[none]["units"] == 50 and oos[none]["orders"] == 1 and oos[none]["lines"] == 1
    assert oos[none]["available_now"] == 0
    assert sku not in oos

    mine = store_row(after, node)
    assert mine["open_picks"] == 3 and mine["to_pick"] == 3
    assert mine["at_risk"] == 1
    risky = [x for x in after["at_risk"] if x["node_id"] == node]
    assert [x["order_id"] for x in risky] == [rush["id"]]
    assert 8.0 <= risky[0]["minutes_left"] <= 10.1
    assert risky[0]["channel"] == "jd" and risky[0]["external_id"] == world.id("sum-rush")
    assert after["at_risk_total"] - before["at_risk_total"] == 1
    assert after["open_picks"] - before["open_picks"] == 3

    routing = after["routing"]
    assert routing["samples"] >= 5 and 0 <= routing["p50_ms"] <= routing["p99_ms"] <= routing["max_ms"]
    assert after["oversell"] == {"ok": True, "count": 0, "postgres": [], "redis_count": 0, "redis": []}

    # the map of a city of its own: this store's hexagons, the same version the summary names
    town = world.id("town")
    r = await client.put(f"/nodes/{node}", json={"kind": "store", "name": "sum", "lat": LAT, "lng": LNG,
                                                 "capabilities": ["delivery", "pickup", "ship"], "city": town,
                                                 "delivery_radius_m": 5000, "capacity_per_hour": 60})
    assert r.status_code in (200, 201), r.text
    m = await client.get("/ops/map", params={"city": town})
    assert m.status_code == 200, m.text
    city = m.json()
    s = (await client.get("/ops/summary", params={"city": town, "fresh": "true"})).json()
    assert city["version"] == s["map_version"]
    assert [n["id"] for n in city["nodes"]] == [node]
    assert len(city["cells"]) > 1 and all(c["n"] == [node] and len(c["b"]) >= 5 for c in city["cells"])
    assert h3.latlng_to_cell(LAT, LNG, city["resolution"]) in {c["h"] for c in city["cells"]}


async def test_summary_is_shared_for_a_second_and_fresh_skips_it(client, world):
    first = (await client.get("/ops/summary")).json()
    second = (await client.get("/ops/summary")).json()
    fresh = (await client.get("/ops/summary", params={"fresh": "true"})).json()
    assert first["generated_at"] == second["generated_at"] or second["generated_at"] > first["generated_at"]
    assert fresh["generated_at"] >= second["generated_at"]
    r = await client.get("/ops/summary", params={"since": "yesterday"})
    assert r.status_code == 400 and r.json()["field"] == "since"
    r = await client.get("/ops/summary", params={"since": "2020-01-01T00:00:00+08:00"})
    assert r.status_code == 200 and r.json()["since"].startswith("2020-01-01T00:00:00")


# ---- the oversell check -------------------------------------------------------------------------

async def test_oversell_check_reports_a_forced_violation_and_zero_otherwise(client, world, services):
    clean = await summary(client)
    assert clean["oversell"]["ok"], clean["oversell"]
    assert clean["oversell"]["count"] == 0 and clean["oversell"]["redis_count"] == 0

    node = await world.node("over", LAT + 0.5, LNG + 0.5, capabilities=("ship",))
    sku = await world.sku("over-sku")
    await world.stock(node, sku, 1)
    order_id, fid = world.id("o-over"), world.id("f-over")
    async with services.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "with k as (insert into order_keys (id, channel, external_id) values ($1, 'manual', $1))"
            " insert into orders (id, channel, external_id, status, channel_status, delivery_mode, dest_lat, dest_lng)"
            " values ($1, 'manual', $1, 'allocated', 'paid', 'ship', $2, $3)", order_id, LAT, LNG)
        await conn.execute("insert into fulfillments (id, order_id, node_id, status) values ($1, $2, $3, 'allocated')",
                           fid, order_id, node)
        await conn.execute("insert into reservations (fulfillment_id, sku, order_id, node_id, quantity, state)"
                           " values ($1, $2, $3, $4, 5, 'reserved')", fid, sku, order_id, node)
    await services.redis.hincrby(inventory.reserved_key(node), sku, 5)
    try:
        bad = await summary(client)
        over = bad["oversell"]
        assert not over["ok"]
        assert over["count"] == 1
        assert over["postgres"] == [{"node_id": node, "sku": sku, "on_hand": 1, "reserved": 5}]
        assert over["redis_count"] == 1
        assert over["redis"] == [{"node_id": node, "sku": sku, "on_hand": 1, "reserved": 5}]
        m = await scrape(client)
        assert sample(m, "oms_oversold_pairs", source="postgres") == 1
        assert sample(m, "oms_oversold_pairs", source="redis") == 1
    finally:
        async with services.pool.acquire() as conn:
            await conn.execute("delete from orders where id = $1", order_id)  # cascades to its rows
        await services.redis.hincrby(inventory.reserved_key(node), sku, -5)
        await services.redis.hdel(inventory.reserved_key(node), sku)

    fixed = await summary(client)
    assert fixed["oversell"] == {"ok": True, "count": 0, "postgres": [], "redis_count": 0, "redis": []}
    m = await scrape(client)
    assert sample(m, "oms_oversold_pairs", source="postgres") == 0


# ---- several workers, one truth ---------------------------------------------------------------

def _facts(s: dict) -> dict:
    """What must be the same whoever answers (not the clock-dependent minute buckets)."""
    return {k: s[k] for k in ("since", "totals", "channels", "backorders", "out_of_stock", "open_picks",
                              "at_risk_total", "routing", "oversell", "map_version")} | {
        "stores": [{k: v for k, v in x.items()} for x in s["stores"]],
        "at_risk": [{k: v for k, v in x.items() if k != "minutes_left"} for x in s["at_risk"]],
        "per_minute": {m: t for m, t in zip(s["orders_per_minute"]["minutes"], s["orders_per_minute"]["total"]) if t},
    }


async def test_two_worker_processes_report_one_truth(settings, client, world, tmp_path):
    node = await world.node("two", LAT, LNG)
    sku = await world.sku("two-sku", 1500)
    await world.stock(node, sku, 20)
    server = Server(settings, tmp_path, workers=2)
    try:
        await server.wait_ready()
        headers = {"Authorization": f"Bearer {settings.admin_token}"}

        async def one(path: str, **kw) -> httpx.Response:
            # a connection of its own, so the kernel may hand it to either worker
            async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as c:
                return await c.request(kw.pop("method", "GET"), path, **kw)

        bodies = [world.order(f"two-{i}", [(sku, 1)], channel="miniprogram") for i in range(6)]
        answers = await asyncio.gather(*(one("/orders", method="POST", json=b) for b in bodies))
        assert all(a.status_code == 201 for a in answers), [a.text for a in answers]
        assert [a.json()["status"] for a in answers] == ["allocated"] * 6, [a.json()["reason"] for a in answers]

        summaries: dict[str, list[dict]] = {}
        scrapes: dict[str, list[dict]] = {}
        for _ in range(20):
            batch = await asyncio.gather(*(one("/ops/summary", params={"fresh": "true"}) for _ in range(6)),
                                         *(one("/metrics") for _ in range(6)))
            for r in batch:
                assert r.status_code == 200, r.text
                pid = r.headers["x-oms-worker"]
                if r.url.path == "/metrics":
                    scrapes.setdefault(pid, []).append(parse_metrics(r.text))
                else:
                    summaries.setdefault(pid, []).append(r.json())
            if len(summaries) >= 2 and len(scrapes) >= 2:
                break
        assert len(summaries) >= 2 and len(scrapes) >= 2, (
            f"only one worker answered: summaries {list(summaries)}, metrics {list(scrapes)}")

        facts = [_facts(s) for answers in summaries.values() for s in answers]
        assert all(f == facts[0] for f in facts)
        assert channel_row(next(iter(summaries.values()))[0], "miniprogram")["orders"] >= 6
        assert store_row(next(iter(summaries.values()))[0], node)["open_picks"] == 6
        # the server's counters started with it: every worker reports all six orders
        for answers in scrapes.values():
            for m in answers:
                assert sample(m, "oms_orders_received_total", channel="miniprogram") == 6
                assert sample(m, "oms_order_outcomes_total", channel="miniprogram", outcome="accepted") == 6
                assert sample(m, "oms_routing_decision_seconds_count") == 6
                assert sample(m, "oms_open_picks", node=node) == 6
    finally:
        server.stop()
