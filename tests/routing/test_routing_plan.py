"""Routing decisions on a small Shanghai city: one example per rule."""

from __future__ import annotations

import random

import msgspec
import pytest

from routing import CostWeights, Mode, Network, Role, Strategy, plan
from routing_testkit import CENTRE, allocated, order, served, store, warehouse

NEAR = store("S-near", 0.005)  # 0.6 km north
MID = store("S-mid", 0.015, radius=5000)  # 1.7 km north
SMALL = store("S-small", -0.025, radius=1000)  # 2.8 km south, radius 1 km: does not reach the centre
NODELIV = store("S-pickup-only", 0.002, caps={"pickup"})  # nearest, but neither delivers nor ships
WH = warehouse("W-jiading", 31.38, 121.25)  # ~28 km away
BEIJING = store("S-beijing", 0.0, base=(39.9042, 116.4074))
CITY = [NEAR, MID, SMALL, NODELIV, WH, BEIJING]


@pytest.fixture(scope="module")
def net() -> Network:
    return Network(CITY)


def test_delivery_prefers_nearest_node_with_full_stock(net: Network) -> None:
    stock = {"S-near": {"A": 2, "B": 1}, "S-mid": {"A": 5, "B": 5}}
    p = plan(net, order(Mode.DELIVERY, ("A", 2), ("B", 1)), stock)
    assert p.strategy == Strategy.SINGLE
    assert [a.node_id for a in p.allocations] == ["S-near"]
    assert p.reason.startswith("nearest store with full stock, 0.6 km")
    assert not p.unserved


def test_delivery_excludes_node_outside_its_radius(net: Network) -> None:
    stock = {"S-small": {"A": 9}}
    req = order(Mode.DELIVERY, ("A", 1))
    assert "S-small" not in net.candidates(req)
    p = plan(net, req, stock)
    assert p.allocations == ()
    assert p.unserved[0].sku == "A" and "out of stock" in p.unserved[0].reason


def test_delivery_and_ship_respect_capabilities(net: Network) -> None:
    stock = {"S-pickup-only": {"A": 9}, "S-mid": {"A": 1}}
    for mode in (Mode.DELIVERY, Mode.SHIP):
        req = order(mode, ("A", 1))
        assert "S-pickup-only" not in net.candidates(req)
        assert [a.node_id for a in plan(net, req, stock).allocations] == ["S-mid"]


def test_delivery_skips_a_store_whose_queue_breaks_the_promise(net: Network) -> None:
    busy = net.with_loads({"S-near": 30})  # 30 picks at 30/h: a 60 min queue
    stock = {"S-near": {"A": 1}, "S-mid": {"A": 1}}
    req = order(Mode.DELIVERY, ("A", 1), minutes_left=45.0)
    p = plan(busy, req, stock)
    assert [a.node_id for a in p.allocations] == ["S-mid"]
    assert p.allocations[0].ready_in_minutes is not None and p.allocations[0].ready_in_minutes <= 45.0
    assert [a.node_id for a in plan(net, req, stock).allocations] == ["S-near"]  # unloaded copy unchanged
    late = plan(busy.with_loads({"S-mid": 30}), req, stock)
    assert late.strategy == Strategy.NONE and "45-min promise" in late.unserved[0].reason


def test_excluded_node_is_not_used(net: Network) -> None:
    stock = {"S-near": {"A": 1}, "S-mid": {"A": 1}}
    p = plan(net, order(Mode.DELIVERY, ("A", 1)), stock, exclude=frozenset({"S-near"}))
    assert [a.node_id for a in p.allocations] == ["S-mid"]


def test_one_node_beats_two_nearer_ones_when_it_holds_everything() -> None:
    # Z alone costs 3 + 4.4 km; X + Y would cost 2 x (3 + 0.1 km), less, but split only when needed.
    net = Network([store("X", 0.001), store("Y", -0.001), store("Z", 0.04, radius=5000)])
    stock = {"X": {"A": 1}, "Y": {"B": 1}, "Z": {"A": 1, "B": 1}}
    p = plan(net, order(Mode.DELIVERY, ("A", 1), ("B", 1)), stock)
    assert p.strategy == Strategy.SINGLE and [a.node_id for a in p.allocations] == ["Z"]
    assert p.cost > 2 * CostWeights().shipment + 0.3


def test_quantity_is_split_when_no_node_holds_enough() -> None:
    net = Network([store("X", 0.001), store("Y", 0.002), store("Z", 0.003)])
    p = plan(net, order(Mode.DELIVERY, ("A", 3), ("B", 1)), {"X": {"A": 2}, "Y": {"A": 1}, "Z": {"A": 1, "B": 1}})
    assert p.strategy == Strategy.SPLIT and not p.unserved
    assert allocated(p) == {("X", "A"): 2, ("Z", "A"): 1, ("Z", "B"): 1}
    p = plan(net, order(Mode.DELIVERY, ("A", 2), ("B", 1)), {"X": {"A": 1}, "Y": {"A": 1}, "Z": {"B": 1}})
    assert allocated(p) == {("X", "A"): 1, ("Y", "A"): 1, ("Z", "B"): 1} and p.reason.startswith("split into 3")


def test_split_only_when_no_node_holds_every_line(net: Network) -> None:
    stock = {"S-near": {"A": 1}, "S-mid": {"B": 2}}
    p = plan(net, order(Mode.DELIVERY, ("A", 1), ("B", 2)), stock)
    assert p.strategy == Strategy.SPLIT
    assert allocated(p) == {("S-near", "A"): 1, ("S-mid", "B"): 2}
    assert p.reason.startswith("split into 2") and "S-near lacks B" in p.reason
    assert p.cost == pytest.approx(sum(a.cost for a in p.allocations))


