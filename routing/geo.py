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


_POINT_CACHE_MAX = 4096


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
        self.ship_warehouses = np.array(
            [i for i, n in enumerate(nodes) if n.kind == NodeKind.WAREHOUSE and "ship" in n.capabilities],
            dtype=np.int64,
        )
        self.warehouses = [i for i, n in enumerate(nodes) if n.kind == NodeKind.WAREHOUSE]
        self.delivery_cache: dict[int, np.ndarray] = {}
        self.ship_cache: dict[int, np.ndarray] = {}
        self.pickup_cache: dict[int, np.ndarray] = {}
        # one order asks for the same point's neighbours several times (the service's candidates,
        # then the plan): remember recent points; purely geometric, so clones share it
        self.point_cache: dict[tuple, list] = {}
        # plain-float copies for the one-point paths: numpy's per-call overhead dominates there
        self.rad_lat = [math.radians(x) for x in self.lats.tolist()]
        self.rad_lng = [math.radians(x) for x in self.lngs.tolist()]
        self.cos_lat = [math.cos(x) for x in self.rad_lat]
        self.radius_list = self.radius.tolist()
        self.ship_warehouse_list = self.ship_warehouses.tolist()
        self.ship_ids: list[str] | None = None  # Network.reach, made on first use

    def nearest_one_point(self, lat: float, lng: float, pool, limit: int | None,
                          slack: float | None = None) -> list["Near"]:
        """Pool nodes by distance from one point (ties by index), within radius + slack when given."""
        p1, l1 = math.radians(lat), math.radians(lng)
        c1 = math.cos(p1)
        sin, asin, sqrt = math.sin, math.asin, math.sqrt
        rad_lat, rad_lng, cos_lat, radius = self.rad_lat, self.rad_lng, self.cos_lat, self.radius_list
        found = []
        for i in pool:
            a = sin((rad_lat[i] - p1) / 2) ** 2 + c1 * cos_lat[i] * sin((rad_lng[i] - l1) / 2) ** 2
            d = 2 * EARTH_RADIUS_M * asin(sqrt(min(a, 1.0)))
            if slack is None or d <= radius[i] + slack:
                found.append((d, i))
        found.sort()
        if limit is not None:
            found = found[:limit]
        return [Near(i, d) for d, i in found]

    def remember_point(self, key: tuple, near: list) -> None:
        if len(self.point_cache) >= _POINT_CACHE_MAX:
            self.point_cache.clear()
        self.point_cache[key] = near

    @staticmethod
    def _remember(cache: dict[int, np.ndarray], key: int, value: np.ndarray) -> None:
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()  # bounded memory; the working set refills within seconds
        cache[key] = value

    def delivery_near_cell(self, cell: int) -> np.ndarray:
        """Delivery nodes that could cover some point of this cell (superset; exact check per point)."""
        hit = self.delivery_cache.get(cell)
        if hit is not None:
            return hit
        reach = self.max_radius + self.approx_slack_m
        found: list[int] = []
        if reach > 0 and self.by_cell:
            for c in h3.grid_disk(cell, rings_to_cover(cell, reach)):
                found.extend(self.by_cell.get(c, ()))
        result = np.array(sorted(found), dtype=np.int64)
        if len(result):
            # Keep only nodes whose radius (+ slack) reaches the cell at all: cheap, vectorised.
            clat, clng = h3.cell_to_latlng(cell)
            _, e_max = _cell_radii_m(cell)
            d = _distances_m(clat, clng, self.lats[result], self.lngs[result])
            result = result[d <= self.radius[result] + self.approx_slack_m + e_max]
        self._remember(self.delivery_cache, cell, result)
        return result

    def nearest_around(self, cell: int, pool: np.ndarray, k: int) -> np.ndarray:
        """Nodes of pool that may be among the k nearest to any point of the cell."""
        if len(pool) <= k:
            return pool
        clat, clng = h3.cell_to_latlng(cell)
        _, e_max = _cell_radii_m(cell)
        d = _distances_m(clat, clng, self.lats[pool], self.lngs[pool])
        kth = float(np.partition(d, k - 1)[k - 1])
        # Triangle inequality: a point of the cell is within e_max of its centre, so its k nearest
        # are all within kth + 2*e_max of the centre. The superset makes the per-point pick exact.
        return np.sort(pool[d <= kth + 2 * e_max])

    def nearest_first(self, lat: float, lng: float, idx: np.ndarray, limit: int | None = None, reach: np.ndarray | None = None) -> list[Near]:
        """Nodes of idx by distance from the point (ties by id), optionally within reach, at most limit."""
        if len(idx) == 0:
            return []
        d = _distances_m(lat, lng, self.lats[idx], self.lngs[idx])
        if reach is not None:
            ok = d <= reach
            idx, d = idx[ok], d[ok]
        order = np.lexsort((idx, d))
        if limit is not None:
            order = order[:limit]
        return [Near(i, x) for i, x in zip(idx[order].tolist(), d[order].tolist(), strict=True)]


