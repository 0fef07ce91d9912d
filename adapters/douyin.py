"""Douyin shop (抖店) — where a Douyin push is verified, parsed and turned into events/orders.

Flow: Douyin POSTs a JSON array of thin messages to /webhooks/douyin with headers `app-id` and
`event-sign`; `verify_push` checks the signature over the exact bytes; `parse_push` returns one
result per message (good ones as ChannelEvents, bad ones as typed errors, never one exception
for the batch); for UPSERT events the full order is fetched with `build_order_detail_request`
(sent by oms/channels/fetch.py) and read with `parse_order_detail_response`.

Sources (checked with the search tool):
- push signature `md5(app_key + body + app_secret)` hex, header `event-sign`, `app-id`, tag "0"
  verification ping, answer {"code":0,"msg":"success"}: minibear2021/doudian `doudian/core.py`
  (DouDian.callback) and `examples.py`; cnJun/sdk4-jinritemai `DoudianPushMessage.java`
  ("MD5(app_id+msg_body+app_secret)").
- message data fields (p_id, s_ids, order_status, cancel_reason, aftersale_*): cnJun/sdk4-jinritemai
  `model/message/DoudianTradeTradePaid101.java`, `...Canceled106.java`, `...RefundSuccess206.java`
  (citing op.jinritemai.com/docs/message-docs/30/110, /30/123, /31/121).
- order fields (order_status enum, amounts in fen, encrypt_post_* / mask_post_*, post_addr,
  sku_order_list with out_sku_id / code / item_num / origin_amount): the shop_order_list sample in
  agiso's Doudian order-list page (open.agiso.com aldsDoudian/api/orderList), same shape as
  order.orderDetail's shop_order_detail.
- API signing `secret + "app_key..method..param_json..timestamp..v2" + secret`, HMAC-SHA256 keyed
  by the secret (or MD5), gateway openapi-fxg.jinritemai.com/{method with / }: minibear2021/doudian
  `DouDian._sign`, `_request`.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import msgspec

from adapters.common import (
    EMPTY_SKU_MAP,
    HttpRequest,
    WebhookReply,
    convert,
    decode_json,
    finish_order,
    header,
    id_text,
    md5_hex,
    optional_id,
    quantity,
    require_signature,
    resolve_sku,
    same_hex,
    text,
)
from adapters.errors import AdapterError, PayloadError, SignatureError, UpstreamError
from adapters.geo import destination_from_point, destination_from_region, parse_coordinate
from adapters.money import fen
from adapters.normalized import (
    Buyer,
    Channel,
    ChannelEvent,
    ChannelEventKind,
    ChannelStatus,
    DeliveryMode,
    NormalizedOrder,
    OrderLine,
)
from adapters.timeutil import from_epoch_seconds, now_beijing

CHANNEL = Channel.DOUYIN
APP_ID_HEADER = "app-id"
SIGN_HEADER = "event-sign"
#: only one third-party implementation announces an HMAC-SHA256 variant this way; default is MD5
SIGN_METHOD_HEADER = "sign-method"
DEFAULT_API_URL = "https://openapi-fxg.jinritemai.com"


class DouyinCredentials(msgspec.Struct, frozen=True, kw_only=True):
    """App key/secret from OMS_DOUYIN_APP_KEY / OMS_DOUYIN_APP_SECRET; access token for the API."""

    app_key: str
    app_secret: str
    access_token: str = ""

    def __repr__(self) -> str:  # secrets never reach a log line through repr()
        return f"DouyinCredentials(app_key={self.app_key!r}, app_secret=***, access_token=***)"


# ---------------------------------------------------------------- push messages (the webhook)


class DouyinPushMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One element of the pushed array. Source: minibear2021/doudian examples.py (`tag`, `msg_id`,
    `data` as JSON text); SDK samples also show a numeric tag, `msgId`, and `data` as an object."""

    tag: int | str
    msg_id: int | str | None = None
    msgId: int | str | None = None  # noqa: N815 - the platform's own spelling
    data: str | dict[str, Any] | None = None


