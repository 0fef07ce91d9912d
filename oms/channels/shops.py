"""Shops: one account on one platform, its credentials, and which shop a message belongs to.

The OMS_* channel variables (oms/channels/config.py) define each channel's default shop, whose
id is the channel name ('tmall', 'jd', 'douyin', 'miniprogram'); its row holds no credentials,
the variables do. More shops come through the admin API (PUT /shops/{id}) with their own
credentials (write-only: stored, used to sign, never returned).

A push or worker message names its app key (Tmall relay query `app_key`, JD relay form
`app_key`, Douyin header `app-id`): `resolve` finds the shop with that key, so a push signed
with shop B's secret is verified with B's secret and its order carries shop B.

`api_url` of a shop is the platform's host root (e.g. https://eco.taobao.com): the outbound
builders add their paths; the inbound fetch URLs add /router/rest (TOP) and /routerjson (JOS).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from adapters.douyin import DouyinCredentials
from adapters.jd import JdCredentials
from adapters.normalized import Channel, ChannelEvent
from adapters.outbound import douyin as ob_douyin, jd as ob_jd, tmall as ob_tmall, wechat as ob_wechat
from adapters.tmall import TmallCredentials
from oms.channels.config import ChannelsConfig, DouyinConfig, JdConfig, TmallConfig
from oms.channels.ports import Intake
from oms.infra.db import Q

#: channels a shop can be on
SHOP_CHANNELS = (Channel.TMALL, Channel.JD, Channel.DOUYIN, Channel.MINIPROGRAM)
_TOP_PATH, _JOS_PATH = "/router/rest", "/routerjson"


class Shop(msgspec.Struct, frozen=True, kw_only=True):
    """A shop as the API shows it: never its credentials, only whether they are set."""

    id: str
    channel: str
    platform_shop_id: str
    brand: str
    name: str
    app_key: str | None
    has_credentials: bool
    api_url: str | None
    share_kind: str
    share_value: str
    serves_modes: list[str]
    serves_nodes: list[str] | None
    deducts_at_order: bool
    publish_stock: bool
    is_default: bool
    active: bool
    sync_paused_until: datetime | None = None
    last_full_resync_at: datetime | None = None


def shop_view(row: Mapping[str, Any]) -> Shop:
    return Shop(
        id=row["id"], channel=row["channel"], platform_shop_id=row["platform_shop_id"], brand=row["brand"],
        name=row["name"], app_key=row["app_key"], has_credentials=bool(row["credentials"]),
        api_url=row["api_url"], share_kind=row["share_kind"], share_value=_decimal_text(row["share_value"]),
        serves_modes=list(row["serves_modes"]), serves_nodes=None if row["serves_nodes"] is None else list(row["serves_nodes"]),
        deducts_at_order=row["deducts_at_order"], publish_stock=row["publish_stock"], is_default=row["is_default"],
        active=row["active"], sync_paused_until=row["sync_paused_until"], last_full_resync_at=row["last_full_resync_at"],
    )


def _decimal_text(value: Any) -> str:
    text = format(value, "f") if value is not None else "0"
    return text.rstrip("0").rstrip(".") if "." in text else text


# ---- defaults from the environment -------------------------------------------------------------
def configured_channels(config: ChannelsConfig) -> list[Channel]:
    return [c for c in SHOP_CHANNELS if getattr(config, c.value) is not None]


async def ensure_default_shops(pool: asyncpg.Pool, config: ChannelsConfig) -> None:
    """A default shop row for every configured channel (the mini-program publishes no stock:
    its backend reads GET /shops/miniprogram/sellable)."""
    for channel in configured_channels(config):
        await pool.execute(Q["shop_ensure_default"], channel.value, channel is not Channel.MINIPROGRAM)


def default_shop_id(channel: Channel | str) -> str | None:
    """The shop of an order that names none: its channel's default shop (none for manual orders)."""
    value = str(channel)
    return value if value in {c.value for c in SHOP_CHANNELS} else None


