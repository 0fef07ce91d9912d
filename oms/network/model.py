"""Nodes (warehouses and stores): what they are and what they can do."""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec


class NodeKind(enum.StrEnum):
    STORE = "store"
    WAREHOUSE = "warehouse"


class Capability(enum.StrEnum):
    DELIVERY = "delivery"
    PICKUP = "pickup"
    SHIP = "ship"


class NodeIn(msgspec.Struct, frozen=True, kw_only=True):
    """Body of PUT /nodes/{node_id}."""

    kind: NodeKind
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    lat: Annotated[float, msgspec.Meta(ge=-90, le=90)]
    lng: Annotated[float, msgspec.Meta(ge=-180, le=180)]
    capabilities: list[Capability] = []
    delivery_radius_m: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 0
    capacity_per_hour: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 0
    city: str | None = None
    active: bool = True
    #: a hot node's stock split over this many Redis buckets (spread over a Redis Cluster's
    #: shards); 1 = not split. Changing it re-splits the node's stock from PostgreSQL.
    stock_buckets: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1


class Node(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    kind: NodeKind
    name: str
    lat: float
    lng: float
    h3_cell: str
    capabilities: list[Capability]
    delivery_radius_m: int
    capacity_per_hour: int
    city: str | None = None
    active: bool = True
    stock_buckets: int = 1