class DouyinTradeData(msgspec.Struct, frozen=True, kw_only=True):
    """`data` of trade messages 100-110. Source: cnJun/sdk4-jinritemai DoudianTradeTradePaid101 /
    DoudianTradeTradeCanceled106 (op.jinritemai.com/docs/message-docs/30/110, /30/123)."""

    p_id: int | str
    s_ids: list[int | str] = []
    shop_id: int | str | None = None
    order_status: int | None = None
    order_type: int | None = None
    biz: int | None = None
    create_time: int | None = None
    pay_time: int | None = None
    pay_amount: int | None = None
    update_time: int | None = None
    complete_time: int | None = None
    cancel_time: int | None = None
    cancel_reason: str | None = None


class DouyinRefundData(msgspec.Struct, frozen=True, kw_only=True):
    """`data` of after-sale messages 200-211. Source: cnJun/sdk4-jinritemai
    DoudianRefundRefundSuccess206 (op.jinritemai.com/docs/message-docs/31/121)."""

    p_id: int | str
    s_id: int | str | None = None
    shop_id: int | str | None = None
    aftersale_id: int | str | None = None
    aftersale_status: int | None = None
    aftersale_type: int | None = None  # 0 return+refund, 1 refund only, 2 refund before shipping, 3 exchange
    refund_amount: int | None = None  # fen, freight included
    refund_post_amount: int | None = None
    apply_time: int | None = None
    success_time: int | None = None
    update_time: int | None = None


class _Family(enum.Enum):
    PING = "ping"
    TRADE = "trade"
    REFUND = "refund"


class Route(NamedTuple):
    kind: ChannelEventKind
    status: ChannelStatus | None
    family: _Family


#: tag -> what the service does. Route on the tag, never on the data's own status field.
ROUTES: dict[int, Route] = {
    0: Route(ChannelEventKind.IGNORE, None, _Family.PING),  # push-service verification ping
    100: Route(ChannelEventKind.UPSERT, ChannelStatus.UNPAID, _Family.TRADE),  # created
    101: Route(ChannelEventKind.UPSERT, ChannelStatus.PAID, _Family.TRADE),  # paid
    110: Route(ChannelEventKind.UPSERT, ChannelStatus.PAID, _Family.TRADE),  # paid, pending confirmation
    102: Route(ChannelEventKind.STATUS, ChannelStatus.SHIPPED, _Family.TRADE),  # seller shipped
    103: Route(ChannelEventKind.STATUS, ChannelStatus.COMPLETED, _Family.TRADE),  # trade success
    105: Route(ChannelEventKind.UPSERT, None, _Family.TRADE),  # address changed: refetch destination
    106: Route(ChannelEventKind.CANCEL, ChannelStatus.CANCELLED, _Family.TRADE),  # cancelled
    # A refund *request* may still be refused (204), so stock is released only on 206.
    200: Route(ChannelEventKind.IGNORE, None, _Family.REFUND),  # refund created
    206: Route(ChannelEventKind.REFUND_LINES, None, _Family.REFUND),  # refund succeeded
    207: Route(ChannelEventKind.IGNORE, None, _Family.REFUND),  # refund closed
}

#: order.orderDetail `order_status` -> our ChannelStatus (one table per channel)
STATUS_MAP: dict[int, ChannelStatus] = {
    1: ChannelStatus.UNPAID,  # awaiting confirmation / payment
    105: ChannelStatus.PAID,  # paid (risk-checked before shipping)
    2: ChannelStatus.PAID,  # preparing (备货中)
    101: ChannelStatus.PAID,  # partly shipped: still open for the rest
    3: ChannelStatus.SHIPPED,
    4: ChannelStatus.CANCELLED,
    5: ChannelStatus.COMPLETED,
}
#: main_status values meaning the whole order was refunded (before/after shipping, after receipt)
_REFUNDED_MAIN_STATUS = {21, 22, 39}

_EXCHANGE = 3  # aftersale_type of an exchange: no money back, nothing to release


