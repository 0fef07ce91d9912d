"""H3 geo index over fulfilment nodes: which nodes are worth looking at for an order."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import msgspec
import numpy as np
from h3.api import basic_int as h3

from routing.model import Mode, NodeKind, RouteNode, RouteRequest

# Resolution 8: hexagons with ~0.53 km edges (~0.74 km2). A 3-5 km one-hour radius is then
# 6-10 rings (127-331 cells), and a cached cell answers for every address in a city block.
# Res 7 (1.4 km edges) would over-cover the radius by ~3 km and double the distance checks;
# res 9 (0.2 km edges) needs ~25 rings (~1,900 cells) per lookup and 7x more cache entries.
DEFAULT_RESOLUTION = 8
EARTH_RADIUS_M = 6_371_008.8  # mean radius, the one h3.great_circle_distance uses
_CACHE_LIMIT = 100_000  # cells; cleared wholesale when full (a city has ~10k res-8 cells)


class Near(NamedTuple):
    """A node index and its great-circle distance to the point asked about."""

    index: int
    distance_m: float


def cell_of(lat: float, lng: float, resolution: int = DEFAULT_RESOLUTION) -> int:
    """H3 cell (int form, fits a Postgres BIGINT) containing the point."""
    return int(h3.latlng_to_cell(lat, lng, resolution))


def distance_m(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Great-circle distance in metres."""
    return float(h3.great_circle_distance((lat1, lng1), (lat2, lng2), unit="m"))


def _distances_m(lat: float, lng: float, lats: np.ndarray, lngs: np.ndarray) -> np.ndarray:
    """Vectorised haversine from one point to many, metres."""
    p1, p2 = math.radians(lat), np.radians(lats)
    dphi = p2 - p1
    dl = np.radians(lngs) - math.radians(lng)
    a = np.sin(dphi / 2) ** 2 + math.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.minimum(a, 1.0)))


def _cell_radii_m(cell: int) -> tuple[float, float]:
    """(smallest, largest) centre-to-vertex distance of a cell: H3 cells are not perfectly regular."""
    clat, clng = h3.cell_to_latlng(cell)
    d = [distance_m(clat, clng, vlat, vlng) for vlat, vlng in h3.cell_to_boundary(cell)]
    return min(d), max(d)


def rings_to_cover(cell: int, radius_m: float) -> int:
    """Smallest k such that grid_disk(cell, k) holds every cell with a point within radius_m of cell."""
    e_min, e_max = _cell_radii_m(cell)
    # Two cells k rings apart have centres at least 1.5*k*edge apart; a point within radius_m of
    # any point of this cell lies in a cell whose centre is within radius_m + 2*edge. The 0.9 and
    # the +1 absorb H3's distortion between neighbouring cells.
    return math.ceil((radius_m + 2 * e_max) / (1.5 * e_min * 0.9)) + 1


