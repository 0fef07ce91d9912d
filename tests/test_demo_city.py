"""Pure data checks for oms.demo_city (no servers, no I/O)."""

from __future__ import annotations

import math

import msgspec

from oms.demo.city import HOT_STORE_UNITS, HOT_WAREHOUSE_UNITS
from oms.demo.city import (
    DEMO_NODES,
    DEMO_SKUS,
    DEMO_WAREHOUSE_ID,
    SHANGHAI_DISTRICTS,
    DemoNode,
    DemoSku,
    demo_stock,
    HOT_SKU,
    SALE_SKUS,
)

LAT_MIN, LAT_MAX = 30.7, 31.9
LNG_MIN, LNG_MAX = 120.85, 122.0


def _sh_nodes() -> list[DemoNode]:
    return [n for n in DEMO_NODES if n.id.startswith("SH-")]


def _haversine_m(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    r = 6_371_000.0
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lng2 - lng1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(math.sqrt(a))


def test_shanghai_has_one_warehouse_and_at_least_44_stores() -> None:
    sh = _sh_nodes()
    warehouses = [n for n in sh if n.kind == "warehouse"]
    stores = [n for n in sh if n.kind == "store"]
    assert len(warehouses) == 1
    wh = warehouses[0]
    assert wh.id == DEMO_WAREHOUSE_ID
    assert wh.capabilities == ("ship",)
    assert wh.delivery_radius_m == 0
    assert wh.capacity_per_hour == 2000
    assert len(stores) >= 44
    # no warehouse outside Shanghai
    assert all(n.kind == "store" for n in DEMO_NODES if not n.id.startswith("SH-"))


def test_shanghai_coordinates_within_bounds() -> None:
    for n in _sh_nodes():
        assert LAT_MIN <= n.lat <= LAT_MAX, n
        assert LNG_MIN <= n.lng <= LNG_MAX, n
        assert round(n.lat, 6) == n.lat and round(n.lng, 6) == n.lng, n


def test_hangzhou_stores() -> None:
    hz = [n for n in DEMO_NODES if n.id.startswith("HZ-")]
    assert [n.id for n in hz] == ["HZ-ST-001", "HZ-ST-002", "HZ-ST-003"]
    for n in hz:
        assert n.kind == "store"
        # Hangzhou city centre area, well outside Shanghai's box
        assert 30.1 <= n.lat <= 30.4 and 120.0 <= n.lng <= 120.35, n
        assert not (LAT_MIN <= n.lat <= LAT_MAX and LNG_MIN <= n.lng <= LNG_MAX)


def test_ids_unique_and_well_formed() -> None:
    ids = [n.id for n in DEMO_NODES]
    assert len(ids) == len(set(ids))
    for n in DEMO_NODES:
        prefix = "WH" if n.kind == "warehouse" else "ST"
        assert n.id.split("-")[1] == prefix, n.id
    # no two nodes at the exact same spot
    coords = [(n.lat, n.lng) for n in DEMO_NODES]
    assert len(coords) == len(set(coords))


def test_store_attributes() -> None:
    for n in DEMO_NODES:
        if n.kind != "store":
            continue
        assert n.name.strip() and any("\u4e00" <= ch <= "\u9fff" for ch in n.name), n.name
        assert any(ch.isascii() and ch.isalpha() for ch in n.name), n.name
        assert set(n.capabilities) <= {"delivery", "pickup", "ship"}
        assert "delivery" in n.capabilities and "pickup" in n.capabilities
        assert 3000 <= n.delivery_radius_m <= 5000
        assert 20 <= n.capacity_per_hour <= 80
    ship_stores = [n for n in DEMO_NODES if n.kind == "store" and "ship" in n.capabilities]
    stores = [n for n in DEMO_NODES if n.kind == "store"]
    assert 1 <= len(ship_stores) < len(stores) // 2


def test_districts_coverage() -> None:
    assert len(set(SHANGHAI_DISTRICTS)) == 16
    stores = [n for n in _sh_nodes() if n.kind == "store"]
    assert {n.district for n in stores} <= set(SHANGHAI_DISTRICTS)
    covered = {n.district for n in stores}
    missing = set(SHANGHAI_DISTRICTS) - covered
    assert len(missing) <= 2, missing


def test_some_landmarks_are_plausible() -> None:
    by_name = {n.name.split()[0]: n for n in DEMO_NODES}
    expected = {
        "徐家汇店": (31.1950, 121.4370),
        "人民广场店": (31.2320, 121.4750),
        "陆家嘴店": (31.2400, 121.5050),
    }
    for key, (lat, lng) in expected.items():
        n = by_name[key]
        assert _haversine_m(n.lat, n.lng, lat, lng) < 1500, n


def test_skus() -> None:
    assert len(DEMO_SKUS) >= 200
    codes = [s.sku for s in DEMO_SKUS]
    assert len(codes) == len(set(codes))
    for s in DEMO_SKUS:
        assert isinstance(s, DemoSku)
        assert s.sku.startswith("SKU-")
        assert isinstance(s.unit_price_fen, int) and s.unit_price_fen > 0
        assert s.name.strip()
    assert "SKU-TEE-WHT-M" in set(codes)


def test_structs_roundtrip_msgspec() -> None:
    raw = msgspec.json.encode(DEMO_NODES)
    assert msgspec.json.decode(raw, type=tuple[DemoNode, ...]) == DEMO_NODES
    raw = msgspec.json.encode(DEMO_SKUS)
    assert msgspec.json.decode(raw, type=tuple[DemoSku, ...]) == DEMO_SKUS


def test_demo_stock_deterministic_and_referentially_sound() -> None:
    a = demo_stock()
    b = demo_stock()
    assert a == b
    assert demo_stock(11) == a
    assert demo_stock(12) != a

    node_kind = {n.id: n.kind for n in DEMO_NODES}
    sku_codes = {s.sku for s in DEMO_SKUS}
    seen: set[tuple[str, str]] = set()
    per_node: dict[str, int] = {}
    for node_id, sku, qty in a:
        assert node_id in node_kind
        assert sku in sku_codes
        assert (node_id, sku) not in seen
        seen.add((node_id, sku))
        per_node[node_id] = per_node.get(node_id, 0) + 1
        if sku == HOT_SKU:
            assert qty == (HOT_WAREHOUSE_UNITS if node_kind[node_id] == "warehouse" else HOT_STORE_UNITS)
        elif node_kind[node_id] == "warehouse":
            assert (1500 <= qty <= 2500) if sku in SALE_SKUS else (100 <= qty <= 500)
        elif sku in SALE_SKUS:
            assert qty >= 8  # the bestsellers in depth at every store
        else:
            assert 0 <= qty <= 8

    # warehouse holds every SKU
    assert per_node[DEMO_WAREHOUSE_ID] == len(DEMO_SKUS)
    # each store holds the bestsellers and roughly 30% of the rest
    for n in DEMO_NODES:
        if n.kind == "store":
            share = per_node.get(n.id, 0) / len(DEMO_SKUS)
            assert 0.3 <= share <= 0.55, (n.id, share)
