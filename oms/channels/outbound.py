"""Calls to the platforms for the dispatcher: which adapter builder for which change, and the HTTP.

The builders and parsers are pure (adapters/outbound/); this module picks them per shop and
sends the signed `PlatformRequest` with httpx to the shop's base URL (configurable, as for the
order fetches in fetch.py). A transport failure is status 0, which the parsers read as
"retry": the call may or may not have reached the platform.

Stock: always a full value (Taobao has no idempotency key, so a retried delta could apply
twice); Douyin also gets an `idempotent_id` and JD a `stockRfId`, one per send.

Confirmations, per platform (issue 14):
    Tmall    pickup or own rider: logistics.dummy.send; an order split over nodes:
             alibaba.ascp.logistics.offline.send with this part's sub-orders; otherwise
             logistics.offline.send. `feature` names the store (retailStoreId = our node id:
             the store must be registered on Tmall under that id -- UNCONFIRMED mapping).
    JD       pop.order.shipment, once for the whole order (JD ships per order): a part handed
             over before the others is deferred, the last one sends every waybill; own rider
             and pickup use 1274 (merchant self-delivery).
    Douyin   whole order: order/logisticsAdd; split: order/logisticsAddMultiPack with
             request_id = the fulfilment id (the platform answers a repeat with the first result).
             No carrier code for the store's own rider (UNCONFIRMED): listed for ops.
    WeChat   upload_shipping_info once per payment order, when every part is handed over:
             pickup -> logistics_type 4, one-hour -> 2, parcel -> 1 (split parcels as split
             delivery). Needs the shop's mchid (out_trade_no key) and the payer's openid.
Where a platform cannot dedupe a repeat, the dispatcher asks its order state first
(`state_call`) before sending again a message that may have gone out already.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import httpx
import msgspec

from adapters.outbound import douyin as ob_douyin, jd as ob_jd, tmall as ob_tmall, wechat as ob_wechat
from adapters.outbound.carriers import Carrier, carrier_code
from adapters.outbound.common import (
    Outcome,
    OutboundInputError,
    Parcel,
    ParcelLine,
    Platform,
    PlatformRequest,
    RetailStore,
    StateCheck,
    StockLevel,
)
from oms.channels import shops
from oms.channels.config import ChannelsConfig

log = logging.getLogger("oms.channels.outbound")

TIMEOUT = httpx.Timeout(10.0, connect=5.0)


async def send(client: httpx.AsyncClient, request: PlatformRequest) -> tuple[int, bytes]:
    """Send one signed request as built; (0, b"") when no answer came (timeout, reset)."""
    try:
        response = await client.request(
            request.method, request.url, params=request.params or None, data=request.form or None,
            content=request.body or None, headers=request.headers or None, timeout=TIMEOUT,
        )
    except httpx.HTTPError as exc:
        # the URL may carry a token in its query: log the host only
        log.warning("%s: no answer from %s (%s)", request.call, httpx.URL(request.url).host, type(exc).__name__)
        return 0, b""
    return response.status_code, response.content


class Call(msgspec.Struct, frozen=True):
    """One request and the parser of its answer."""

    request: PlatformRequest
    parse: Callable[[int, bytes], Outcome]


class StateCall(msgspec.Struct, frozen=True):
    request: PlatformRequest
    parse: Callable[[int, bytes], StateCheck]


class NotSendable(Exception):
    """This message cannot be sent as things are: ops must act (no credentials, no code...)."""


class ShopContext(msgspec.Struct, frozen=True, kw_only=True):
    """A shop resolved for sending: its channel, credentials and base URL."""

    shop_id: str
    channel: str
    creds: Any
    base_url: str


def shop_context(row: Mapping[str, Any], config: ChannelsConfig) -> ShopContext:
    """Credentials and base URL of a shop; NotSendable when it has none."""
    channel = row["channel"]
    if channel == "tmall":
        cfg = shops.tmall_config(row, config)
        creds = cfg.credentials if cfg else None
    elif channel == "jd":
        cfg = shops.jd_config(row, config)
        creds = cfg.credentials if cfg else None
    elif channel == "douyin":
        cfg = shops.douyin_config(row, config)
        creds = cfg.credentials if cfg else None
    elif channel == "miniprogram":
        creds = shops.wechat_access(row)
    else:
        creds = None
    if creds is None:
        raise NotSendable(f"shop '{row['id']}' has no API credentials for {channel}")
    base = creds.base_url if channel == "miniprogram" else shops.outbound_base_url(row, config)
    return ShopContext(shop_id=row["id"], channel=channel, creds=creds, base_url=base)


# ---- stock ------------------------------------------------------------------------------------
def stock_call(ctx: ShopContext, listing: Mapping[str, Any], quantity: int, ref: str, now: datetime) -> Call:
    """The full sellable value of one listing; `ref` is unique per send (idempotency key)."""
    item, sku_id, store = listing["platform_item_id"] or None, listing["platform_sku_id"], listing["platform_store_id"]
    if ctx.channel == "tmall":
        if item is None:
            raise NotSendable(f"listing {listing['sku']} in shop '{ctx.shop_id}' has no num_iid (platform_item_id)")
        sku = None if sku_id == item else sku_id
        req = ob_tmall.build_item_quantity_update(ctx.creds, num_iid=item, quantity=quantity, sku_id=sku, now=now,
                                                  base_url=ctx.base_url)
        return Call(req, ob_tmall.parse_item_quantity_update)
    if ctx.channel == "jd":
        req = ob_jd.build_stock_set(ctx.creds, levels=[StockLevel(platform_sku_id=sku_id, quantity=quantity)],
                                    stock_ref=ref, store_id=store, now=now, base_url=ctx.base_url)
        return Call(req, ob_jd.parse_stock_set)
    if ctx.channel == "douyin":
        req = ob_douyin.build_sync_stock(ctx.creds, sku_id=sku_id, quantity=quantity, idempotent_id=ref,
                                         product_id=item, store_id=store, now=now, base_url=ctx.base_url)
        return Call(req, ob_douyin.parse_sync_stock)
    raise NotSendable(f"{ctx.channel} takes no stock push (its backend reads GET /shops/{{id}}/sellable)")


# ---- confirmations ----------------------------------------------------------------------------
class Part(msgspec.Struct, frozen=True, kw_only=True):
    """One serving fulfilment of the order: where, how it left, which platform lines."""

    fulfillment_id: str
    node_id: str
    node_kind: str
    status: str
    carrier: str | None
    tracking_no: str | None
    lines: list[dict[str, Any]]

    @property
    def handed_over(self) -> bool:
        return self.status in ("shipped", "collected")


class Handover(msgspec.Struct, frozen=True, kw_only=True):
    order_id: str
    external_id: str
    delivery_mode: str
    buyer: dict[str, Any]
    parts: list[Part]
    part_id: str  # the fulfilment this message is about

    @property
    def part(self) -> Part:
        return next(p for p in self.parts if p.fulfillment_id == self.part_id)

    @property
    def split(self) -> bool:
        return len(self.parts) > 1


class Deferred(msgspec.Struct, frozen=True):
    """Nothing to send for this part: another part's message carries it."""

    reason: str