def test_unservable_line_is_reported_and_the_rest_served(net: Network) -> None:
    stock = {"S-near": {"A": 1, "B": 1}}
    p = plan(net, order(Mode.DELIVERY, ("A", 1), ("B", 3), ("Z", 1)), stock)
    assert served(p) == {"A": 1, "B": 1}
    assert {(u.sku, u.quantity) for u in p.unserved} == {("B", 2), ("Z", 1)}
    assert all(u.reason for u in p.unserved)


def test_ship_prefers_a_warehouse_then_a_store(net: Network) -> None:
    req = order(Mode.SHIP, ("A", 1))
    p = plan(net, req, {"W-jiading": {"A": 1}, "S-near": {"A": 1}})
    assert [a.node_id for a in p.allocations] == ["W-jiading"]
    assert net.candidates(req)[0] == "W-jiading"
    p = plan(net, req, {"S-near": {"A": 1}})
    assert [a.node_id for a in p.allocations] == ["S-near"] and "no warehouse" in p.reason


def test_pickup_at_the_named_store_in_another_city(net: Network) -> None:
    # Ordered from Shanghai, collected in Beijing: the named store decides, not the destination.
    stock = {"S-beijing": {"A": 1}, "S-near": {"A": 5}}
    p = plan(net, order(Mode.PICKUP, ("A", 1), pickup_node_id="S-beijing"), stock)
    assert p.strategy == Strategy.SINGLE
    assert [(a.node_id, a.role) for a in p.allocations] == [("S-beijing", Role.SERVE)]


def test_pickup_transfers_missing_lines_from_the_nearest_holder(net: Network) -> None:
    stock = {"S-near": {"A": 1}, "S-mid": {"B": 1}, "W-jiading": {"B": 1}}
    p = plan(net, order(Mode.PICKUP, ("A", 1), ("B", 1), pickup_node_id="S-near"), stock)
    assert p.strategy == Strategy.TRANSFER
    assert [(a.node_id, a.role) for a in p.allocations] == [("S-near", Role.SERVE), ("S-mid", Role.TRANSFER)]
    transfer = p.allocations[1]
    assert transfer.lines[0].sku == "B" and transfer.distance_m == pytest.approx(1112, abs=20)
    w = CostWeights()
    assert p.allocations[0].ready_in_minutes is not None and p.allocations[0].ready_in_minutes >= w.transfer_minutes
    assert "lacks B" in p.reason


def test_pickup_offers_alternatives_when_nothing_can_be_transferred(net: Network) -> None:
    # S-pickup-only holds everything but cannot dispatch; nobody that ships holds B.
    stock = {"S-near": {"A": 1}, "S-pickup-only": {"A": 1, "B": 1}}
    p = plan(net, order(Mode.PICKUP, ("A", 1), ("B", 1), pickup_node_id="S-near"), stock)
    assert p.strategy == Strategy.ALTERNATIVES
    assert p.alternatives == ("S-pickup-only",)
    assert p.allocations == () and {u.sku for u in p.unserved} == {"A", "B"}


def test_unknown_pickup_store_gives_a_plan_not_an_error(net: Network) -> None:
    req = order(Mode.PICKUP, ("A", 1), pickup_node_id="S-nowhere")
    assert net.candidates(req) == []
    p = plan(net, req, {"S-near": {"A": 1}})
    assert p.strategy == Strategy.NONE and "unknown pickup store" in p.reason
    assert [(u.sku, u.quantity) for u in p.unserved] == [("A", 1)]


def test_approximate_destination_widens_the_radius(net: Network) -> None:
    far = (CENTRE[0] + 0.005 + 0.0285, CENTRE[1])  # 3.17 km from S-near (radius 3 km), 1.5 km from S-mid
    stock = {"S-near": {"A": 1}}
    assert plan(net, order(Mode.DELIVERY, ("A", 1), at=far), stock).allocations == ()
    p = plan(net, order(Mode.DELIVERY, ("A", 1), at=far, approximate=True), stock)
    assert [a.node_id for a in p.allocations] == ["S-near"]


def test_same_input_gives_the_same_plan_whatever_the_node_order() -> None:
    # Two equally good stores: the tie goes to the smaller id, however the nodes are listed.
    twins = [store("S-b", 0.01), store("S-a", 0.01), store("S-c", -0.01), store("S-d", 0.0, 0.012)]
    stock = {"S-a": {"A": 1}, "S-b": {"A": 1, "B": 1}, "S-c": {"B": 1}, "S-d": {"C": 1}}
    req = order(Mode.DELIVERY, ("A", 1), ("B", 1), ("C", 1))
    plans = []
    for seed in range(5):
        nodes = list(twins)
        random.Random(seed).shuffle(nodes)
        p = plan(Network(nodes), req, stock)
        plans.append(msgspec.structs.replace(p, decision_us=0))
    assert all(p == plans[0] for p in plans)
    assert plans[0].strategy == Strategy.SPLIT and {a.node_id for a in plans[0].allocations} == {"S-b", "S-d"}
    single = plan(Network(twins), order(Mode.DELIVERY, ("A", 1)), {"S-a": {"A": 1}, "S-b": {"A": 1}})
    assert [a.node_id for a in single.allocations] == ["S-a"]