def sign_push(app_key: str, app_secret: str, raw: bytes, sign_method: str = "md5") -> str:
    """The `event-sign` Douyin computes: md5(app_key + body + app_secret), or HMAC-SHA256 of it."""
    message = app_key.encode() + raw + app_secret.encode()
    if sign_method.lower().replace("_", "-") in {"hmac-sha256", "hmacsha256", "sha256"}:
        return hmac.new(app_secret.encode(), message, hashlib.sha256).hexdigest()
    return md5_hex(message)


def verify_push(raw: bytes, headers: Mapping[str, str], creds: DouyinCredentials) -> None:
    """Check `event-sign` over the exact bytes received (and `app-id`); SignatureError if not."""
    given = header(headers, SIGN_HEADER)
    if not given:
        raise SignatureError("douyin: event-sign header missing", field=SIGN_HEADER)
    app_id = header(headers, APP_ID_HEADER)
    if app_id is not None and app_id.strip() != creds.app_key:
        raise SignatureError("douyin: app-id is not our app key", field=APP_ID_HEADER)
    method = header(headers, SIGN_METHOD_HEADER) or "md5"
    expected = sign_push(creds.app_key, creds.app_secret, raw, method)
    require_signature(same_hex(expected, given), CHANNEL, "event-sign")


class PushItem(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome for one message of a batch: an event, or the typed error that refused it."""

    index: int
    msg_id: str | None
    event: ChannelEvent | None = None
    error: AdapterError | None = None


def parse_push(raw: bytes, headers: Mapping[str, str], creds: DouyinCredentials) -> list[PushItem]:
    """Verify and parse a Douyin push; one PushItem per message, bad ones carry their error.

    Raises only for the whole body: SignatureError (nothing may be trusted) or PayloadError
    when the body is not a JSON array/object at all (there is nothing to split).
    """
    verify_push(raw, headers, creds)
    try:
        elements = msgspec.json.decode(raw, type=list[msgspec.Raw] | dict[str, msgspec.Raw])
    except (msgspec.DecodeError, RecursionError):
        raise PayloadError("body", "not a JSON array of messages") from None
    if isinstance(elements, dict):
        elements = [msgspec.Raw(raw)]  # a single message object: tolerated
    items = []
    for index, element in enumerate(elements):
        items.append(_parse_one(index, bytes(element)))
    return items


def _parse_one(index: int, raw: bytes) -> PushItem:
    root = f"[{index}]"
    msg_id: str | None = None
    try:
        message = decode_json(raw, DouyinPushMessage, root=root)
        msg_id = optional_id(message.msg_id if message.msg_id is not None else message.msgId, f"{root}.msg_id")
        return PushItem(index=index, msg_id=msg_id, event=_event(message, msg_id, raw, root))
    except AdapterError as exc:
        return PushItem(index=index, msg_id=msg_id, error=exc.with_message_id(msg_id))


def _tag(value: int | str, field: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 6:
        return int(value)
    raise PayloadError(field, "tag must be a number")


def _data(message: DouyinPushMessage, root: str) -> dict[str, Any]:
    if message.data is None:
        raise PayloadError(f"{root}.data", "data is missing")
    if isinstance(message.data, dict):
        return message.data
    return decode_json(message.data, dict[str, Any], root=f"{root}.data")


def _event(message: DouyinPushMessage, msg_id: str | None, raw: bytes, root: str) -> ChannelEvent:
    tag = _tag(message.tag, f"{root}.tag")
    route = ROUTES.get(tag, Route(ChannelEventKind.IGNORE, None, _Family.PING))
    if msg_id is None:
        if tag != 0:
            raise PayloadError(f"{root}.msg_id", "msg_id is missing")
        # the console's verification ping may carry no id: it must still be acknowledged
        msg_id = "ping:" + md5_hex(raw)
    if route.family is _Family.PING:
        # verification ping or a tag we do not subscribe to: acknowledged, nothing to do
        return ChannelEvent(
            channel=CHANNEL, message_id=msg_id, kind=ChannelEventKind.IGNORE, external_id="", topic=str(tag), raw=raw
        )
    data = _data(message, root)
    if route.family is _Family.TRADE:
        trade = convert(data, DouyinTradeData, root=f"{root}.data")
        occurred = _first_time(
            trade,
            ("cancel_time", "complete_time", "pay_time", "update_time", "create_time"),
            f"{root}.data",
        )
        return ChannelEvent(
            channel=CHANNEL,
            message_id=msg_id,
            kind=route.kind,
            external_id=id_text(trade.p_id, f"{root}.data.p_id"),
            topic=str(tag),
            status=route.status,
            occurred_at=occurred,
            raw=raw,
        )
    refund = convert(data, DouyinRefundData, root=f"{root}.data")
    kind = route.kind
    if kind is ChannelEventKind.REFUND_LINES and refund.aftersale_type == _EXCHANGE:
        kind = ChannelEventKind.IGNORE  # an exchange refunds nothing
    line = optional_id(refund.s_id, f"{root}.data.s_id")
    if kind is ChannelEventKind.REFUND_LINES and line is None:
        raise PayloadError(f"{root}.data.s_id", "refund names no line (s_id)")
    amount = fen(refund.refund_amount, f"{root}.data.refund_amount") if refund.refund_amount is not None else None
    return ChannelEvent(
        channel=CHANNEL,
        message_id=msg_id,
        kind=kind,
        external_id=id_text(refund.p_id, f"{root}.data.p_id"),
        topic=str(tag),
        occurred_at=_first_time(refund, ("success_time", "update_time", "apply_time"), f"{root}.data"),
        refunded_line_ids=[line] if (line and kind is ChannelEventKind.REFUND_LINES) else [],
        amount_fen=amount,
        raw=raw,
    )


def _first_time(obj: msgspec.Struct, names: tuple[str, ...], root: str) -> datetime | None:
    for name in names:
        moment = from_epoch_seconds(getattr(obj, name), f"{root}.{name}")
        if moment is not None:
            return moment
    return None


# ---------------------------------------------------------------- acknowledgements

ACK_SUCCESS = b'{"code":0,"msg":"success"}'


def ack_success() -> WebhookReply:
    """200 {"code":0,"msg":"success"}: what Douyin expects, else it retries the push."""
    return WebhookReply(status=200, body=ACK_SUCCESS)


def ack_error(status: int, message: str, errors: list[dict[str, str]] | None = None) -> WebhookReply:
    """A non-success answer (Douyin retries): code is status*100, e.g. 40100 for a bad signature."""
    payload: dict[str, Any] = {"code": status * 100, "msg": message}
    if errors:
        payload["errors"] = errors
    return WebhookReply(status=status, body=msgspec.json.encode(payload))


# ---------------------------------------------------------------- order.orderDetail (the fetch)


class DouyinNamed(msgspec.Struct, frozen=True, kw_only=True):
    name: str = ""
    id: int | str | None = None


class DouyinPostAddr(msgspec.Struct, frozen=True, kw_only=True):
    """`post_addr` / `mask_post_addr`. Source: agiso Doudian order-list sample (post_addr with
    province/city/town/street {name,id} and encrypt_detail)."""

    province: DouyinNamed | None = None
    city: DouyinNamed | None = None
    town: DouyinNamed | None = None
    street: DouyinNamed | None = None
    detail: str | None = None  # masked copy only (mask_post_addr)
    encrypt_detail: str | None = None


class DouyinCoordinate(msgspec.Struct, frozen=True, kw_only=True):
    """`user_coordinate`: the buyer's point as decimal strings, GCJ-02 (per issue #6; both
    spellings accepted because the public samples disagree)."""

    user_coordinate_longitude: str | float | None = None
    user_coordinate_latitude: str | float | None = None
    longitude: str | float | None = None
    latitude: str | float | None = None


class DouyinStoreInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Pickup store of a 自提 order; `out_store_id` is the merchant's own store code (our node id)."""

    store_id: int | str | None = None
    out_store_id: str | None = None
    store_name: str | None = None