class _GeoIndex:
    """Everything that depends only on where nodes are; shared by with_loads copies."""

    def __init__(
        self, nodes: tuple[RouteNode, ...], resolution: int, nearest: int, approx_slack_m: int
    ) -> None:
        self.resolution = resolution
        self.nearest = nearest
        self.approx_slack_m = approx_slack_m
        self.lats = np.array([n.lat for n in nodes], dtype=float)
        self.lngs = np.array([n.lng for n in nodes], dtype=float)
        self.cells = [cell_of(n.lat, n.lng, resolution) for n in nodes]
        self.radius = np.array([n.delivery_radius_m for n in nodes], dtype=float)
        self.by_cell: dict[int, list[int]] = {}
        for i, n in enumerate(nodes):
            if "delivery" in n.capabilities and n.delivery_radius_m > 0:
                self.by_cell.setdefault(self.cells[i], []).append(i)
        self.max_radius = float(max((n.delivery_radius_m for n in nodes), default=0))
        self.ship_stores = np.array(
            [i for i, n in enumerate(nodes) if n.kind == NodeKind.STORE and "ship" in n.capabilities],
            dtype=np.int64,
        )
        self.ship_warehouses = [
            i for i, n in enumerate(nodes) if n.kind == NodeKind.WAREHOUSE and "ship" in n.capabilities
        ]
        self.warehouses = [i for i, n in enumerate(nodes) if n.kind == NodeKind.WAREHOUSE]
        self.delivery_cache: dict[int, tuple[int, ...]] = {}
        self.ship_cache: dict[int, tuple[int, ...]] = {}
        self.pickup_cache: dict[int, tuple[int, ...]] = {}

    @staticmethod
    def _remember(cache: dict[int, tuple[int, ...]], key: int, value: tuple[int, ...]) -> None:
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()  # bounded memory; the working set refills within seconds
        cache[key] = value

    def delivery_near_cell(self, cell: int) -> tuple[int, ...]:
        """Delivery nodes that could cover some point of this cell (superset; exact check per point)."""
        hit = self.delivery_cache.get(cell)
        if hit is not None:
            return hit
        reach = self.max_radius + self.approx_slack_m
        found: list[int] = []
        if reach > 0 and self.by_cell:
            for c in h3.grid_disk(cell, rings_to_cover(cell, reach)):
                found.extend(self.by_cell.get(c, ()))
        if found:
            # Keep only nodes whose radius (+ slack) reaches the cell at all: cheap, vectorised.
            clat, clng = h3.cell_to_latlng(cell)
            _, e_max = _cell_radii_m(cell)
            idx = np.array(sorted(found), dtype=np.int64)
            d = _distances_m(clat, clng, self.lats[idx], self.lngs[idx])
            keep = d <= self.radius[idx] + self.approx_slack_m + e_max
            result = tuple(int(i) for i in idx[keep])
        else:
            result = ()
        self._remember(self.delivery_cache, cell, result)
        return result

    def nearest_around(self, cell: int, pool: np.ndarray, k: int) -> tuple[int, ...]:
        """Nodes of pool that may be among the k nearest to any point of the cell."""
        if len(pool) <= k:
            return tuple(int(i) for i in pool)
        clat, clng = h3.cell_to_latlng(cell)
        _, e_max = _cell_radii_m(cell)
        d = _distances_m(clat, clng, self.lats[pool], self.lngs[pool])
        kth = float(np.partition(d, k - 1)[k - 1])
        # Triangle inequality: a point of the cell is within e_max of its centre, so its k nearest
        # are all within kth + 2*e_max of the centre. The superset makes the per-point pick exact.
        return tuple(int(i) for i in np.sort(pool[d <= kth + 2 * e_max]))