async def deducts_at_order(pool: asyncpg.Pool, shop_id: str | None, channel: Channel | str) -> bool:
    """Is the shop set to deduct at order time (its unpaid orders hold their units)? The order's
    shop, else its channel's default shop; an order from no shop holds nothing."""
    sid = shop_id or default_shop_id(channel)
    return bool(sid and await pool.fetchval(Q["shop_deducts_at_order"], sid))


# ---- credentials and URLs ----------------------------------------------------------------------
def _root(url: str, suffix: str) -> str:
    return url[: -len(suffix)] if url.endswith(suffix) else url


def _own(row: Mapping[str, Any]) -> dict[str, str]:
    creds = row["credentials"] or {}
    return {k: str(v) for k, v in creds.items() if v is not None}


def tmall_config(row: Mapping[str, Any], config: ChannelsConfig) -> TmallConfig | None:
    own, base = _own(row), config.tmall
    if own.get("app_key"):
        creds = TmallCredentials(app_key=own["app_key"], app_secret=own.get("app_secret", ""),
                                 session=own.get("session", ""))
    elif row["is_default"] and base is not None:
        creds = base.credentials
    else:
        return None
    top_url = (row["api_url"].rstrip("/") + _TOP_PATH) if row["api_url"] else (base.top_url if base else None)
    kw = {"top_url": top_url} if top_url else {}
    if base is not None:
        return msgspec.structs.replace(base, credentials=creds, **kw)
    return TmallConfig(credentials=creds, **kw)


def jd_config(row: Mapping[str, Any], config: ChannelsConfig) -> JdConfig | None:
    own, base = _own(row), config.jd
    if own.get("app_key"):
        creds = JdCredentials(app_key=own["app_key"], app_secret=own.get("app_secret", ""),
                              access_token=own.get("access_token", ""))
    elif row["is_default"] and base is not None:
        creds = base.credentials
    else:
        return None
    api_url = (row["api_url"].rstrip("/") + _JOS_PATH) if row["api_url"] else (base.api_url if base else None)
    kw = {"api_url": api_url} if api_url else {}
    if base is not None:
        return msgspec.structs.replace(base, credentials=creds, **kw)
    return JdConfig(credentials=creds, **kw)


def douyin_config(row: Mapping[str, Any], config: ChannelsConfig) -> DouyinConfig | None:
    own, base = _own(row), config.douyin
    if own.get("app_key"):
        creds = DouyinCredentials(app_key=own["app_key"], app_secret=own.get("app_secret", ""),
                                  access_token=own.get("access_token", ""))
    elif row["is_default"] and base is not None:
        creds = base.credentials
    else:
        return None
    api_url = row["api_url"].rstrip("/") if row["api_url"] else (base.api_url if base else None)
    return DouyinConfig(credentials=creds, **({"api_url": api_url} if api_url else {}))


class WechatAccess(msgspec.Struct, frozen=True, kw_only=True):
    """What upload_shipping_info needs: an access token (kept fresh by the mini-program backend
    and given to the shop's credentials), the merchant id for out_trade_no keys, the base URL."""

    access_token: str
    mchid: str = ""
    base_url: str = ob_wechat.DEFAULT_BASE_URL

    def __repr__(self) -> str:
        return f"WechatAccess(access_token=***, mchid={self.mchid!r}, base_url={self.base_url!r})"


def wechat_access(row: Mapping[str, Any]) -> WechatAccess | None:
    own = _own(row)
    if not own.get("access_token"):
        return None
    return WechatAccess(access_token=own["access_token"], mchid=own.get("mchid", ""),
                        base_url=(row["api_url"] or ob_wechat.DEFAULT_BASE_URL).rstrip("/"))