class DouyinSkuOrder(msgspec.Struct, frozen=True, kw_only=True):
    """One `sku_order_list` item. Source: agiso Doudian order-list sample (order_id, sku_id,
    out_sku_id, code, item_num, origin_amount in fen, receive_type 1 post / 2 pickup)."""

    order_id: int | str
    sku_id: int | str | None = None
    out_sku_id: str | None = None
    code: str | None = None
    item_num: int | None = None
    origin_amount: int | None = None
    sum_amount: int | None = None
    receive_type: int | None = None
    product_name: str | None = None
    #: 【库存扣减方式】 1 下单减库存 (at order time), 2 支付减库存 (at payment): the official Doudian
    #: SDK's SkuOrderListItem (order.searchList; orderDetail's items are assumed to carry it too)
    reduce_stock_type: int | None = None


class DouyinShopOrderDetail(msgspec.Struct, frozen=True, kw_only=True):
    """`data.shop_order_detail` of order.orderDetail. Source: agiso sample + issue #6 (instant
    delivery `early_arrival`, `target_arrival_time`; `user_coordinate`)."""

    order_id: int | str
    order_status: int
    main_status: int | None = None
    create_time: int | None = None
    pay_time: int | None = None
    update_time: int | None = None
    order_amount: int | None = None
    pay_amount: int | None = None
    post_amount: int | None = None
    promotion_amount: int | None = None
    encrypt_post_receiver: str | None = None
    encrypt_post_tel: str | None = None
    mask_post_receiver: str | None = None
    mask_post_tel: str | None = None
    post_addr: DouyinPostAddr | None = None
    mask_post_addr: DouyinPostAddr | None = None
    user_coordinate: DouyinCoordinate | None = None
    early_arrival: bool | int | None = None
    target_arrival_time: int | None = None
    store_info: DouyinStoreInfo | None = None
    #: 订单过期时间: the SDK's example is 1800, read here as seconds after create_time (a value
    #: that looks like Unix seconds is taken as the moment itself). Unconfirmed: no page says which.
    order_expire_time: int | None = None
    sku_order_list: list[DouyinSkuOrder] = []


