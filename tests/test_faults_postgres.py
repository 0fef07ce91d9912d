"""PostgreSQL stopped: every endpoint answers 503 with a retry hint, never 500 (the socket file is
gone: FileNotFoundError; refused; reset), and the service recovers by itself when it is back."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import msgspec
import pytest

from oms.infra import embedded
from oms.wiring import Services

LAT, LNG = 30.2741, 120.1551  # Hangzhou: away from the other tests' Shanghai stores
ADMIN = {"Authorization": "Bearer test-admin-token"}


def restart_postgres(data_dir) -> None:
    import pgserver

    pgserver.postgres_server.PostgresServer._instances.pop((data_dir / "pg").resolve(), None)
    embedded.postgres_url(data_dir)


@pytest.fixture
async def own_postgres(settings, tmp_path):
    """Services and an app on a PostgreSQL and Redis of their own, which the test may stop."""
    from oms.app import create_app

    pg_url = await asyncio.to_thread(embedded.postgres_url, tmp_path)
    mine = msgspec.structs.replace(settings, database_url=pg_url, redis_url=embedded.redis_url(tmp_path))
    svc = await Services.start(mine)
    app = create_app(mine)
    app.state.services = svc
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://oms.test",
                                 headers=ADMIN, timeout=30) as client:
        yield svc, client, tmp_path
    await svc.close()
    await asyncio.to_thread(embedded.stop_postgres, tmp_path)
    embedded.stop_redis(tmp_path)


async def test_postgres_stopped_every_endpoint_is_503_never_500_and_it_recovers(own_postgres):
    svc, client, tmp_path = own_postgres
    assert (await client.put("/nodes/pg-a", json={"kind": "store", "name": "a", "lat": LAT, "lng": LNG,
                                                  "capabilities": ["delivery", "pickup", "ship"],
                                                  "delivery_radius_m": 5000, "capacity_per_hour": 60})).status_code == 201
    assert (await client.put("/skus/pg-sku", json={"name": "s", "unit_price": 100})).status_code == 200
    assert (await client.put("/inventory/pg-a/pg-sku", json={"on_hand": 10})).status_code == 200
    order = {"channel": "manual", "external_id": "pg-1", "delivery_mode": "delivery",
             "destination": {"lat": LAT, "lng": LNG, "address": "x"},
             "lines": [{"sku": "pg-sku", "quantity": 1, "unit_price": 100}]}
    first = (await client.post("/orders", json=order)).json()
    token = (await client.post("/nodes/pg-a/tokens", json={})).json()["token"]
    doc = (await client.get("/schema/openapi.json")).json()

    await asyncio.to_thread(embedded.stop_postgres, tmp_path)
    values = {"node_id": "pg-a", "sku": "pg-sku", "order_id": first["id"], "code": "123456", "channel": "manual",
              "platform_sku_id": "p1", "token_id": "t1"}
    bodies = {"/orders": order | {"external_id": "pg-2"}, "/inventory/{node_id}/{sku}": {"on_hand": 3},
              "/nodes/{node_id}": {"kind": "store", "name": "a", "lat": LAT, "lng": LNG},
              "/skus/{sku}": {"name": "s"}, "/sku-map/{channel}/{platform_sku_id}": {"sku": "pg-sku"}}
    answers = {}
    for path, ops in doc["paths"].items():
        url = re.sub(r"\{([^}:]+)(:[^}]*)?\}", lambda m: values.get(m.group(1), "x"), path)
        for method in ops:
            if method not in ("get", "post", "put", "delete"):
                continue
            headers = {"Authorization": f"Bearer {token}"} if path.startswith("/stores") else {}
            key = re.sub(r"\{([^}:]+):[^}]*\}", r"{\1}", path)
            r = await client.request(method.upper(), url, json=bodies.get(key, {}), headers=headers)
            answers[(method, path)] = r.status_code
            assert r.status_code != 500, (method, url, r.text)
            if r.status_code == 503 and not path.startswith("/webhooks"):  # those answer in the platform's format
                assert "retry" in r.text.lower() or r.headers.get("retry-after"), (method, url, r.text)
    must = [("post", "/orders"), ("get", "/orders/{order_id}"), ("get", "/orders"), ("get", "/nodes"),
            ("put", "/inventory/{node_id}/{sku}"), ("get", "/healthz"), ("get", "/ops/summary"),
            ("post", "/orders/{order_id}/cancel"), ("get", "/stores/{node_id}/picklist")]
    for k in must:
        assert answers.get(k) == 503, (k, answers.get(k), answers)
    assert (await client.get("/healthz")).headers.get("retry-after")

    # back by itself: no restart of the service
    await asyncio.to_thread(restart_postgres, tmp_path)
    deadline = time.monotonic() + 30
    while True:
        r = await client.post("/orders", json=order | {"external_id": "pg-3"})
        if r.status_code == 201:
            break
        assert r.status_code == 503 and time.monotonic() < deadline, r.text
        await asyncio.sleep(0.3)
    assert r.json()["status"] == "allocated"
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get(f"/orders/{first['id']}")).json()["status"] == "allocated"