def _own_rider(part: Part) -> bool:
    return not part.carrier or part.carrier == Carrier.SELF or not (part.tracking_no or "").strip()


def _store(part: Part) -> RetailStore:
    return RetailStore(store_id=part.node_id, kind="STORE" if part.node_kind == "store" else "WAREHOUSE")


def _parcel_lines(part: Part) -> tuple[ParcelLine, ...]:
    out = []
    for line in part.lines:
        if not line.get("platform_line_id"):
            raise NotSendable(f"line {line.get('sku')} has no platform line id: the split call cannot name it")
        out.append(ParcelLine(platform_line_id=str(line["platform_line_id"]), quantity=int(line["quantity"]),
                              part=int(line["quantity"]) < int(line.get("line_quantity") or line["quantity"])))
    return tuple(out)


def confirmation(ctx: ShopContext, h: Handover, now: datetime) -> Call | Deferred:
    """The call confirming the hand-over of `h.part` (or why another message carries it)."""
    try:
        if ctx.channel == "tmall":
            return _tmall(ctx, h, now)
        if ctx.channel == "jd":
            return _jd(ctx, h, now)
        if ctx.channel == "douyin":
            return _douyin(ctx, h, now)
        if ctx.channel == "miniprogram":
            return _wechat(ctx, h, now)
    except OutboundInputError as exc:
        raise NotSendable(str(exc)) from exc
    raise NotSendable(f"no confirmation call for channel {ctx.channel}")