class DouyinOrderDetailData(msgspec.Struct, frozen=True, kw_only=True):
    shop_order_detail: DouyinShopOrderDetail


class DouyinOrderDetailResponse(msgspec.Struct, frozen=True, kw_only=True):
    """Envelope: code 10000 / err_no 0 on success (minibear2021/doudian checks err_no == 0)."""

    code: int | None = None
    msg: str | None = None
    sub_code: str | None = None
    sub_msg: str | None = None
    err_no: int | None = None
    message: str | None = None
    data: msgspec.Raw = msgspec.Raw()  # decoded only on success (errors send "data": {})


def api_sign(
    app_key: str, app_secret: str, method: str, param_json: str, timestamp: str, sign_method: str = "hmac-sha256"
) -> str:
    """Doudian API sign: secret + "app_key..method..param_json..timestamp..v2" + secret."""
    pattern = f"{app_secret}app_key{app_key}method{method}param_json{param_json}timestamp{timestamp}v2{app_secret}"
    if sign_method == "md5":
        return md5_hex(pattern.encode())
    return hmac.new(app_secret.encode(), pattern.encode(), hashlib.sha256).hexdigest()


def build_order_detail_request(
    shop_order_id: str,
    creds: DouyinCredentials,
    *,
    base_url: str = DEFAULT_API_URL,
    now: datetime | None = None,
    sign_method: str = "hmac-sha256",
) -> HttpRequest:
    """Build the signed POST {base}/order/orderDetail call for one shop order id."""
    method = "order.orderDetail"
    # sorted keys, no spaces: the exact text that is signed and sent
    param_json = json.dumps({"shop_order_id": shop_order_id}, sort_keys=True, separators=(",", ":"))
    timestamp = str(int((now or now_beijing()).timestamp()))
    sign = api_sign(creds.app_key, creds.app_secret, method, param_json, timestamp, sign_method)
    return HttpRequest(
        method="POST",
        url=base_url.rstrip("/") + "/" + method.replace(".", "/"),
        params={
            "app_key": creds.app_key,
            "method": method,
            "access_token": creds.access_token,
            "timestamp": timestamp,
            "v": "2",
            "sign_method": sign_method,
            "sign": sign,
        },
        body=param_json.encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )


