"""The H3 index finds exactly the nodes a full scan would, without scanning."""

from __future__ import annotations

import random

import h3
import pytest

from routing import Mode, Network, NodeKind, RouteNode, cell_of, distance_m
from routing.geo import rings_to_cover
from routing_testkit import CENTRE, order, store, warehouse


def _city(seed: int, n: int = 300) -> list[RouteNode]:
    rnd = random.Random(seed)
    nodes = []
    for i in range(n):
        caps = {c for c in ("delivery", "pickup", "ship") if rnd.random() < 0.7}
        nodes.append(
            store(f"S{i:03d}", rnd.uniform(-0.2, 0.2), rnd.uniform(-0.2, 0.2), caps=caps, radius=rnd.choice([500, 1500, 3000, 5000, 8000]))
        )
    nodes.append(warehouse("W1", 31.38, 121.25))
    nodes.append(warehouse("W2", 31.10, 121.80))
    return nodes


@pytest.mark.parametrize(("seed", "limit"), [(1, 1000), (2, 8)])
def test_delivery_candidates_match_a_full_scan(seed: int, limit: int) -> None:
    nodes = _city(seed)
    net = Network(nodes, nearest=10, delivery_limit=limit)
    rnd = random.Random(seed + 100)
    for _ in range(300):
        at = (CENTRE[0] + rnd.uniform(-0.25, 0.25), CENTRE[1] + rnd.uniform(-0.25, 0.25))
        for approximate in (False, True):
            slack = 1000 if approximate else 0
            scan = sorted(
                (distance_m(*at, n.lat, n.lng), n.id)
                for n in nodes
                if "delivery" in n.capabilities and distance_m(*at, n.lat, n.lng) <= n.delivery_radius_m + slack
            )
            got = net.candidates(order(Mode.DELIVERY, ("A", 1), at=at, approximate=approximate))
            assert got == [i for _, i in scan][:limit]


def test_ship_candidates_are_warehouses_then_the_nearest_shipping_stores() -> None:
    nodes = _city(3)
    net = Network(nodes, nearest=10)
    rnd = random.Random(7)
    for _ in range(200):
        at = (CENTRE[0] + rnd.uniform(-0.3, 0.3), CENTRE[1] + rnd.uniform(-0.3, 0.3))
        stores = sorted((distance_m(*at, n.lat, n.lng), n.id) for n in nodes if n.kind == NodeKind.STORE and "ship" in n.capabilities)
        whs = sorted((distance_m(*at, n.lat, n.lng), n.id) for n in nodes if n.kind == NodeKind.WAREHOUSE)
        assert net.candidates(order(Mode.SHIP, ("A", 1), at=at)) == [i for _, i in whs] + [i for _, i in stores[:10]]


def test_pickup_candidates_start_with_the_named_store_and_stay_bounded() -> None:
    nodes = _city(4)
    net = Network(nodes, nearest=12)
    got = net.candidates(order(Mode.PICKUP, ("A", 1), pickup_node_id="S042"))
    assert got[0] == "S042" and len(got) == 1 + 12 + 2 and {"W1", "W2"} <= set(got)
    named = next(n for n in nodes if n.id == "S042")
    by_distance = sorted((distance_m(named.lat, named.lng, n.lat, n.lng), n.id) for n in nodes if n.id != "S042")
    assert [i for _, i in by_distance[:12]] == [i for i in got[1:] if i not in {"W1", "W2"}][:12]
    assert "S042" not in net.candidates(order(Mode.PICKUP, ("A", 1), pickup_node_id="S042"), exclude=frozenset({"S042"}))


def test_widened_offers_every_node_of_the_mode_nearest_first() -> None:
    nodes = _city(6)
    net = Network(nodes, nearest=10, delivery_limit=8)
    wide = net.widened()
    at = CENTRE
    ship = sorted((distance_m(*at, n.lat, n.lng), n.id) for n in nodes if n.kind == NodeKind.STORE and "ship" in n.capabilities)
    whs = sorted((distance_m(*at, n.lat, n.lng), n.id) for n in nodes if n.kind == NodeKind.WAREHOUSE)
    assert wide.candidates(order(Mode.SHIP, ("A", 1), at=at)) == [i for _, i in whs] + [i for _, i in ship]
    assert len(net.candidates(order(Mode.SHIP, ("A", 1), at=at))) == len(whs) + 10  # the narrow one is unchanged (shared cache)
    named = next(n for n in nodes if n.id == "S042")
    around = sorted((distance_m(named.lat, named.lng, n.lat, n.lng), n.id) for n in nodes if n.id != "S042")
    assert wide.candidates(order(Mode.PICKUP, ("A", 1), pickup_node_id="S042")) == ["S042", *(i for _, i in around)]
    for req in (order(Mode.SHIP, ("A", 1), at=at), order(Mode.PICKUP, ("A", 1), pickup_node_id="S042"),
                order(Mode.DELIVERY, ("A", 1), at=at)):
        assert sorted(net.reach(req)) == sorted(wide.candidates(req)), req.mode  # the same nodes, unordered
    assert net.reach(order(Mode.PICKUP, ("A", 1), pickup_node_id="nowhere")) == []
    assert (net.nearest, wide.nearest, wide.delivery_limit) == (10, None, None)
    assert wide.with_loads({"S001": 3}).nearest is None  # a loaded copy stays wide


def test_cell_cache_is_filled_once_per_cell() -> None:
    net = Network(_city(5))
    req = order(Mode.DELIVERY, ("A", 1))
    first = net.candidates(req)
    cache = net._geo.delivery_cache
    assert list(cache) == [cell_of(*CENTRE, 8)]
    assert net.with_loads({"S001": 5}).candidates(req) == first  # the copy shares the index and its cache
    assert len(cache) == 1


def test_rings_cover_the_radius_at_several_latitudes() -> None:
    for lat in (0.0, 31.23, 60.0):
        cell = cell_of(lat, 10.0, 8)
        k = rings_to_cover(cell, 5000)
        disk = set(h3.api.basic_int.grid_disk(cell, k))
        rnd = random.Random(int(lat))
        for _ in range(300):
            # points up to ~5 km from a random point of the cell
            plat, plng = lat + rnd.uniform(-0.003, 0.003), 10.0 + rnd.uniform(-0.003, 0.003)
            if cell_of(plat, plng, 8) != cell:
                continue
            qlat, qlng = plat + rnd.uniform(-0.045, 0.045), plng + rnd.uniform(-0.05, 0.05)
            if distance_m(plat, plng, qlat, qlng) <= 5000:
                assert cell_of(qlat, qlng, 8) in disk


def test_one_point_path_agrees_with_the_batch_path_used_by_waves() -> None:
    import numpy as np

    nodes = _city(5)
    net = Network(nodes, nearest=10, delivery_limit=12)
    rnd = random.Random(55)
    pts = [(CENTRE[0] + rnd.uniform(-0.25, 0.25), CENTRE[1] + rnd.uniform(-0.25, 0.25)) for _ in range(200)]
    lats, lngs = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    pos, idx, _ = net.delivery_pairs(lats, lngs, np.zeros(len(pts), dtype=bool))
    spos, sidx, _ = net.ship_pairs(lats, lngs)
    for k, (lat, lng) in enumerate(pts):
        assert [n.index for n in net.delivery_near(lat, lng)] == idx[pos == k].tolist()
        assert [n.index for n in net.ship_near(lat, lng)] == sidx[spos == k].tolist()