class Network:
    """Fulfilment nodes with an H3 index built once; candidate lists are cached per cell."""

    def __init__(
        self,
        nodes: Iterable[RouteNode],
        resolution: int = DEFAULT_RESOLUTION,
        *,
        nearest: int = 20,
        approx_slack_m: int = 1000,
    ) -> None:
        ordered = tuple(sorted(nodes, key=lambda n: n.id))  # node order = tie-break order
        ids = [n.id for n in ordered]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate node id")
        if not 0 <= resolution <= 15:
            raise ValueError("H3 resolution must be 0..15")
        self._nodes = ordered
        self._index = {n.id: i for i, n in enumerate(ordered)}
        # nearest: ship-capable stores offered to a parcel order, and transfer/alternative nodes
        # looked at around a pickup store. approx_slack_m widens delivery radii for district-centre
        # destinations, whose real address may be a kilometre or so away.
        self._geo = _GeoIndex(ordered, resolution, nearest, approx_slack_m)

    @property
    def nodes(self) -> tuple[RouteNode, ...]:
        """All nodes, ordered by id."""
        return self._nodes

    @property
    def resolution(self) -> int:
        """H3 resolution of the index."""
        return self._geo.resolution

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._index

    def node(self, node_id: str) -> RouteNode | None:
        """The node with this id, or None."""
        i = self._index.get(node_id)
        return None if i is None else self._nodes[i]

    def index_of(self, node_id: str) -> int | None:
        """Position of the node in `nodes`, or None."""
        return self._index.get(node_id)

    def with_loads(self, open_picks: Mapping[str, int]) -> Network:
        """A copy with new picking queues; shares the H3 index and its caches."""
        clone = object.__new__(Network)
        nodes = list(self._nodes)
        for node_id, picks in open_picks.items():
            i = self._index.get(node_id)
            if i is not None and nodes[i].open_picks != picks:
                nodes[i] = msgspec.structs.replace(nodes[i], open_picks=max(0, int(picks)))
        clone._nodes = tuple(nodes)
        clone._index = self._index
        clone._geo = self._geo
        return clone

    # -- candidate search ------------------------------------------------------------------

    def delivery_near(self, lat: float, lng: float, approximate: bool = False) -> list[Near]:
        """Delivery nodes whose radius covers the point, nearest first (ties by id)."""
        geo = self._geo
        near = geo.delivery_near_cell(cell_of(lat, lng, geo.resolution))
        if not near:
            return []
        idx = np.fromiter(near, dtype=np.int64, count=len(near))
        d = _distances_m(lat, lng, geo.lats[idx], geo.lngs[idx])
        slack = geo.approx_slack_m if approximate else 0
        ok = d <= geo.radius[idx] + slack
        out = [Near(int(i), float(x)) for i, x in zip(idx[ok], d[ok], strict=True)]
        out.sort(key=lambda n: (n.distance_m, n.index))
        return out

    def ship_near(self, lat: float, lng: float) -> list[Near]:
        """Ship-capable warehouses (all), then the nearest ship-capable stores."""
        geo = self._geo
        cell = cell_of(lat, lng, geo.resolution)
        pool = geo.ship_cache.get(cell)
        if pool is None:
            pool = geo.nearest_around(cell, geo.ship_stores, geo.nearest)
            geo._remember(geo.ship_cache, cell, pool)
        stores = self._sorted_from(lat, lng, pool)[: geo.nearest]
        return self._sorted_from(lat, lng, geo.ship_warehouses) + stores

    def around_store(self, store_index: int) -> list[Near]:
        """Nodes near a pickup store (transfer sources, alternatives) plus every warehouse."""
        geo = self._geo
        pool = geo.pickup_cache.get(store_index)
        if pool is None:
            others = np.array([i for i in range(len(self._nodes)) if i != store_index], dtype=np.int64)
            node = self._nodes[store_index]
            d = _distances_m(node.lat, node.lng, geo.lats[others], geo.lngs[others])
            order = np.lexsort((others, d))[: geo.nearest]
            chosen = {int(i) for i in others[order]} | (set(geo.warehouses) - {store_index})
            pool = tuple(sorted(chosen))
            geo._remember(geo.pickup_cache, store_index, pool)
        node = self._nodes[store_index]
        return self._sorted_from(node.lat, node.lng, pool)

    def _sorted_from(self, lat: float, lng: float, pool: Iterable[int]) -> list[Near]:
        idx = np.fromiter(pool, dtype=np.int64)
        if len(idx) == 0:
            return []
        d = _distances_m(lat, lng, self._geo.lats[idx], self._geo.lngs[idx])
        out = [Near(int(i), float(x)) for i, x in zip(idx, d, strict=True)]
        out.sort(key=lambda n: (n.distance_m, n.index))
        return out

    def candidates(self, request: RouteRequest, exclude: frozenset[str] = frozenset()) -> list[str]:
        """Node ids whose stock the service should read for this request, most relevant first.

        delivery: nodes whose radius covers the destination; ship: ship-capable warehouses then
        the `nearest` ship-capable stores; pickup: the named store, then the `nearest` nodes
        around it and every warehouse (transfer sources and alternatives). Bounded by
        `nearest` + warehouses, except delivery, which the radii bound.
        """
        near: list[Near]
        if request.mode == Mode.DELIVERY:
            near = self.delivery_near(request.lat, request.lng, request.approximate)
        elif request.mode == Mode.SHIP:
            near = self.ship_near(request.lat, request.lng)
        else:
            store = self._index.get(request.pickup_node_id or "")
            if store is None:
                return []
            near = [Near(store, 0.0), *self.around_store(store)]
        ids = [self._nodes[n.index].id for n in near]
        return [i for i in ids if i not in exclude] if exclude else ids
