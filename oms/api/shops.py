"""Shops, listings, safety stock, sellable figures and the outbox's dead letters (admin API).

    PUT  /shops/{id}                    create or replace a shop (credentials write-only)
    GET  /shops, /shops/{id}            never the credentials
    PUT  /shops/{id}/listings/{sku}     our SKU <-> the platform's item / SKU (/ store) ids
    GET  /shops/{id}/listings
    GET  /shops/{id}/sellable?sku=      the figure published and how it was derived
    POST /shops/{id}/resync             publish every listing again (202)
    PUT  /safety-stock, GET /safety-stock, DELETE /safety-stock?node_id=&sku=
    GET  /outbox/dead                   dead / blocked / manual messages with the platform's error
    POST /outbox/resend?shop_id=        send dead letters again
Every change that alters what a shop may sell queues its recompute in the same transaction.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated

import msgspec
from litestar import Controller, Response, delete, get, post, put
from litestar.params import Parameter

from oms.api.auth import admin_guard
from oms.channels import outbox, shops
from oms.channels.sellable import MODE_CAPABILITY, NodeFigure, ShareKind
from oms.errors import InvalidInput, NotFound, UnknownReference
from oms.infra.db import Q
from oms.wiring import Services

_ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
Text = Annotated[str, msgspec.Meta(max_length=200)]
PlatformId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]


class ShareIn(msgspec.Struct, kw_only=True, frozen=True):
    kind: ShareKind = ShareKind.ALL
    #: ratio: a fraction 0..1 as text or number ("0.6"); quota: units
    value: Annotated[str, msgspec.Meta(max_length=20, pattern=r"^[0-9]+(\.[0-9]+)?$")] = "0"


class ServesIn(msgspec.Struct, kw_only=True, frozen=True):
    modes: Annotated[list[str], msgspec.Meta(min_length=1, max_length=3)] = msgspec.field(
        default_factory=lambda: ["ship"])
    nodes: Annotated[list[str], msgspec.Meta(max_length=2000)] | None = None


class ShopIn(msgspec.Struct, kw_only=True):
    channel: str
    platform_shop_id: Text = ""
    brand: Text = ""
    name: Text = ""
    #: app_key, app_secret, session / access_token (mini-program: access_token, mchid);
    #: left out, the stored credentials stay
    credentials: Annotated[dict[str, Annotated[str, msgspec.Meta(max_length=2000)]],
                           msgspec.Meta(max_length=20)] | None = None
    api_url: Annotated[str, msgspec.Meta(max_length=300, pattern=r"^https?://")] | None = None
    share: ShareIn = msgspec.field(default_factory=ShareIn)
    serves: ServesIn = msgspec.field(default_factory=ServesIn)
    deducts_at_order: bool = False
    publish_stock: bool = True
    active: bool = True


class ListingIn(msgspec.Struct, kw_only=True):
    platform_sku_id: PlatformId
    platform_item_id: Annotated[str, msgspec.Meta(max_length=64, pattern=r"^[A-Za-z0-9_.\-]*$")] = ""
    platform_store_id: PlatformId | None = None
    active: bool = True


class Listing(msgspec.Struct, kw_only=True):
    shop_id: str
    sku: str
    platform_item_id: str
    platform_sku_id: str
    platform_store_id: str | None
    active: bool


class SellableOut(msgspec.Struct, kw_only=True):
    shop_id: str
    sku: str
    sellable: int
    pool: int
    share_kind: str
    share_value: str
    derivation: str
    nodes: list[NodeFigure]
    listed: bool
    last_sent: int | None = None
    acked_at: str | None = None
    sync_status: str | None = None


class SafetyIn(msgspec.Struct, kw_only=True):
    node_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    sku: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    units: Annotated[int, msgspec.Meta(ge=0, le=10_000_000)]


class SafetyRule(msgspec.Struct, kw_only=True):
    node_id: str | None
    sku: str | None
    units: int


def _listing(r) -> Listing:  # noqa: ANN001 - asyncpg.Record
    return Listing(shop_id=r["shop_id"], sku=r["sku"], platform_item_id=r["platform_item_id"],
                   platform_sku_id=r["platform_sku_id"], platform_store_id=r["platform_store_id"], active=r["active"])


async def _shop_row(services: Services, shop_id: str):  # noqa: ANN202
    row = await services.pool.fetchrow(Q["shop_get"], shop_id)
    if row is None:
        raise NotFound(f"no shop '{shop_id}'", field="shop_id")
    return row


def _check_shop(shop_id: str, data: ShopIn) -> Decimal:
    if not _ID.fullmatch(shop_id):
        raise InvalidInput("shop_id: 1-64 characters of letters, digits, '_', '.', '-'", field="shop_id")
    if data.channel not in {c.value for c in shops.SHOP_CHANNELS}:
        raise InvalidInput("channel: one of tmall, jd, douyin, miniprogram", field="channel")
    bad = [m for m in data.serves.modes if m not in MODE_CAPABILITY]
    if bad:
        raise InvalidInput(f"serves.modes: '{bad[0]}' is not one of ship, delivery, pickup", field="serves.modes")
    value = Decimal(data.share.value)
    if data.share.kind is ShareKind.RATIO and value > 1:
        raise InvalidInput("share.value: a ratio is between 0 and 1 (0.6 = 60 %)", field="share.value")
    if data.credentials is not None and data.channel != "miniprogram" and not data.credentials.get("app_key"):
        raise InvalidInput("credentials.app_key: required (with app_secret) for a platform shop",
                           field="credentials.app_key")
    return value


class ShopController(Controller):
    guards = [admin_guard]
    tags = ["shops and stock publication"]

    @put("/shops/{shop_id:str}", summary="Create or replace a shop; credentials are write-only")
    async def put_shop(self, shop_id: str, data: ShopIn, services: Services) -> Response[shops.Shop]:
        value = _check_shop(shop_id, data)
        if data.serves.nodes is not None:
            known = {r["id"] for r in await services.pool.fetch(Q["nodes_all"])}
            unknown = sorted(set(data.serves.nodes) - known)
            if unknown:
                raise UnknownReference(f"serves.nodes: unknown node '{unknown[0]}'", field="serves.nodes")
        async with services.pool.acquire() as conn, conn.transaction():
            current = await conn.fetchrow(Q["shop_get"], shop_id)
            if current is not None and current["is_default"] and current["channel"] != data.channel:
                raise InvalidInput(f"channel: shop '{shop_id}' is the default {current['channel']} shop",
                                   field="channel")
            created = await conn.fetchval(
                Q["shop_upsert"], shop_id, data.channel, data.platform_shop_id, data.brand, data.name,
                data.credentials, data.api_url, data.share.kind.value, value, sorted(set(data.serves.modes)),
                None if data.serves.nodes is None else sorted(set(data.serves.nodes)), data.deducts_at_order,
                data.publish_stock, data.active)
            await conn.execute(Q["outbox_resync_enqueue"], shop_id)  # share or pool may have changed
            row = await conn.fetchrow(Q["shop_get"], shop_id)
        return Response(shops.shop_view(row), status_code=201 if created else 200)

    @get("/shops", summary="Every shop (never the credentials)")
    async def list_shops(self, services: Services) -> list[shops.Shop]:
        await shops.ensure_default_shops(services.pool, _channels_config())
        return [shops.shop_view(r) for r in await services.pool.fetch(Q["shops_all"])]

    @get("/shops/{shop_id:str}", summary="One shop (never the credentials)")
    async def get_shop(self, shop_id: str, services: Services) -> shops.Shop:
        await shops.ensure_default_shops(services.pool, _channels_config())
        return shops.shop_view(await _shop_row(services, shop_id))

    @put("/shops/{shop_id:str}/listings/{sku:str}", summary="Our SKU <-> the platform's item and SKU ids in a shop")
    async def put_listing(self, shop_id: str, sku: str, data: ListingIn, services: Services) -> Listing:
        await _shop_row(services, shop_id)
        if await services.skus.unknown({sku}):
            raise UnknownReference(f"unknown SKU '{sku}'", field="sku")
        async with services.pool.acquire() as conn, conn.transaction():
            clash = await conn.fetchval(Q["listing_by_platform_sku"], shop_id, data.platform_sku_id)
            if clash is not None and clash != sku:
                raise InvalidInput(f"platform_sku_id: already listed for SKU '{clash}' in this shop",
                                   field="platform_sku_id")
            await conn.execute(Q["listing_put"], shop_id, sku, data.platform_item_id, data.platform_sku_id,
                               data.platform_store_id, data.active)
            await outbox.sku_changed(conn, [sku])
            row = await conn.fetchrow(Q["listing_get"], shop_id, sku)
        return _listing(row)

    @get("/shops/{shop_id:str}/listings", summary="A shop's listings")
    async def list_listings(self, shop_id: str, services: Services) -> list[Listing]:
        await _shop_row(services, shop_id)
        return [_listing(r) for r in await services.pool.fetch(Q["listings_of_shop"], shop_id)]

    @get("/shops/{shop_id:str}/sellable", summary="Sellable units of a SKU in a shop, and how they were derived")
    async def sellable(self, shop_id: str, services: Services,
                       sku: Annotated[str, Parameter(min_length=1, max_length=64)]) -> SellableOut:
        row = await _shop_row(services, shop_id)
        if await services.skus.unknown({sku}):
            raise UnknownReference(f"unknown SKU '{sku}'", field="sku")
        s = (await shops.sellable_of(services.pool, services.inventory, row, [sku]))[sku]
        sync = await services.pool.fetchrow(Q["stock_sync_get"], shop_id, sku)
        listing = await services.pool.fetchrow(Q["listing_get"], shop_id, sku)
        listed = listing is not None and listing["active"]
        return SellableOut(shop_id=shop_id, sku=sku, sellable=s.sellable, pool=s.pool, share_kind=s.share_kind.value,
                           share_value=s.share_value, derivation=s.derivation, nodes=s.nodes, listed=listed,
                           last_sent=sync["last_sent"] if sync else None,
                           acked_at=sync["acked_at"].isoformat() if sync and sync["acked_at"] else None,
                           sync_status=sync["status"] if sync else None)

    @post("/shops/{shop_id:str}/resync", status_code=202, summary="Publish every listing of the shop again")
    async def resync(self, shop_id: str, services: Services) -> dict:
        await _shop_row(services, shop_id)
        return {"shop_id": shop_id, "queued": await outbox.resync(services.pool, shop_id)}

    @put("/safety-stock", summary="Units held back from every shop: per SKU, per node, or per SKU at a node")
    async def put_safety(self, data: SafetyIn, services: Services) -> SafetyRule:
        if data.node_id is None and data.sku is None:
            raise InvalidInput("give sku, node_id, or both", field="sku")
        if data.sku is not None and await services.skus.unknown({data.sku}):
            raise UnknownReference(f"unknown SKU '{data.sku}'", field="sku")
        if data.node_id is not None and await services.pool.fetchrow(Q["node_get"], data.node_id) is None:
            raise UnknownReference(f"unknown node '{data.node_id}'", field="node_id")
        async with services.pool.acquire() as conn, conn.transaction():
            await conn.execute(Q["safety_put"], data.node_id, data.sku, data.units)
            await _safety_changed(conn, data.sku)
        return SafetyRule(node_id=data.node_id, sku=data.sku, units=data.units)

    @get("/safety-stock", summary="Every safety stock rule")
    async def list_safety(self, services: Services) -> list[SafetyRule]:
        return [SafetyRule(node_id=r["node_id"], sku=r["sku"], units=r["units"])
                for r in await services.pool.fetch(Q["safety_all"])]

    @delete("/safety-stock", status_code=204, summary="Remove a safety stock rule")
    async def delete_safety(self, services: Services, node_id: str | None = None, sku: str | None = None) -> None:
        async with services.pool.acquire() as conn, conn.transaction():
            await conn.execute(Q["safety_delete"], node_id, sku)
            await _safety_changed(conn, sku)

    @get("/outbox/dead", summary="Messages the platforms refused or that need ops, with the platform's error")
    async def dead(self, services: Services) -> list[outbox.DeadLetter]:
        return await outbox.dead_letters(services.pool)

    @post("/outbox/resend", status_code=200, summary="Send dead letters again (all, or one shop's)")
    async def resend(self, services: Services, shop_id: str | None = None) -> dict:
        return await outbox.resend_dead(services.pool, shop_id)


async def _safety_changed(conn, sku: str | None) -> None:  # noqa: ANN001
    """A SKU's rule: recompute that SKU; a node-wide rule: every shop publishes again."""
    if sku is not None:
        await outbox.sku_changed(conn, [sku])
    else:
        for r in await conn.fetch(Q["shops_all"]):
            await conn.execute(Q["outbox_resync_enqueue"], r["id"])


def _channels_config():  # noqa: ANN202
    from oms.channels.config import load_config

    return load_config()


ROUTES: list = [ShopController]
