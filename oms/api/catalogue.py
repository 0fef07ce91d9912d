"""Nodes, SKUs and stock: the admin API that describes the network and what it holds."""

from __future__ import annotations

import logging
import re
from typing import Annotated

import h3
import msgspec
from litestar import Controller, Response, get, put
from litestar.background_tasks import BackgroundTask
from litestar.params import Parameter

from oms.api import cursor
from oms.api.auth import admin_guard
from oms.infra.db import Q
from oms.network.model import Node, NodeIn
from oms.errors import InvalidInput, UnknownReference
from routing import distance_m
from oms.wiring import Services

#: resolution of the H3 cell stored with each node (≈0.46 km edge; see routing/ for the index)
NODE_H3_RES = 8
log = logging.getLogger("oms.api")
_NODE_ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def _node(r) -> Node:
    return Node(id=r["id"], kind=r["kind"], name=r["name"], lat=r["lat"], lng=r["lng"], h3_cell=r["h3_cell"],
                capabilities=list(r["capabilities"]), delivery_radius_m=r["delivery_radius_m"],
                capacity_per_hour=r["capacity_per_hour"], city=r["city"], active=r["active"],
                stock_buckets=r["stock_buckets"])


class SkuIn(msgspec.Struct, kw_only=True):
    name: Annotated[str, msgspec.Meta(max_length=200)] = ""
    unit_price: Annotated[int, msgspec.Meta(ge=0)] = 0


class Sku(msgspec.Struct, kw_only=True):
    sku: str
    name: str
    unit_price: int


class SkuPage(msgspec.Struct, kw_only=True):
    items: list[Sku]
    #: pass as `after` for the next page; null on the last page
    next_after: str | None = None


class StockIn(msgspec.Struct, kw_only=True):
    on_hand: Annotated[int, msgspec.Meta(ge=0, le=10_000_000)]


class StockOut(msgspec.Struct, kw_only=True):
    node_id: str
    sku: str
    on_hand: int
    reserved: int
    available: int
    distance_m: float | None = None


class Availability(msgspec.Struct, kw_only=True):
    sku: str
    available: int
    nodes: list[StockOut]


class SkuMapIn(msgspec.Struct, kw_only=True):
    sku: str


SkuPath = Annotated[str, Parameter(min_length=1, max_length=64)]


