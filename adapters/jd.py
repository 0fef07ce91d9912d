"""JD (京东 POP) — JOS signing, jingdong.pop.order.search / order.get, relayed messages.

JD's open platform (JOS) offers no order push we could find, so the OMS polls
`jingdong.pop.order.search` by modified time (oms/channels/jd_worker.py): `build_search_request`
describes the signed call, `parse_search_response` turns each returned order into a ChannelEvent
carrying the full NormalizedOrder (one result per order, so one bad order never blocks a page).
`POST /webhooks/jd` takes JD order messages relayed by a push gateway, JOS-signed form
parameters with the message in `360buy_param_json`: `parse_relay`; the order is then fetched
with `build_order_get_request` / `parse_order_get_response`.

Sources (checked with the search tool):
- JOS signing UPPER(md5(secret + sorted key+value + secret)) over 360buy_param_json,
  access_token, app_key, method, timestamp, v; worked example giving
  D70825340F4084360B9362B60DFD7930 (open.jd.com/v2/#/doc/dev-guide?listId=2643, reproduced in a
  public signature-vector table and in tests/adapters/test_adapter_jd.py).
- response envelope jingdong_pop_order_search_responce.searchorderinfo_result
  {apiResult{success}, orderInfoList, orderTotal} and error_response{code, zh_desc, en_desc};
  query fields start_date, end_date, order_state, optional_fields, page, page_size, sortType,
  dateType: public JOS clients (e.g. Kotlin `getResult` checking apiResult.success, PHP
  PopOrderSearchRequest usage) found by the code search.
- order fields orderId, orderState, orderPayment, freightPrice, sellerDiscount, consigneeInfo,
  itemInfoList[{skuId, outerSkuId, jdPrice, itemTotal}], orderStartTime, paymentConfirmTime,
  modified: same sources and issue #6.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

import msgspec

from adapters.common import (
    EMPTY_SKU_MAP,
    HttpRequest,
    WebhookReply,
    decode_json,
    finish_order,
    id_text,
    md5_hex,
    optional_id,
    quantity,
    require_signature,
    resolve_sku,
    same_hex,
    text,
)
from adapters.errors import AdapterError, PayloadError, SignatureError, StaleTimestamp, UpstreamError
from adapters.geo import destination_from_region
from adapters.money import yuan_to_fen
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
from adapters.timeutil import (
    format_jos_timestamp,
    format_top_timestamp,
    now_beijing,
    parse_optional_platform_time,
    parse_platform_time,
)

CHANNEL = Channel.JD
DEFAULT_API_URL = "https://api.jd.com/routerjson"
SEARCH_METHOD = "jingdong.pop.order.search"
GET_METHOD = "jingdong.pop.order.get"
RELAY_MAX_SKEW = timedelta(minutes=10)

OPTIONAL_FIELDS = (
    "orderId,venderId,orderType,orderState,orderStateRemark,orderTotalPrice,orderSellerPrice,"
    "orderPayment,freightPrice,sellerDiscount,orderStartTime,orderEndTime,paymentConfirmTime,"
    "modified,consigneeInfo,itemInfoList,storeId,storeOrder"
)
#: states the poller asks for: everything an OMS acts on (JD filters by state when given)
POLL_STATES = (
    "WAIT_SELLER_STOCK_OUT,WAIT_GOODS_RECEIVE_CONFIRM,WAIT_SELLER_DELIVERY,FINISHED_L,"
    "TRADE_CANCELED,LOCKED,POP_ORDER_PAUSE"
)


class JdCredentials(msgspec.Struct, frozen=True, kw_only=True):
    """OMS_JD_APP_KEY / OMS_JD_APP_SECRET, and the shop's access token."""

    app_key: str
    app_secret: str
    access_token: str = ""

    def __repr__(self) -> str:
        return f"JdCredentials(app_key={self.app_key!r}, app_secret=***, access_token=***)"


def jos_sign(params: Mapping[str, str], secret: str) -> str:
    """UPPER(md5(secret + key1value1key2value2... + secret)), keys sorted, `sign` left out."""
    concat = "".join(f"{k}{v}" for k, v in sorted(params.items()) if k != "sign" and v is not None)
    return md5_hex(f"{secret}{concat}{secret}".encode("utf-8")).upper()