def outbound_base_url(row: Mapping[str, Any], config: ChannelsConfig) -> str:
    """The host root the outbound builders send to."""
    if row["api_url"]:
        return row["api_url"].rstrip("/")
    channel = row["channel"]
    if channel == Channel.TMALL:
        return _root(config.tmall.top_url, _TOP_PATH) if config.tmall else ob_tmall.DEFAULT_BASE_URL
    if channel == Channel.JD:
        return _root(config.jd.api_url, _JOS_PATH) if config.jd else ob_jd.DEFAULT_BASE_URL
    if channel == Channel.DOUYIN:
        return config.douyin.api_url.rstrip("/") if config.douyin else ob_douyin.DEFAULT_BASE_URL
    return ob_wechat.DEFAULT_BASE_URL


# ---- which shop a message is for ---------------------------------------------------------------
class ShopResolver:
    """App key -> shop row, cached a few seconds (one indexed look-up per key otherwise)."""

    def __init__(self, pool: asyncpg.Pool, max_age_s: float = 5.0) -> None:
        self.pool = pool
        self.max_age_s = max_age_s
        self._cache: dict[tuple[str, str | None], tuple[float, Any]] = {}

    async def row(self, channel: Channel, app_key: str | None) -> Mapping[str, Any] | None:
        """The shop with this app key, else the channel's default shop."""
        key = (channel.value, app_key)
        hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.max_age_s:
            return hit[1]
        row = await self.pool.fetchrow(Q["shop_by_app_key"], channel.value, app_key) if app_key else None
        if row is None:
            row = await self.pool.fetchrow(Q["shop_default"], channel.value)
        self._cache[key] = (time.monotonic(), row)
        return row


class ShopIntake:
    """An Intake that stamps the shop on the orders it passes on."""

    def __init__(self, inner: Intake, shop_id: str | None) -> None:
        self.inner = inner
        self.shop_id = shop_id

    async def handle(self, event: ChannelEvent) -> None:
        if self.shop_id and event.order is not None and event.order.shop_id is None:
            event = msgspec.structs.replace(event, order=msgspec.structs.replace(event.order, shop_id=self.shop_id))
        await self.inner.handle(event)


# ---- sellable units ----------------------------------------------------------------------------
async def sellable_of(pool: asyncpg.Pool, inventory: Any, row: Mapping[str, Any],
                      skus: list[str]) -> dict[str, Any]:
    """SKU -> `sellable.Sellable` for one shop, from the Redis availability reservation uses.

    `inventory`: oms.stock.inventory.Inventory.
    """
    from oms.channels import sellable

    # read now, not from a process's node cache: a node added a moment ago counts at once
    capabilities = {r["id"]: r["capabilities"] for r in await pool.fetch(Q["nodes_all"]) if r["active"]}
    members = sellable.pool_nodes(row["serves_modes"], row["serves_nodes"], capabilities)
    available = await inventory.available(members, skus) if members and skus else {}
    rules = sellable.SafetyRules.of((r["node_id"], r["sku"], r["units"])
                                    for r in await pool.fetch(Q["safety_for_skus"], skus))
    return {
        sku: sellable.compute(row["id"], sku, {n: (available.get(n) or {}).get(sku, 0) for n in members}, members,
                              rules, row["share_kind"], row["share_value"])
        for sku in skus
    }


async def shop_for_push(resolver: ShopResolver, channel: Channel, app_key: str | None,
                        config: ChannelsConfig) -> tuple[Any, str | None]:
    """(the channel configuration to verify and fetch with, shop id) for a message naming `app_key`.

    A key no shop has falls back to the default shop, whose credentials then refuse the signature."""
    builders = {Channel.TMALL: tmall_config, Channel.JD: jd_config, Channel.DOUYIN: douyin_config}
    default = getattr(config, channel.value)
    default_key = getattr(getattr(default, "credentials", None), "app_key", None)
    if default is not None and (app_key is None or app_key == default_key):
        # the OMS_* variables' own key is the default shop's, whatever else shares it
        return default, default_shop_id(channel)
    row = await resolver.row(channel, app_key)
    if row is None or channel not in builders:
        return default, (default_shop_id(channel) if default is not None else None)
    return builders[channel](row, config) or default, row["id"]