class CatalogueController(Controller):
    guards = [admin_guard]
    tags = ["network and stock"]

    @put("/nodes/{node_id:str}", summary="Create or replace a warehouse or store")
    async def put_node(self, node_id: str, data: NodeIn, services: Services) -> Response[Node]:
        if not _NODE_ID.fullmatch(node_id):
            raise InvalidInput("node_id: 1-64 characters of letters, digits, '_', '.', '-'", field="node_id")
        cell = h3.latlng_to_cell(data.lat, data.lng, NODE_H3_RES)
        async with services.pool.acquire() as conn, conn.transaction():
            created = await conn.fetchval(
                Q["node_upsert"], node_id, str(data.kind), data.name, data.lat, data.lng, cell,
                sorted(str(c) for c in set(data.capabilities)), data.delivery_radius_m, data.capacity_per_hour,
                data.city, data.active,
            )
            buckets_before = await conn.fetchval(Q["node_stock_buckets_for_update"], node_id)
            if buckets_before != data.stock_buckets:
                await conn.execute(Q["node_stock_buckets_set"], node_id, data.stock_buckets)
        if buckets_before != data.stock_buckets:
            # re-split its stock in Redis now (should this fail, the reconciler does it shortly)
            await services.fence.rebucket(node_id)
        await services.nodes.refresh(force=True)
        row = await services.pool.fetchrow(Q["node_get"], node_id)
        return Response(_node(row), status_code=201 if created else 200)

    @get("/nodes", summary="Every warehouse and store")
    async def list_nodes(self, services: Services, kind: str | None = None) -> list[Node]:
        rows = await services.pool.fetch(Q["nodes_all"])
        return [_node(r) for r in rows if kind is None or r["kind"] == kind]

    @put("/skus/{sku:str}", summary="Create or update a SKU of the catalogue")
    async def put_sku(self, sku: SkuPath, data: SkuIn, services: Services) -> Sku:
        await services.pool.execute(Q["sku_upsert_many"], [sku], [data.name], [data.unit_price])
        return Sku(sku=sku, name=data.name, unit_price=data.unit_price)

    @get("/skus", summary="The catalogue in code order, paged; filter by code prefix")
    async def list_skus(
        self,
        services: Services,
        prefix: Annotated[str, Parameter(max_length=64, description="only codes starting with this")] = "",
        after: Annotated[str | None, Parameter(description="cursor from next_after")] = None,
        limit: Annotated[int, Parameter(ge=1, le=500)] = 100,
    ) -> SkuPage:
        last = cursor.decode(after, 1, "after")[0] if after else ""
        rows = await services.pool.fetch(Q["skus_page"], prefix, last, limit)
        items = [Sku(sku=r["sku"], name=r["name"], unit_price=r["unit_price_fen"]) for r in rows]
        return SkuPage(items=items, next_after=cursor.encode(items[-1].sku) if len(items) == limit else None)

    @put("/sku-map/{channel:str}/{platform_sku_id:str}", summary="Map a platform SKU id without a merchant code")
    async def put_sku_map(self, channel: str, platform_sku_id: str, data: SkuMapIn, services: Services) -> dict:
        if await services.skus.unknown({data.sku}):
            raise UnknownReference(f"unknown SKU '{data.sku}'", field="sku")
        await services.pool.execute(Q["sku_map_put"], channel, platform_sku_id, data.sku)
        return {"channel": channel, "platform_sku_id": platform_sku_id, "sku": data.sku}

    @put("/inventory/{node_id:str}/{sku:str}", summary="Set on-hand; reserved units stay reserved")
    async def put_stock(self, node_id: str, sku: SkuPath, data: StockIn, services: Services) -> Response[StockOut]:
        if await services.pool.fetchrow(Q["node_get"], node_id) is None:
            raise UnknownReference(f"unknown node '{node_id}'", field="node_id")
        if await services.skus.unknown({sku}):
            raise UnknownReference(f"unknown SKU '{sku}': create it with PUT /skus/{sku}", field="sku")
        async with services.pool.acquire() as conn, conn.transaction():
            # the row lock orders concurrent sets of one (node, SKU) the same way in both stores
            await conn.execute(Q["stock_set"], node_id, sku, data.on_hand)
            level = await services.inventory.set_on_hand(node_id, sku, data.on_hand)
        out = StockOut(node_id=node_id, sku=sku, on_hand=level.on_hand, reserved=level.reserved,
                       available=level.available)
        if level.available > 0:  # orders waiting for this SKU get their chance, oldest first, after the answer
            return Response(out, background=BackgroundTask(_retry_backorders, services, sku))
        return Response(out)

    @get("/inventory/{sku:str}", summary="Availability of a SKU per node, nearest first when lat/lng given")
    async def get_stock(self, sku: SkuPath, services: Services,
                        lat: Annotated[float | None, Parameter(ge=-90, le=90)] = None,
                        lng: Annotated[float | None, Parameter(ge=-180, le=180)] = None) -> Availability:
        if (lat is None) != (lng is None):
            raise InvalidInput("give both lat and lng, or neither", field="lat" if lat is None else "lng")
        if await services.skus.unknown({sku}):
            raise UnknownReference(f"unknown SKU '{sku}'", field="sku")
        await services.nodes.refresh()
        nodes = services.nodes.nodes
        levels = await services.inventory.levels(sorted(nodes), sku)
        out = []
        for lv in levels:
            d = None
            if lat is not None and lng is not None:
                n = nodes[lv.node_id]
                d = round(distance_m(lat, lng, n.lat, n.lng), 1)
            out.append(StockOut(node_id=lv.node_id, sku=sku, on_hand=lv.on_hand, reserved=lv.reserved,
                                available=lv.available, distance_m=d))
        out.sort(key=lambda s: (s.distance_m if s.distance_m is not None else 0, s.node_id))
        return Availability(sku=sku, available=sum(max(s.available, 0) for s in out), nodes=out)


async def _retry_backorders(services: Services, sku: str) -> None:
    """Runs after PUT /inventory answered, as part of that request (no task outlives it unseen)."""
    try:
        await services.allocator.retry_backorders(sku)
    except Exception as exc:  # noqa: BLE001 - the stock was set; the next restock or POST allocate retries
        log.error("retrying backorders for %s failed: %r", sku, exc)