def parse_order_detail_response(raw: bytes, *, sku_map: Mapping[str, str] = EMPTY_SKU_MAP) -> NormalizedOrder:
    """Read an order.orderDetail answer into a NormalizedOrder (UpstreamError for an error envelope)."""
    envelope = decode_json(raw, DouyinOrderDetailResponse, root="")
    ok = envelope.code == 10000 or envelope.err_no == 0
    if not ok or bytes(envelope.data) in (b"", b"null"):
        code = envelope.sub_code or (str(envelope.code) if envelope.code is not None else None)
        raise UpstreamError(
            f"douyin order.orderDetail failed: {envelope.sub_msg or envelope.msg or envelope.message or 'no data'}",
            code=code,
        )
    data = decode_json(bytes(envelope.data), DouyinOrderDetailData, root="data")
    return order_from_detail(data.shop_order_detail, sku_map=sku_map)


def map_status(detail: DouyinShopOrderDetail, root: str = "data.shop_order_detail") -> ChannelStatus:
    """order_status through STATUS_MAP; a fully refunded main_status reads as cancelled."""
    if detail.main_status in _REFUNDED_MAIN_STATUS:
        return ChannelStatus.CANCELLED
    status = STATUS_MAP.get(detail.order_status)
    if status is None:
        raise PayloadError(f"{root}.order_status", "unknown order_status")
    return status


def order_from_detail(
    detail: DouyinShopOrderDetail, *, sku_map: Mapping[str, str] = EMPTY_SKU_MAP
) -> NormalizedOrder:
    """Map a shop_order_detail onto the NormalizedOrder contract."""
    root = "data.shop_order_detail"
    if not detail.sku_order_list:
        raise PayloadError(f"{root}.sku_order_list", "order has no lines")
    lines: list[OrderLine] = []
    unmapped: list[str] = []
    for i, item in enumerate(detail.sku_order_list):
        where = f"{root}.sku_order_list[{i}]"
        line_id = id_text(item.order_id, f"{where}.order_id")
        platform_sku = optional_id(item.sku_id, f"{where}.sku_id")
        sku, reason = resolve_sku(
            (item.out_sku_id, item.code), platform_sku, sku_map, channel=CHANNEL, line_label=f"line {line_id}"
        )
        if reason:
            unmapped.append(reason)
        lines.append(
            OrderLine(
                sku=sku,
                quantity=quantity(item.item_num, f"{where}.item_num"),
                unit_price=fen(item.origin_amount if item.origin_amount is not None else 0, f"{where}.origin_amount"),
                platform_line_id=line_id,
                platform_sku_id=platform_sku,
                unmapped_reason=reason,
            )
        )

    mode, pickup_node, promised = _delivery(detail, root)
    region = detail.post_addr or detail.mask_post_addr
    province = _name(region.province) if region else None
    city = _name(region.city) if region else None
    district = _name(region.town) if region else None
    address = _masked_address(detail.mask_post_addr or detail.post_addr)
    coordinate = detail.user_coordinate
    lat = lng = None
    if coordinate is not None:
        lng = parse_coordinate(
            coordinate.user_coordinate_longitude if coordinate.user_coordinate_longitude is not None
            else coordinate.longitude,
            f"{root}.user_coordinate.longitude",
        )
        lat = parse_coordinate(
            coordinate.user_coordinate_latitude if coordinate.user_coordinate_latitude is not None
            else coordinate.latitude,
            f"{root}.user_coordinate.latitude",
        )
    if lat is not None and lng is not None:
        # Douyin's coordinates are already GCJ-02, our system: no conversion
        destination = destination_from_point(
            lat, lng, field=f"{root}.user_coordinate", address=address,
            province=province, city=city, district=district,
        )
    else:
        destination = destination_from_region(province, city, district, field=f"{root}.post_addr", address=address)

    encrypted = {
        key: value
        for key, value in (
            ("encrypt_post_receiver", detail.encrypt_post_receiver),
            ("encrypt_post_tel", detail.encrypt_post_tel),
            ("encrypt_detail", detail.post_addr.encrypt_detail if detail.post_addr else None),
        )
        if value
    }
    return finish_order(
        channel=CHANNEL,
        external_id=id_text(detail.order_id, f"{root}.order_id"),
        delivery_mode=mode,
        destination=destination,
        lines=lines,
        status=map_status(detail, root),
        pickup_node_id=pickup_node,
        buyer=Buyer(name_masked=text(detail.mask_post_receiver), phone_masked=text(detail.mask_post_tel),
                    encrypted=encrypted),
        total_fen=fen(detail.pay_amount, f"{root}.pay_amount") if detail.pay_amount is not None else None,
        freight_fen=fen(detail.post_amount or 0, f"{root}.post_amount"),
        discount_fen=fen(detail.promotion_amount or 0, f"{root}.promotion_amount"),
        created_at=from_epoch_seconds(detail.create_time, f"{root}.create_time"),
        paid_at=from_epoch_seconds(detail.pay_time, f"{root}.pay_time"),
        promised_by=promised,
        updated_at=from_epoch_seconds(detail.update_time, f"{root}.update_time"),
        pay_by=_expires_at(detail, root),
        deducts_at_order=deducts_at_order(detail.sku_order_list),
        unmapped=unmapped,
    )