def _tmall(ctx: ShopContext, h: Handover, now: datetime) -> Call:
    part, kw = h.part, {"now": now, "base_url": ctx.base_url}
    if h.delivery_mode == "pickup" or (_own_rider(part) and not h.split):
        req = ob_tmall.build_dummy_send(ctx.creds, tid=h.external_id, store=_store(part), **kw)
        return Call(req, ob_tmall.parse_dummy_send)
    if h.split:
        if _own_rider(part):
            raise NotSendable("a split part left with the store's own rider: Tmall's split call needs a carrier")
        parcel = Parcel(carrier=part.carrier or "", tracking_no=part.tracking_no or "", lines=_parcel_lines(part))
        req = ob_tmall.build_ascp_offline_send(ctx.creds, tid=h.external_id, parcels=[parcel], store=_store(part), **kw)
        return Call(req, ob_tmall.parse_ascp_offline_send)
    req = ob_tmall.build_offline_send(ctx.creds, tid=h.external_id, carrier=part.carrier or "",
                                      out_sid=part.tracking_no or "", store=_store(part), **kw)
    return Call(req, ob_tmall.parse_offline_send)


def _jd(ctx: ShopContext, h: Handover, now: datetime) -> Call | Deferred:
    if not all(p.handed_over for p in h.parts):
        return Deferred("JD confirms the whole order: sent with the last part's hand-over")
    bills = [ob_jd.Waybill(carrier=Carrier.SELF) if (_own_rider(p) or h.delivery_mode == "pickup")
             else ob_jd.Waybill(carrier=p.carrier or "", tracking_no=p.tracking_no or "") for p in h.parts]
    req = ob_jd.build_shipment(ctx.creds, order_id=h.external_id, waybills=bills, now=now, base_url=ctx.base_url)
    return Call(req, ob_jd.parse_shipment)


def _douyin(ctx: ShopContext, h: Handover, now: datetime) -> Call:
    part = h.part
    if _own_rider(part) or carrier_code(part.carrier or "", Platform.DOUYIN) is None:
        raise NotSendable("Douyin has no carrier code for the store's own rider (UNCONFIRMED): confirm by hand")
    kw = {"now": now, "base_url": ctx.base_url}
    if h.split:
        parcel = Parcel(carrier=part.carrier or "", tracking_no=part.tracking_no or "", lines=_parcel_lines(part))
        req = ob_douyin.build_logistics_add_multi_pack(ctx.creds, order_id=h.external_id, parcels=[parcel],
                                                       request_id=part.fulfillment_id, **kw)
        return Call(req, ob_douyin.parse_logistics_add_multi_pack)
    req = ob_douyin.build_logistics_add(ctx.creds, order_id=h.external_id, carrier=part.carrier or "",
                                        tracking_no=part.tracking_no or "", **kw)
    return Call(req, ob_douyin.parse_logistics_add)