def _param_json(business: Mapping[str, Any]) -> str:
    # compact, key-sorted JSON: the exact text that is signed must be the text that is sent
    return json.dumps(business, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _jos_request(method: str, business: Mapping[str, Any], creds: JdCredentials, base_url: str,
                 now: datetime | None) -> HttpRequest:
    params = {
        "360buy_param_json": _param_json(business),
        "access_token": creds.access_token,
        "app_key": creds.app_key,
        "method": method,
        "timestamp": format_jos_timestamp(now or now_beijing()),
        "v": "2.0",
    }
    params["sign"] = jos_sign(params, creds.app_secret)
    return HttpRequest(
        method="POST",
        url=base_url,
        form=params,
        headers={"Content-Type": "application/x-www-form-urlencoded;charset=utf-8"},
    )


def build_search_request(
    creds: JdCredentials,
    *,
    start: datetime,
    end: datetime,
    page: int = 1,
    page_size: int = 50,
    base_url: str = DEFAULT_API_URL,
    order_state: str = POLL_STATES,
    now: datetime | None = None,
) -> HttpRequest:
    """Build the signed jingdong.pop.order.search call for one page of a modified-time window."""
    business = {
        "start_date": format_top_timestamp(start),
        "end_date": format_top_timestamp(end),
        "order_state": order_state,
        "optional_fields": OPTIONAL_FIELDS,
        "page": str(page),
        "page_size": str(page_size),
        "dateType": "0",  # 0: by modified time, so status changes are seen, not only new orders
        "sortType": "1",
    }
    return _jos_request(SEARCH_METHOD, business, creds, base_url, now)


def build_order_get_request(
    order_id: str, creds: JdCredentials, *, base_url: str = DEFAULT_API_URL, now: datetime | None = None
) -> HttpRequest:
    """Build the signed jingdong.pop.order.get call for one order (used after a relayed message)."""
    business = {"order_id": order_id, "optional_fields": OPTIONAL_FIELDS, "order_state": POLL_STATES}
    return _jos_request(GET_METHOD, business, creds, base_url, now)


# ---------------------------------------------------------------- the order shape


class JdConsignee(msgspec.Struct, frozen=True, kw_only=True):
    """`consigneeInfo`: masked as JD returns it (fullname, mobile, fullAddress...)."""

    fullname: str | None = None
    mobile: str | None = None
    telephone: str | None = None
    fullAddress: str | None = None  # noqa: N815 - JD's spelling
    province: str | None = None
    city: str | None = None
    county: str | None = None
    town: str | None = None
    provinceId: str | int | None = None  # noqa: N815
    cityId: str | int | None = None  # noqa: N815
    countyId: str | int | None = None  # noqa: N815


class JdItem(msgspec.Struct, frozen=True, kw_only=True):
    """One `itemInfoList` entry: skuId, outerSkuId (merchant code), jdPrice (yuan), itemTotal."""

    skuId: str | int | None = None  # noqa: N815
    outerSkuId: str | None = None  # noqa: N815
    skuName: str | None = None  # noqa: N815
    jdPrice: str | int | None = None  # noqa: N815
    itemTotal: str | int | None = None  # noqa: N815
    wareId: str | int | None = None  # noqa: N815
    productNo: str | None = None  # noqa: N815


class JdOrder(msgspec.Struct, frozen=True, kw_only=True):
    """One `orderInfoList` entry of jingdong.pop.order.search (also orderInfo of order.get)."""

    orderId: str | int  # noqa: N815
    orderState: str  # noqa: N815
    orderType: str | int | None = None  # noqa: N815
    orderTotalPrice: str | None = None  # noqa: N815
    orderSellerPrice: str | None = None  # noqa: N815
    orderPayment: str | None = None  # noqa: N815
    freightPrice: str | None = None  # noqa: N815
    sellerDiscount: str | None = None  # noqa: N815
    orderStartTime: str | None = None  # noqa: N815
    orderEndTime: str | None = None  # noqa: N815
    paymentConfirmTime: str | None = None  # noqa: N815
    modified: str | None = None
    storeOrder: str | None = None  # noqa: N815
    storeId: str | int | None = None  # noqa: N815
    consigneeInfo: JdConsignee | None = None  # noqa: N815
    itemInfoList: list[JdItem] = []  # noqa: N815


class Route(NamedTuple):
    kind: ChannelEventKind
    status: ChannelStatus | None


#: orderState -> what the service does (the order itself is attached to every event)
ROUTES: dict[str, Route] = {
    "WAIT_SELLER_STOCK_OUT": Route(ChannelEventKind.UPSERT, ChannelStatus.PAID),
    "WAIT_SELLER_DELIVERY": Route(ChannelEventKind.UPSERT, ChannelStatus.PAID),
    # LOCKED: a cancel/refund request is pending; JD ends it in TRADE_CANCELED or unlocks it.
    "LOCKED": Route(ChannelEventKind.IGNORE, None),
    "POP_ORDER_PAUSE": Route(ChannelEventKind.IGNORE, None),
    "SEND_TO_DISTRIBUTION_CENER": Route(ChannelEventKind.STATUS, ChannelStatus.SHIPPED),
    "DISTRIBUTION_CENTER_RECEIVED": Route(ChannelEventKind.STATUS, ChannelStatus.SHIPPED),
    "WAIT_GOODS_RECEIVE_CONFIRM": Route(ChannelEventKind.STATUS, ChannelStatus.SHIPPED),
    "RECEIPTS_CONFIRM": Route(ChannelEventKind.STATUS, ChannelStatus.COMPLETED),
    "FINISHED_L": Route(ChannelEventKind.STATUS, ChannelStatus.COMPLETED),
    "TRADE_CANCELED": Route(ChannelEventKind.CANCEL, ChannelStatus.CANCELLED),
}

#: orderState -> our ChannelStatus (one table per channel)
STATUS_MAP: dict[str, ChannelStatus] = {
    "WAIT_SELLER_STOCK_OUT": ChannelStatus.PAID,
    "WAIT_SELLER_DELIVERY": ChannelStatus.PAID,
    "LOCKED": ChannelStatus.PAID,
    "POP_ORDER_PAUSE": ChannelStatus.PAID,
    "SEND_TO_DISTRIBUTION_CENER": ChannelStatus.SHIPPED,
    "DISTRIBUTION_CENTER_RECEIVED": ChannelStatus.SHIPPED,
    "WAIT_GOODS_RECEIVE_CONFIRM": ChannelStatus.SHIPPED,
    "RECEIPTS_CONFIRM": ChannelStatus.COMPLETED,
    "FINISHED_L": ChannelStatus.COMPLETED,
    "TRADE_CANCELED": ChannelStatus.CANCELLED,
}


def order_from_jd(order: JdOrder, *, sku_map: Mapping[str, str] = EMPTY_SKU_MAP, root: str = "order") -> NormalizedOrder:
    """Map one JD order onto the NormalizedOrder contract."""
    status = STATUS_MAP.get(order.orderState)
    if status is None:
        raise PayloadError(f"{root}.orderState", "unknown orderState")
    if not order.itemInfoList:
        raise PayloadError(f"{root}.itemInfoList", "order has no items")
    lines: list[OrderLine] = []
    unmapped: list[str] = []
    for i, item in enumerate(order.itemInfoList):
        where = f"{root}.itemInfoList[{i}]"
        platform_sku = optional_id(item.skuId, f"{where}.skuId")
        # JD has no line id of its own: the SKU id names the line in refunds
        line_id = platform_sku or str(i)
        sku, reason = resolve_sku((item.outerSkuId,), platform_sku, sku_map, channel=CHANNEL, line_label=f"item {line_id}")
        if reason:
            unmapped.append(reason)
        lines.append(
            OrderLine(
                sku=sku,
                quantity=quantity(item.itemTotal, f"{where}.itemTotal"),
                unit_price=yuan_to_fen(item.jdPrice, f"{where}.jdPrice"),
                platform_line_id=line_id,
                platform_sku_id=platform_sku,
                unmapped_reason=reason,
            )
        )
    consignee = order.consigneeInfo or JdConsignee()
    province, city, district = text(consignee.province), text(consignee.city), text(consignee.county)
    address = text(consignee.fullAddress) or "".join(p for p in (province, city, district, text(consignee.town)) if p)
    # JD gives no coordinates: the district's centre, marked approximate
    destination = destination_from_region(province, city, district, field=f"{root}.consigneeInfo", address=address)
    return finish_order(
        channel=CHANNEL,
        external_id=id_text(order.orderId, f"{root}.orderId"),
        delivery_mode=DeliveryMode.SHIP,
        destination=destination,
        lines=lines,
        status=status,
        buyer=Buyer(name_masked=text(consignee.fullname), phone_masked=text(consignee.mobile) or text(consignee.telephone)),
        total_fen=yuan_to_fen(order.orderPayment, f"{root}.orderPayment") if order.orderPayment is not None else None,
        freight_fen=yuan_to_fen(order.freightPrice, f"{root}.freightPrice") if order.freightPrice is not None else 0,
        discount_fen=yuan_to_fen(order.sellerDiscount, f"{root}.sellerDiscount")
        if order.sellerDiscount is not None
        else 0,
        created_at=parse_optional_platform_time(order.orderStartTime, f"{root}.orderStartTime"),
        paid_at=parse_optional_platform_time(order.paymentConfirmTime, f"{root}.paymentConfirmTime"),
        updated_at=parse_optional_platform_time(order.modified, f"{root}.modified"),
        unmapped=unmapped,
    )


def event_from_order(order: JdOrder, raw: bytes, *, sku_map: Mapping[str, str] = EMPTY_SKU_MAP,
                     root: str = "order") -> ChannelEvent:
    """A polled order as a ChannelEvent; the message id is order id @ modified time, so a new
    modification is a new inbox entry while re-reading the same version is a duplicate."""
    normalized = order_from_jd(order, sku_map=sku_map, root=root)
    route = ROUTES.get(order.orderState, Route(ChannelEventKind.IGNORE, None))
    version = order.modified or order.orderState
    return ChannelEvent(
        channel=CHANNEL,
        message_id=f"{normalized.external_id}@{version}",
        kind=route.kind,
        external_id=normalized.external_id,
        topic=f"{SEARCH_METHOD}:{order.orderState}",
        status=route.status,
        occurred_at=normalized.updated_at,
        order=normalized,
        raw=raw,
    )


# ---------------------------------------------------------------- responses


class JdApiResult(msgspec.Struct, frozen=True, kw_only=True):
    success: bool = True
    chineseErrCode: str | None = None  # noqa: N815
    englishErrCode: str | None = None  # noqa: N815
    numberCode: int | str | None = None  # noqa: N815


class JdSearchResult(msgspec.Struct, frozen=True, kw_only=True):
    apiResult: JdApiResult = JdApiResult()  # noqa: N815
    orderInfoList: list[msgspec.Raw] = []  # noqa: N815 - decoded one by one, see parse_search_response
    orderTotal: int | str | None = None  # noqa: N815


class JdSearchBody(msgspec.Struct, frozen=True, kw_only=True):
    code: str | int | None = None
    searchorderinfo_result: JdSearchResult | None = None


class JdErrorResponse(msgspec.Struct, frozen=True, kw_only=True):
    code: str | int | None = None
    zh_desc: str | None = None
    en_desc: str | None = None


class JdSearchResponse(msgspec.Struct, frozen=True, kw_only=True):
    jingdong_pop_order_search_responce: JdSearchBody | None = None
    error_response: JdErrorResponse | None = None


class OrderResult(msgspec.Struct, frozen=True, kw_only=True):
    """One order of a page: its event, or the typed error that refused it."""

    order_id: str | None
    event: ChannelEvent | None = None
    error: AdapterError | None = None


class SearchPage(msgspec.Struct, frozen=True, kw_only=True):
    results: list[OrderResult]
    total: int


def _raise_jd_error(err: JdErrorResponse) -> None:
    raise UpstreamError(f"JOS error: {err.en_desc or err.zh_desc or 'unknown'}", code=str(err.code))


def parse_search_response(raw: bytes, *, sku_map: Mapping[str, str] = EMPTY_SKU_MAP) -> SearchPage:
    """Read one page of jingdong.pop.order.search: per-order results and the total count."""
    envelope = decode_json(raw, JdSearchResponse, root="")
    if envelope.error_response is not None:
        _raise_jd_error(envelope.error_response)
    body = envelope.jingdong_pop_order_search_responce
    if body is None or body.searchorderinfo_result is None:
        raise PayloadError("jingdong_pop_order_search_responce", "response carries no search result")
    result = body.searchorderinfo_result
    if not result.apiResult.success:
        raise UpstreamError(
            f"JOS search failed: {result.apiResult.englishErrCode or result.apiResult.chineseErrCode or 'unknown'}",
            code=str(result.apiResult.numberCode),
        )
    results = []
    for i, element in enumerate(result.orderInfoList):
        root = f"orderInfoList[{i}]"
        element_raw = bytes(element)
        order_id: str | None = None
        try:
            order = decode_json(element_raw, JdOrder, root=root)
            order_id = id_text(order.orderId, f"{root}.orderId")
            results.append(
                OrderResult(order_id=order_id, event=event_from_order(order, element_raw, sku_map=sku_map, root=root))
            )
        except AdapterError as exc:
            results.append(OrderResult(order_id=order_id, error=exc.with_message_id(order_id)))
    total = _count(result.orderTotal, len(results))
    return SearchPage(results=results, total=total)


def _count(value: int | str | None, default: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 10:
        return int(value)
    return default


class JdOrderInfoWrap(msgspec.Struct, frozen=True, kw_only=True):
    orderInfo: JdOrder | None = None  # noqa: N815


class JdOrderGetBody(msgspec.Struct, frozen=True, kw_only=True):
    code: str | int | None = None
    orderDetailInfo: JdOrderInfoWrap | None = None  # noqa: N815


class JdOrderGetResponse(msgspec.Struct, frozen=True, kw_only=True):
    jingdong_pop_order_get_responce: JdOrderGetBody | None = None
    error_response: JdErrorResponse | None = None


def parse_order_get_response(raw: bytes, *, sku_map: Mapping[str, str] = EMPTY_SKU_MAP) -> ChannelEvent:
    """Read jingdong.pop.order.get into a full ChannelEvent (routing by the order's state)."""
    envelope = decode_json(raw, JdOrderGetResponse, root="")
    if envelope.error_response is not None:
        _raise_jd_error(envelope.error_response)
    body = envelope.jingdong_pop_order_get_responce
    order = body.orderDetailInfo.orderInfo if body and body.orderDetailInfo else None
    if order is None:
        raise PayloadError("jingdong_pop_order_get_responce.orderDetailInfo.orderInfo", "response carries no order")
    return event_from_order(order, raw, sku_map=sku_map, root="orderInfo")


# ---------------------------------------------------------------- the relay webhook


class JdRelayMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A relayed JD order message (in 360buy_param_json): which order changed, and to what."""

    orderId: str | int  # noqa: N815
    orderState: str | None = None  # noqa: N815
    modified: str | None = None
    msgId: str | int | None = None  # noqa: N815


def parse_form(raw: bytes) -> dict[str, str]:
    """Strictly parse an application/x-www-form-urlencoded body (duplicates refused)."""
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=True, max_num_fields=64)
    except (UnicodeDecodeError, ValueError):
        raise PayloadError("body", "not a form-encoded body") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        if key in form:
            raise PayloadError(key, "parameter given twice")
        form[key] = value
    return form


def verify_relay(form: Mapping[str, str], creds: JdCredentials, *, now: datetime | None = None) -> None:
    """JOS signature over the form parameters, our app key, and a fresh timestamp."""
    given = form.get("sign")
    if not given:
        raise SignatureError("jd: sign parameter missing", field="sign")
    if form.get("app_key") != creds.app_key:
        raise SignatureError("jd: app_key is not ours", field="app_key")
    require_signature(same_hex(jos_sign(form, creds.app_secret), given), CHANNEL, "sign")
    stamp = form.get("timestamp")
    try:
        sent = parse_platform_time(stamp, "timestamp")
    except PayloadError:
        raise StaleTimestamp("jd: timestamp missing or unreadable", field="timestamp") from None
    if abs((now or now_beijing()) - sent) > RELAY_MAX_SKEW:
        raise StaleTimestamp("jd: timestamp outside the 10-minute window", field="timestamp")


def parse_relay(raw: bytes, creds: JdCredentials, *, now: datetime | None = None) -> ChannelEvent:
    """Verify a relayed JD message; a thin UPSERT event (the worker/route fetches the order)."""
    form = parse_form(raw)
    verify_relay(form, creds, now=now)
    payload = form.get("360buy_param_json")
    if payload is None:
        raise PayloadError("360buy_param_json", "message missing")
    message = decode_json(payload.encode("utf-8"), JdRelayMessage, root="360buy_param_json")
    order_id = id_text(message.orderId, "360buy_param_json.orderId")
    version = message.modified or message.orderState or ""
    message_id = optional_id(message.msgId, "360buy_param_json.msgId") or f"{order_id}@{version}"
    route = ROUTES.get(message.orderState or "", Route(ChannelEventKind.UPSERT, None))
    # whatever the state, the full order is fetched: the event kind is then re-derived from it
    return ChannelEvent(
        channel=CHANNEL,
        message_id=message_id,
        kind=ChannelEventKind.UPSERT if route.kind is not ChannelEventKind.IGNORE else route.kind,
        external_id=order_id,
        topic=f"relay:{message.orderState or 'changed'}",
        status=route.status,
        occurred_at=parse_optional_platform_time(message.modified, "360buy_param_json.modified"),
        raw=raw,
    )


def relay_ack_success() -> WebhookReply:
    """Our gateway contract: 200 {"success":true}."""
    return WebhookReply(status=200, body=b'{"success":true}')


def relay_ack_error(status: int, message: str) -> WebhookReply:
    """Non-2xx makes the relay retry; the body says why (no buyer data)."""
    return WebhookReply(status=status, body=msgspec.json.encode({"success": False, "message": message}))
