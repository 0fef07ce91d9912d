"""Bad input of any shape: a 4xx that names the field or rule, nothing written, never a 5xx."""

from __future__ import annotations

import copy
import json

HOSTILE = [None, "", "x", -1, 0, 2**70, 1.5, [], {}, True, "9" * 80, "2026-13-45T99:00:00"]


def _paths(value, prefix=()):
    """Every key path in a JSON document."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


def _mutations(doc):
    for path in _paths(doc):
        for bad in HOSTILE + ["<delete>"]:
            mutated = copy.deepcopy(doc)
            parent = mutated
            for key in path[:-1]:
                parent = parent[key]
            if bad == "<delete>":
                del parent[path[-1]]
            else:
                parent[path[-1]] = bad
            yield path, bad, mutated


async def test_every_mangled_order_is_answered_without_a_5xx_and_rejections_write_nothing(world, client, services):
    node = await world.node("bad", 31.2304, 121.4737)
    sku = await world.sku("bad")
    await world.stock(node, sku, 1000)
    valid = world.order("bad-base", [(sku, 1)], paid_at="2026-11-11T00:00:01+08:00")
    count = 0
    for i, (path, bad, body) in enumerate(_mutations(valid)):
        if isinstance(body.get("external_id"), str):
            body["external_id"] = f"{valid['external_id']}-{i}"
        r = await client.post("/orders", content=json.dumps(body))
        assert r.status_code < 500, (path, bad, r.text)
        if r.status_code >= 400:
            payload = r.json()
            assert payload["error"] and payload["message"], (path, bad, payload)
            if isinstance(body.get("external_id"), str):
                n = await services.pool.fetchval("select count(*) from orders where external_id = $1", body["external_id"])
                assert n == 0, (path, bad)
        count += 1
    assert count > 150


async def test_broken_bodies_and_wrong_types_get_400_naming_the_problem(client):
    cases = [
        (b"{", "not valid JSON"),
        (b"[]", None),
        (b'"text"', None),
        (b"", None),
        (json.dumps({"channel": "manual"}).encode(), "external_id"),
        (json.dumps({"channel": "nope", "external_id": "e", "delivery_mode": "ship",
                     "destination": {"lat": 31, "lng": 121}, "lines": [{"sku": "a", "quantity": 1}]}).encode(), "channel"),
        (json.dumps({"channel": "manual", "external_id": "e", "delivery_mode": "ship",
                     "destination": {"lat": 91, "lng": 121}, "lines": [{"sku": "a", "quantity": 1}]}).encode(), "destination.lat"),
        (json.dumps({"channel": "manual", "external_id": "e", "delivery_mode": "ship",
                     "destination": {"lat": 31, "lng": 121}, "lines": []}).encode(), "lines"),
    ]
    for body, named in cases:
        r = await client.post("/orders", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, (body, r.status_code, r.text)
        if named:
            assert named in r.text, (body, r.text)


async def test_other_admin_paths_refuse_bad_input_with_4xx(client, world):
    node = await world.node("badn", 31.2, 121.4)
    sku = await world.sku("badn")
    for path, body in [
        (f"/nodes/{node}", {"kind": "shop", "name": "x", "lat": 0, "lng": 0}),
        (f"/nodes/{node}", {"kind": "store", "name": "x", "lat": 200, "lng": 0}),
        ("/nodes/bad id!", {"kind": "store", "name": "x", "lat": 0, "lng": 0}),
        (f"/inventory/{node}/{sku}", {"on_hand": "many"}),
        (f"/inventory/{node}/{sku}", {}),
        (f"/inventory/{node}/nope-{world.uid}", {"on_hand": 1}),
    ]:
        r = await client.put(path, json=body)
        assert 400 <= r.status_code < 500, (path, body, r.text)
        assert r.json()["message"]
    r = await client.get(f"/inventory/{sku}?lat=31")
    assert r.status_code == 400 and "lng" in r.text
