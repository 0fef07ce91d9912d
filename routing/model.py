"""Routing value types: nodes, requests, weights and plans (frozen msgspec Structs)."""

from __future__ import annotations

from enum import StrEnum

import msgspec


class Mode(StrEnum):
    """How the customer receives the order."""

    DELIVERY = "delivery"  # same-city one-hour courier from a store
    PICKUP = "pickup"  # collected at a store the customer named
    SHIP = "ship"  # parcel, any distance


class NodeKind(StrEnum):
    """A fulfilment node is a store or a warehouse."""

    STORE = "store"
    WAREHOUSE = "warehouse"


class Role(StrEnum):
    """What an allocation does: serve the customer, or transfer stock to the pickup store."""

    SERVE = "serve"
    TRANSFER = "transfer"


class Strategy(StrEnum):
    """Which kind of plan was chosen."""

    SINGLE = "single"
    SPLIT = "split"
    TRANSFER = "transfer"
    ALTERNATIVES = "alternatives"
    NONE = "none"


class RouteNode(msgspec.Struct, frozen=True):
    """A warehouse or store as the router sees it."""

    id: str
    kind: NodeKind
    lat: float
    lng: float
    capabilities: frozenset[str]  # subset of {"delivery", "pickup", "ship"}
    delivery_radius_m: int
    capacity_per_hour: int  # orders picked per hour
    open_picks: int = 0  # orders already waiting to be picked
    city: str | None = None


class RouteLine(msgspec.Struct, frozen=True):
    """One SKU and how many units of it."""

    sku: str
    quantity: int


class RouteRequest(msgspec.Struct, frozen=True):
    """One order to route."""

    ref: str
    mode: Mode
    lat: float
    lng: float
    lines: tuple[RouteLine, ...]
    pickup_node_id: str | None = None
    minutes_left: float | None = None  # delivery: minutes until the promise is due
    approximate: bool = False  # destination is a district centre, not a geocoded point


class CostWeights(msgspec.Struct, frozen=True):
    """Cost model. One cost point is about one courier-kilometre."""

    shipment: float = 3.0  # paid by every shipment, so each extra one is the split penalty
    per_km: float = 1.0  # courier distance (delivery) and transfer distance (pickup)
    ship_per_km: float = 0.01  # parcel price grows slowly with distance
    store_ship: float = 8.0  # a store packing a parcel costs more than a warehouse: warehouses first
    # Load penalty per minute of picking backlog: 20 queued minutes outweigh a 2 km longer ride
    # (a 1 km store with a 30 min queue delivers in ~53 min, a 3 km idle one in ~29).
    per_queue_minute: float = 0.1
    max_queue_minutes: float = 480.0  # caps the load penalty so a stalled node cannot blow up costs
    # routing's ETA to the door is queue + handling + ride; a caller's promise arrives as the
    # request's minutes_left
    handling_minutes: float = 20.0  # pick, pack and hand-over to the courier, per delivery
    courier_kmh: float = 20.0  # e-bike speed for the riding part of the one-hour promise
    transfer: float = 5.0  # fixed cost of a transfer to the pickup store
    transfer_minutes: float = 120.0  # fixed lead time of a transfer (dispatch + handling)
    transfer_kmh: float = 30.0  # van speed for the transfer's travel part
    max_alternatives: int = 3  # pickup: how many whole-order stores to offer
    # Waves: what leaving an order unserved (or delivering it after its promise) costs: a
    # backorder, a coupon, a later run. Above any real shipment, so a wave serves all it can.
    unserved_order: float = 30.0
    solver_seconds: float = 0.5  # wall-clock limit for one CP-SAT split decision


class Allocation(msgspec.Struct, frozen=True):
    """Lines one node fulfils (or transfers to the pickup store)."""

    node_id: str
    lines: tuple[RouteLine, ...]
    distance_m: float  # node -> customer; transfer: node -> pickup store; pickup serve: 0
    role: str = Role.SERVE
    # delivery: ETA; ship: picked; pickup: ready to collect; None if the node cannot pick at all
    ready_in_minutes: float | None = None
    cost: float = 0.0


class Unserved(msgspec.Struct, frozen=True):
    """Units of one SKU the plan cannot fulfil, and why."""

    sku: str
    quantity: int
    reason: str


class Plan(msgspec.Struct, frozen=True):
    """The routing decision for one order."""

    allocations: tuple[Allocation, ...]
    unserved: tuple[Unserved, ...]
    strategy: str  # Strategy value
    reason: str  # short, for ops
    cost: float  # sum of the allocations' costs (serving at the named pickup store costs 0)
    alternatives: tuple[str, ...] = ()  # pickup: nearest stores that could serve the whole order
    decision_us: int = 0

    @property
    def complete(self) -> bool:
        """True when every line is allocated."""
        return not self.unserved and bool(self.allocations)

    @property
    def shipments(self) -> int:
        """Number of nodes that pick for this order."""
        return len(self.allocations)


class WavePlan(msgspec.Struct, frozen=True):
    """Plans for a wave of orders decided together."""

    plans: tuple[Plan, ...]  # same order as the requests
    cost: float  # shipments + distance + load over all served orders
    unserved_orders: int  # orders with at least one unserved line
    load: tuple[tuple[str, int], ...]  # (node id, shipments assigned in this wave), by node id
    method: str  # "flow" | "greedy" | "greedy-blind"
    solve_ms: float
    rounds: int = 0  # flow rounds needed to settle stock conflicts
    late_orders: int = 0  # delivery orders planned to arrive after their promise (greedy-blind only)
    objective: float = 0.0  # cost + weights.unserved_order per order unserved or late: what waves minimise