#: below this, order_expire_time is a duration in seconds (1800 = 30 minutes), not a moment
_EPOCH_FLOOR = 1_000_000_000


def _expires_at(detail: DouyinShopOrderDetail, root: str) -> datetime | None:
    """When Douyin closes the order unpaid (order_expire_time), or None when it does not say."""
    value = detail.order_expire_time
    if value is None or value == 0 or isinstance(value, bool):
        return None
    if value >= _EPOCH_FLOOR:
        return from_epoch_seconds(value, f"{root}.order_expire_time")
    created = from_epoch_seconds(detail.create_time, f"{root}.create_time")
    if created is None or value < 0:
        raise PayloadError(f"{root}.order_expire_time", "an expiry in seconds needs create_time, and must be > 0")
    return created + timedelta(seconds=value)


def deducts_at_order(items: list[DouyinSkuOrder]) -> bool | None:
    """reduce_stock_type of the lines: True when Douyin took any line's units off its counter at
    order time (1), False when every line deducts at payment (2), None when the lines do not say
    (the shop's setting decides). A mixed order holds all of it: never less than Douyin took."""
    kinds = {item.reduce_stock_type for item in items}
    if 1 in kinds:
        return True
    return False if kinds == {2} else None


def _delivery(detail: DouyinShopOrderDetail, root: str) -> tuple[DeliveryMode, str | None, datetime | None]:
    if any(item.receive_type == 2 for item in detail.sku_order_list):  # 2 = buyer collects (自提)
        store = detail.store_info
        node = (text(store.out_store_id) or optional_id(store.store_id, f"{root}.store_info.store_id")) if store else None
        if not node:
            raise PayloadError(f"{root}.store_info.store_id", "pickup order names no store")
        return DeliveryMode.PICKUP, node, None
    promised = from_epoch_seconds(detail.target_arrival_time, f"{root}.target_arrival_time")
    if promised is not None or bool(detail.early_arrival):
        return DeliveryMode.DELIVERY, None, promised  # instant delivery (小时达)
    return DeliveryMode.SHIP, None, None


def _name(named: DouyinNamed | None) -> str | None:
    return text(named.name) if named else None


def _masked_address(addr: DouyinPostAddr | None) -> str:
    """Region names plus the masked street detail; never the encrypted or a decrypted address."""
    if addr is None:
        return ""
    parts = [_name(addr.province), _name(addr.city), _name(addr.town), _name(addr.street), text(addr.detail)]
    return "".join(p for p in parts if p)