def _wechat_key(ctx: ShopContext, h: Handover) -> ob_wechat.WechatOrderKey:
    tx = (h.buyer.get("encrypted") or {}).get("transaction_id")
    if tx:
        return ob_wechat.WechatOrderKey(transaction_id=tx)
    if not ctx.creds.mchid:
        raise NotSendable("the mini-program shop has no mchid: the payment order cannot be named")
    return ob_wechat.WechatOrderKey(mchid=ctx.creds.mchid, out_trade_no=h.external_id)


def _wechat(ctx: ShopContext, h: Handover, now: datetime) -> Call | Deferred:
    if not all(p.handed_over for p in h.parts):
        return Deferred("WeChat takes one upload per payment: sent with the last part's hand-over")
    openid = (h.buyer.get("encrypted") or {}).get("openid")
    if not openid:
        raise NotSendable("the payer's openid is unknown: upload the shipping info by hand")
    kind = {"pickup": ob_wechat.LogisticsType.PICKUP, "delivery": ob_wechat.LogisticsType.SAME_CITY}.get(
        h.delivery_mode, ob_wechat.LogisticsType.EXPRESS)
    parts = h.parts if kind is ob_wechat.LogisticsType.EXPRESS else h.parts[:1]
    entries = []
    for p in parts:
        desc = ", ".join(f"{l['sku']} x{l['quantity']}" for l in (p.lines if len(parts) > 1 else
                                                                    [l for q in h.parts for l in q.lines]))
        entries.append(ob_wechat.WechatShipment(item_desc=desc[:120] or h.external_id, carrier=p.carrier,
                                                tracking_no=p.tracking_no))
    req = ob_wechat.build_upload_shipping_info(
        ctx.creds.access_token, order_key=_wechat_key(ctx, h), logistics_type=kind, shipping=entries,
        payer_openid=openid, upload_time=now, is_all_delivered=True if len(entries) > 1 else None,
        base_url=ctx.base_url)
    return Call(req, ob_wechat.parse_upload_shipping_info)


#: Cancels we decide (an expired pickup, an unpaid order past its time, an admin): no platform in
#: outbound.md has a seller call that cancels a paid order, so each is listed for ops with this.
CANCEL_BY_HAND = {
    "tmall": "Taobao/Tmall has no seller call to cancel a paid trade (outbound.md §1): refund it in the seller "
             "backend, or agree to the buyer's refund request",
    "jd": "JD has no seller cancel call for a paid order in outbound.md §2: cancel it in the JD merchant backend",
    "douyin": "Douyin has no seller cancel call in outbound.md §3: refund the order in the Doudian backend",
    "miniprogram": "our own channel: refund the WeChat Pay payment from the mini-program backend",
}


def cancel_note(channel: str) -> str:
    """What ops must do on the platform for a cancel we decided (no platform call for it)."""
    return CANCEL_BY_HAND.get(channel, f"{channel}: no cancel call known: cancel it on the platform")


def state_call(ctx: ShopContext, h: Handover, now: datetime) -> StateCall | None:
    """The platform's order-state query, where a repeat of the call would not be deduplicated."""
    if ctx.channel == "tmall":
        return StateCall(ob_tmall.build_trade_state(ctx.creds, tid=h.external_id, now=now, base_url=ctx.base_url),
                         ob_tmall.parse_trade_state)
    if ctx.channel == "jd":
        return StateCall(ob_jd.build_order_state(ctx.creds, order_id=h.external_id, now=now, base_url=ctx.base_url),
                         ob_jd.parse_order_state)
    if ctx.channel == "miniprogram":
        try:
            key = _wechat_key(ctx, h)
        except NotSendable:
            return None
        return StateCall(ob_wechat.build_get_order(ctx.creds.access_token, order_key=key, base_url=ctx.base_url),
                         ob_wechat.parse_get_order)
    return None  # Douyin: logisticsAdd answers "already shipped", MultiPack repeats by request_id


def split_lines(h: Handover) -> Sequence[str]:
    """The platform line ids this message's part covers, for a state check of a split order."""
    if not h.split:
        return ()
    return [str(l["platform_line_id"]) for l in h.part.lines if l.get("platform_line_id")]