def _flatten(pools: list[np.ndarray], lats: np.ndarray, lngs: np.ndarray, geo: _GeoIndex) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(point, node, distance) for every node of every point's pool."""
    if not pools:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, float)
    lens = np.fromiter((len(p) for p in pools), dtype=np.int64, count=len(pools))
    idx = np.concatenate(pools).astype(np.int64) if lens.sum() else np.zeros(0, np.int64)
    pos = np.repeat(np.arange(len(pools)), lens)
    p1, p2 = np.radians(lats[pos]), np.radians(geo.lats[idx])
    dl = np.radians(geo.lngs[idx]) - np.radians(lngs[pos])
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return pos, idx, 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.minimum(a, 1.0)))


def _nearest_per_point(pos: np.ndarray, idx: np.ndarray, d: np.ndarray, limit: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort by point, then distance, then node index (the id tie-break); keep limit per point."""
    order = np.lexsort((idx, d, pos))
    pos, idx, d = pos[order], idx[order], d[order]
    if limit is not None and len(pos):
        rank = np.arange(len(pos)) - np.searchsorted(pos, pos, side="left")
        keep = rank < limit
        pos, idx, d = pos[keep], idx[keep], d[keep]
    return pos, idx, d


class Network:
    """Fulfilment nodes with an H3 index built once; candidate lists are cached per cell."""

    def __init__(
        self,
        nodes: Iterable[RouteNode],
        resolution: int = DEFAULT_RESOLUTION,
        *,
        nearest: int = 20,
        delivery_limit: int = 30,
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
        # looked at around a pickup store. delivery_limit: at most this many covering stores,
        # nearest first (a dense downtown has ~70 within 5 km; the 31st nearest is never needed
        # for one order and the service reads stock for each). approx_slack_m widens delivery
        # radii for district-centre destinations, whose real address may be a kilometre away.
        if nearest < 1 or delivery_limit < 1:
            raise ValueError("nearest and delivery_limit must be >= 1")
        self._geo = _GeoIndex(ordered, resolution, nearest, approx_slack_m)
        self._delivery_limit: int | None = delivery_limit
        self._wide = False  # see widened()

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
        clone._delivery_limit, clone._wide = self._delivery_limit, self._wide
        return clone

    @property
    def delivery_limit(self) -> int | None:
        return self._delivery_limit

    @property
    def nearest(self) -> int | None:
        """How many stores a parcel or pickup order is offered at first (None: widened, all)."""
        return None if self._wide else self._geo.nearest

    def widened(self) -> Network:
        """A copy offering every node a request could use: every covering store for delivery, every
        ship-capable store for a parcel, every node around a pickup store. For when the nearest few
        cannot serve an order; shares the index and loads."""
        clone = object.__new__(Network)
        clone._nodes, clone._index, clone._geo = self._nodes, self._index, self._geo
        clone._delivery_limit, clone._wide = None, True
        return clone

    # -- candidate search ------------------------------------------------------------------

    def delivery_near(self, lat: float, lng: float, approximate: bool = False) -> list[Near]:
        """Delivery nodes whose radius covers the point, nearest first (ties by id), bounded."""
        key = ("d", lat, lng, approximate, self._delivery_limit)
        near = self._geo.point_cache.get(key)
        if near is None:
            geo = self._geo
            pool = geo.delivery_near_cell(cell_of(lat, lng, geo.resolution)).tolist()
            near = geo.nearest_one_point(lat, lng, pool, self._delivery_limit,
                                         slack=geo.approx_slack_m if approximate else 0.0)
            geo.remember_point(key, near)
        return list(near)

    def ship_near(self, lat: float, lng: float) -> list[Near]:
        """Ship-capable warehouses (all), then the nearest ship-capable stores (widened: all)."""
        key = ("s", lat, lng, self._wide)
        near = self._geo.point_cache.get(key)
        if near is None:
            geo = self._geo
            if self._wide:
                pool, limit = geo.ship_stores, None
            else:
                cell = cell_of(lat, lng, geo.resolution)
                pool, limit = geo.ship_cache.get(cell), geo.nearest
                if pool is None:
                    pool = geo.nearest_around(cell, geo.ship_stores, geo.nearest)
                    geo._remember(geo.ship_cache, cell, pool)
            near = (geo.nearest_one_point(lat, lng, geo.ship_warehouse_list, None)
                    + geo.nearest_one_point(lat, lng, pool.tolist(), limit))
            geo.remember_point(key, near)
        return list(near)

    def delivery_pairs(self, lats: np.ndarray, lngs: np.ndarray, approximate: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """delivery_near for many points at once: (point position, node index, distance) arrays.

        Each point takes its cell's cached candidates; distances, the radius check and the
        nearest-first cut are then one vectorised pass over all points. Grouped by point.
        """
        geo = self._geo
        pools = [geo.delivery_near_cell(cell_of(lat, lng, geo.resolution)) for lat, lng in zip(lats.tolist(), lngs.tolist(), strict=True)]
        pos, idx, d = _flatten(pools, lats, lngs, geo)
        ok = d <= geo.radius[idx] + np.where(approximate[pos], geo.approx_slack_m, 0)
        return _nearest_per_point(pos[ok], idx[ok], d[ok], self._delivery_limit)

    def ship_pairs(self, lats: np.ndarray, lngs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ship_near for many points at once: warehouses nearest first, then the nearest stores."""
        geo = self._geo
        pools = []
        for lat, lng in zip(lats.tolist(), lngs.tolist(), strict=True):
            cell = cell_of(lat, lng, geo.resolution)
            pool = geo.ship_cache.get(cell)
            if pool is None:
                pool = geo.nearest_around(cell, geo.ship_stores, geo.nearest)
                geo._remember(geo.ship_cache, cell, pool)
            pools.append(pool)
        stores = _nearest_per_point(*_flatten(pools, lats, lngs, geo), geo.nearest)
        whs = _nearest_per_point(*_flatten([geo.ship_warehouses] * len(lats), lats, lngs, geo), None)
        pos = np.concatenate((whs[0], stores[0]))
        order = np.argsort(pos, kind="stable")  # group by point; warehouses stay ahead of stores
        return pos[order], np.concatenate((whs[1], stores[1]))[order], np.concatenate((whs[2], stores[2]))[order]

    def around_store(self, store_index: int) -> list[Near]:
        """Nodes near a pickup store (transfer sources, alternatives) plus every warehouse
        (widened: every other node)."""
        geo = self._geo
        node = self._nodes[store_index]
        if self._wide:
            others = np.array([i for i in range(len(self._nodes)) if i != store_index], dtype=np.int64)
            return geo.nearest_first(node.lat, node.lng, others)
        pool = geo.pickup_cache.get(store_index)
        if pool is None:
            others = np.array([i for i in range(len(self._nodes)) if i != store_index], dtype=np.int64)
            node = self._nodes[store_index]
            near = {n.index for n in geo.nearest_first(node.lat, node.lng, others, geo.nearest)}
            pool = np.array(sorted(near | (set(geo.warehouses) - {store_index})), dtype=np.int64)
            geo._remember(geo.pickup_cache, store_index, pool)
        return geo.nearest_first(node.lat, node.lng, pool)

    def reach(self, request: RouteRequest) -> list[str]:
        """Node ids a widened request could use, in no particular order: for a parcel or a pickup
        without measuring a distance (every ship-capable node; every node), so a service can read
        their stock before paying for routing over all of them."""
        geo = self._geo
        if request.mode == Mode.DELIVERY:
            return self.widened().candidates(request)
        if request.mode == Mode.SHIP:
            if geo.ship_ids is None:
                geo.ship_ids = [self._nodes[i].id for i in (*geo.ship_warehouse_list, *geo.ship_stores.tolist())]
            return list(geo.ship_ids)
        return [n.id for n in self._nodes] if request.pickup_node_id in self._index else []

    def candidates(self, request: RouteRequest, exclude: frozenset[str] = frozenset()) -> list[str]:
        """Node ids whose stock the service should read for this request, most relevant first.

        delivery: the `delivery_limit` nearest nodes whose radius covers the destination.
        ship: every ship-capable warehouse, then the `nearest` ship-capable stores.
        pickup: the named store, then the `nearest` nodes around it and every warehouse
        (transfer sources and alternatives); [] for an unknown store.
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
