"""Tmall / Taobao — TMC messages to events, TOP signing, and taobao.trade.fullinfo.get.

Flow: the TMC worker (oms/channels/tmall_worker.py) receives a message (frames in
adapters/tmc.py) -> `event_from_message` routes it by topic -> for UPSERT events the full trade
is fetched with `build_fullinfo_request` and read with `parse_fullinfo_response` -> the event
goes to the core -> the message is confirmed. `POST /webhooks/tmall` takes the same messages
relayed by a push gateway, TOP-signed over the query parameters and the body: `parse_relay`.

Sources (checked with the search tool):
- TOP signing: sort parameters (except `sign`), concatenate key+value, md5(secret + s + secret)
  or HMAC keyed by the secret, upper-case hex; a body is appended after the parameters:
  open.taobao.com docs 101617 mirrored at doc.alidayu.com and developer.alibaba.com
  ("md5(appsecretbar2foo1foo_bar3foobar4appsecret)"), and the Java `signApiRequest` with body on
  open.fliggy.com (docs 118816). Common parameters method, app_key, session, timestamp
  (yyyy-MM-dd HH:mm:ss, GMT+8), v=2.0, sign_method (md5/hmac/hmac-sha256), format, simplify.
- trade fields (status enum WAIT_SELLER_SEND_GOODS, TRADE_CLOSED, TRADE_CLOSED_BY_TAOBAO...,
  payment/total_fee/discount_fee yuan strings, created/pay_time/modified, receiver_* masked):
  the taobao.trade.fullinfo.get field tables reproduced on blog.csdn.net (tbprice/125242417,
  weixin_44353800/108465151); `orders` with oid, sku_id, outer_sku_id, outer_iid, num, price.
- TMC message fields (id, topic, content, pub_time, pub_app_key, user_id, user_nick):
  bububa/opentaobao model/tmc/TmcMessage.go; topics per issue #6.
"""

from __future__ import annotations

import hashlib
import hmac
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
    id_text,
    md5_hex,
    optional_id,
    quantity,
    require_signature,
    resolve_sku,
    same_hex,
    text,
)
from adapters.errors import PayloadError, SignatureError, StaleTimestamp, UpstreamError
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
from adapters.timeutil import format_top_timestamp, now_beijing, parse_optional_platform_time, parse_platform_time

CHANNEL = Channel.TMALL
DEFAULT_TOP_URL = "https://eco.taobao.com/router/rest"
DEFAULT_TMC_URL = "wss://mc.api.taobao.com/"
#: TOP rejects requests whose timestamp is more than 10 minutes off; the relay check matches it
RELAY_MAX_SKEW = timedelta(minutes=10)

FULLINFO_FIELDS = (
    "tid,tid_str,status,type,payment,total_fee,post_fee,discount_fee,created,pay_time,modified,"
    "end_time,shipping_type,receiver_name,receiver_mobile,receiver_state,receiver_city,"
    "receiver_district,receiver_town,receiver_address,oaid,timeout_action_time,orders"
)


class TmallCredentials(msgspec.Struct, frozen=True, kw_only=True):
    """OMS_TMALL_APP_KEY / OMS_TMALL_APP_SECRET, and the shop's session key for TOP calls."""

    app_key: str
    app_secret: str
    session: str = ""

    def __repr__(self) -> str:
        return f"TmallCredentials(app_key={self.app_key!r}, app_secret=***, session=***)"


# ---------------------------------------------------------------- TOP signing


def top_sign(params: Mapping[str, str], secret: str, sign_method: str = "md5", body: bytes | None = None) -> str:
    """TOP signature: sorted key+value (sign and empty values skipped), then the body, upper hex."""
    concat = "".join(f"{k}{v}" for k, v in sorted(params.items()) if k != "sign" and k and v not in (None, ""))
    payload = concat.encode("utf-8") + (body or b"")
    method = sign_method.lower()
    if method == "md5":
        return md5_hex(secret.encode() + payload + secret.encode()).upper()
    if method == "hmac":
        return hmac.new(secret.encode(), payload, hashlib.md5).hexdigest().upper()
    if method in {"hmac-sha256", "hmac_sha256", "sha256"}:
        return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest().upper()
    raise SignatureError("tmall: unsupported sign_method", field="sign_method")


# ---------------------------------------------------------------- TMC messages


class TmcMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A TMC message (also the JSON body of a relayed one). Source: bububa/opentaobao TmcMessage.go."""

    id: int | str
    topic: str
    content: str | dict[str, Any]
    pub_time: str | None = None
    pub_app_key: str | None = None
    user_id: int | str | None = None
    user_nick: str | None = None


class TradeContent(msgspec.Struct, frozen=True, kw_only=True):
    """`content` of taobao_trade_* / taobao_refund_* messages: tid, oid, status, payment (yuan)."""

    tid: int | str
    oid: int | str | None = None
    status: str | None = None
    payment: str | None = None
    type: str | None = None
    buyer_nick: str | None = None
    seller_nick: str | None = None
    refund_id: int | str | None = None
    refund_fee: str | None = None
    refund_phase: str | None = None
    modified: str | None = None


class Route(NamedTuple):
    kind: ChannelEventKind
    status: ChannelStatus | None


#: topic -> what the service does
TOPICS: dict[str, Route] = {
    "taobao_trade_TradeCreate": Route(ChannelEventKind.UPSERT, ChannelStatus.UNPAID),
    "taobao_trade_TradeBuyerPay": Route(ChannelEventKind.UPSERT, ChannelStatus.PAID),
    "taobao_trade_TradeMemoModified": Route(ChannelEventKind.IGNORE, None),
    "taobao_trade_TradeChanged": Route(ChannelEventKind.UPSERT, None),  # e.g. address changed
    "taobao_trade_TradeSellerShip": Route(ChannelEventKind.STATUS, ChannelStatus.SHIPPED),
    "taobao_trade_TradeSuccess": Route(ChannelEventKind.STATUS, ChannelStatus.COMPLETED),
    "taobao_trade_TradeClose": Route(ChannelEventKind.CANCEL, ChannelStatus.CANCELLED),
    "taobao_trade_TradeCloseAndModifyDetailOrder": Route(ChannelEventKind.CANCEL, ChannelStatus.CANCELLED),
    # A refund request can still be refused; stock is released when it succeeds.
    "taobao_refund_RefundCreated": Route(ChannelEventKind.IGNORE, None),
    "taobao_refund_RefundSuccess": Route(ChannelEventKind.REFUND_LINES, None),
    "taobao_refund_RefundClosed": Route(ChannelEventKind.IGNORE, None),
}

#: taobao.trade.fullinfo.get `status` -> our ChannelStatus (one table per channel)
STATUS_MAP: dict[str, ChannelStatus] = {
    "TRADE_NO_CREATE_PAY": ChannelStatus.UNPAID,
    "WAIT_BUYER_PAY": ChannelStatus.UNPAID,
    "PAY_PENDING": ChannelStatus.UNPAID,
    "WAIT_PRE_AUTH_CONFIRM": ChannelStatus.UNPAID,
    "WAIT_SELLER_SEND_GOODS": ChannelStatus.PAID,
    "PAID_FORBID_CONSIGN": ChannelStatus.PAID,
    "SELLER_CONSIGNED_PART": ChannelStatus.PAID,  # partly shipped: still open for the rest
    "WAIT_BUYER_CONFIRM_GOODS": ChannelStatus.SHIPPED,
    "TRADE_BUYER_SIGNED": ChannelStatus.SHIPPED,
    "TRADE_FINISHED": ChannelStatus.COMPLETED,
    "TRADE_CLOSED": ChannelStatus.CANCELLED,  # refunded in full after payment
    "TRADE_CLOSED_BY_TAOBAO": ChannelStatus.CANCELLED,  # closed before payment
}


def event_from_message(message: TmcMessage, raw: bytes = b"") -> ChannelEvent:
    """Route one TMC message by topic into a (thin) ChannelEvent; UPSERT needs a fetch next."""
    message_id = id_text(message.id, "id")
    try:
        return _event(message, message_id, raw)
    except PayloadError as exc:
        raise exc.with_message_id(message_id) from None


def _event(message: TmcMessage, message_id: str, raw: bytes) -> ChannelEvent:
    route = TOPICS.get(message.topic, Route(ChannelEventKind.IGNORE, None))
    if isinstance(message.content, dict):  # a relay may send content as an object
        content = convert(message.content, TradeContent, root="content")
    else:
        content = decode_json(message.content, TradeContent, root="content")
    oid = optional_id(content.oid, "content.oid")
    refunded: list[str] = []
    amount: int | None = None
    if route.kind is ChannelEventKind.REFUND_LINES:
        if oid is None:
            raise PayloadError("content.oid", "refund names no sub-order (oid)")
        refunded = [oid]
        if content.refund_fee is not None:
            amount = yuan_to_fen(content.refund_fee, "content.refund_fee")
    elif content.payment is not None:
        amount = yuan_to_fen(content.payment, "content.payment")
    occurred = parse_optional_platform_time(content.modified, "content.modified") or parse_optional_platform_time(
        message.pub_time, "pub_time"
    )
    return ChannelEvent(
        channel=CHANNEL,
        message_id=message_id,
        kind=route.kind,
        external_id=id_text(content.tid, "content.tid"),
        topic=message.topic,
        status=route.status,
        occurred_at=occurred,
        refunded_line_ids=refunded,
        amount_fen=amount,
        raw=raw,
    )


def message_from_tmc_headers(headers: Mapping[str, Any]) -> TmcMessage:
    """Build a TmcMessage from a decoded TMC SEND frame's custom headers."""
    fields = {key: value for key, value in headers.items() if not key.startswith("__")}
    if "pub_time" in fields and not isinstance(fields["pub_time"], str):
        fields.pop("pub_time")  # a binary date; the content carries `modified` anyway
    try:
        return msgspec.convert(fields, TmcMessage)
    except msgspec.ValidationError as exc:
        raise PayloadError("tmc.message", str(exc)) from None


# ---------------------------------------------------------------- the relay webhook


def verify_relay(
    raw: bytes, query: Mapping[str, str], creds: TmallCredentials, *, now: datetime | None = None
) -> None:
    """Check a relayed message: TOP signature over the query parameters + body, fresh timestamp."""
    given = query.get("sign")
    if not given:
        raise SignatureError("tmall: sign parameter missing", field="sign")
    if query.get("app_key") != creds.app_key:
        raise SignatureError("tmall: app_key is not ours", field="app_key")
    expected = top_sign(query, creds.app_secret, query.get("sign_method") or "md5", raw)
    require_signature(same_hex(expected, given), CHANNEL, "sign")
    stamp = query.get("timestamp")
    if not stamp:
        raise StaleTimestamp("tmall: timestamp parameter missing", field="timestamp")
    try:
        sent = parse_platform_time(stamp, "timestamp")
    except PayloadError:
        raise StaleTimestamp("tmall: timestamp unreadable", field="timestamp") from None
    if abs((now or now_beijing()) - sent) > RELAY_MAX_SKEW:
        raise StaleTimestamp("tmall: timestamp outside the 10-minute window", field="timestamp")


def parse_relay(
    raw: bytes, query: Mapping[str, str], creds: TmallCredentials, *, now: datetime | None = None
) -> ChannelEvent:
    """Verify a relayed TMC message and route it (same events as the TMC worker produces)."""
    verify_relay(raw, query, creds, now=now)
    message = decode_json(raw, TmcMessage, root="body")
    return event_from_message(message, raw)


def relay_ack_success() -> WebhookReply:
    """What the relay expects on success (our own gateway contract: 200 {"success":true})."""
    return WebhookReply(status=200, body=b'{"success":true}')


def relay_ack_error(status: int, message: str, errors: list[dict[str, str]] | None = None) -> WebhookReply:
    """Non-2xx makes the relay retry; the body says why (no buyer data)."""
    payload: dict[str, Any] = {"success": False, "message": message}
    if errors:
        payload["errors"] = errors
    return WebhookReply(status=status, body=msgspec.json.encode(payload))


# ---------------------------------------------------------------- taobao.trade.fullinfo.get


def build_fullinfo_request(
    tid: str,
    creds: TmallCredentials,
    *,
    base_url: str = DEFAULT_TOP_URL,
    now: datetime | None = None,
    sign_method: str = "md5",
    fields: str = FULLINFO_FIELDS,
) -> HttpRequest:
    """Build the signed TOP POST for one trade (form-encoded, as the official SDK sends)."""
    params = {
        "method": "taobao.trade.fullinfo.get",
        "app_key": creds.app_key,
        "session": creds.session,
        "timestamp": format_top_timestamp(now or now_beijing()),
        "format": "json",
        "v": "2.0",
        "sign_method": sign_method,
        "simplify": "true",
        "fields": fields,
        "tid": tid,
    }
    params["sign"] = top_sign(params, creds.app_secret, sign_method)
    return HttpRequest(
        method="POST",
        url=base_url,
        form=params,
        headers={"Content-Type": "application/x-www-form-urlencoded;charset=utf-8"},
    )


class TopOrder(msgspec.Struct, frozen=True, kw_only=True):
    """One `orders[]` sub-order of a trade (taobao.trade.fullinfo.get)."""

    oid: int | str
    num: int | str | None = None
    price: str | None = None
    payment: str | None = None
    sku_id: int | str | None = None
    num_iid: int | str | None = None
    outer_sku_id: str | None = None
    outer_iid: str | None = None
    title: str | None = None
    status: str | None = None
    refund_status: str | None = None


class TopOrders(msgspec.Struct, frozen=True, kw_only=True):
    """Non-simplified JSON wraps the list: "orders": {"order": [...]}."""

    order: list[TopOrder] = []


class TopTrade(msgspec.Struct, frozen=True, kw_only=True):
    """`trade` of taobao.trade.fullinfo.get (field names as documented by Taobao)."""

    tid: int | str | None = None
    tid_str: str | None = None
    status: str
    payment: str | None = None
    total_fee: str | None = None
    post_fee: str | None = None
    discount_fee: str | None = None
    created: str | None = None
    pay_time: str | None = None
    modified: str | None = None
    shipping_type: str | None = None
    receiver_name: str | None = None
    receiver_mobile: str | None = None
    receiver_state: str | None = None
    receiver_city: str | None = None
    receiver_district: str | None = None
    receiver_town: str | None = None
    receiver_address: str | None = None
    oaid: str | None = None
    #: 订单超时到期时间 (SDK copies): read as when Taobao closes a WAIT_BUYER_PAY trade unpaid.
    #: Unconfirmed [I]; the trade says nothing of 拍下减库存 (an item property, `sub_stock`), so
    #: whether an unpaid Taobao order holds stock is the shop's `deducts_at_order` setting.
    timeout_action_time: str | None = None
    orders: list[TopOrder] | TopOrders = []


class TopErrorResponse(msgspec.Struct, frozen=True, kw_only=True):
    code: int | str | None = None
    msg: str | None = None
    sub_code: str | None = None
    sub_msg: str | None = None


class FullinfoBody(msgspec.Struct, frozen=True, kw_only=True):
    trade: msgspec.Raw = msgspec.Raw()


class FullinfoResponse(msgspec.Struct, frozen=True, kw_only=True):
    """Envelope: `trade_fullinfo_get_response` on success, `error_response` otherwise; with
    simplify=true TOP drops the wrapper and answers {"trade": {...}} directly. The trade is
    decoded on its own so field names in errors read "trade.orders[0].price"."""

    trade_fullinfo_get_response: FullinfoBody | None = None
    trade: msgspec.Raw = msgspec.Raw()
    error_response: TopErrorResponse | None = None


def parse_fullinfo_response(raw: bytes, *, sku_map: Mapping[str, str] = EMPTY_SKU_MAP) -> NormalizedOrder:
    """Read a taobao.trade.fullinfo.get answer into a NormalizedOrder."""
    envelope = decode_json(raw, FullinfoResponse, root="")
    if envelope.error_response is not None:
        err = envelope.error_response
        raise UpstreamError(f"TOP error: {err.sub_msg or err.msg or 'unknown'}", code=err.sub_code or str(err.code))
    trade_raw = bytes(envelope.trade)
    if not trade_raw and envelope.trade_fullinfo_get_response is not None:
        trade_raw = bytes(envelope.trade_fullinfo_get_response.trade)
    if trade_raw in (b"", b"null"):
        raise PayloadError("trade", "response carries no trade")
    return order_from_trade(decode_json(trade_raw, TopTrade, root="trade"), sku_map=sku_map)


def order_from_trade(trade: TopTrade, *, sku_map: Mapping[str, str] = EMPTY_SKU_MAP) -> NormalizedOrder:
    """Map a TOP trade onto the NormalizedOrder contract."""
    root = "trade"
    external_id = optional_id(trade.tid_str, f"{root}.tid_str") or id_text(trade.tid, f"{root}.tid")
    status = STATUS_MAP.get(trade.status)
    if status is None:
        raise PayloadError(f"{root}.status", "unknown trade status")
    orders = trade.orders.order if isinstance(trade.orders, TopOrders) else trade.orders
    if not orders:
        raise PayloadError(f"{root}.orders", "trade has no sub-orders")
    lines: list[OrderLine] = []
    unmapped: list[str] = []
    for i, sub in enumerate(orders):
        where = f"{root}.orders[{i}]"
        oid = id_text(sub.oid, f"{where}.oid")
        platform_sku = optional_id(sub.sku_id, f"{where}.sku_id") or optional_id(sub.num_iid, f"{where}.num_iid")
        sku, reason = resolve_sku(
            (sub.outer_sku_id, sub.outer_iid), platform_sku, sku_map, channel=CHANNEL, line_label=f"sub-order {oid}"
        )
        if reason:
            unmapped.append(reason)
        lines.append(
            OrderLine(
                sku=sku,
                quantity=quantity(sub.num, f"{where}.num"),
                unit_price=yuan_to_fen(sub.price, f"{where}.price"),
                platform_line_id=oid,
                platform_sku_id=platform_sku,
                unmapped_reason=reason,
            )
        )
    province, city, district = text(trade.receiver_state), text(trade.receiver_city), text(trade.receiver_district)
    # Taobao gives no coordinates: the district's centre, marked approximate
    address = "".join(
        p for p in (province, city, district, text(trade.receiver_town), text(trade.receiver_address)) if p
    )
    destination = destination_from_region(province, city, district, field=f"{root}.receiver_state", address=address)
    return finish_order(
        channel=CHANNEL,
        external_id=external_id,
        # TOP's shipping_type has no reliable same-city / pickup marker for our purposes: parcel
        delivery_mode=DeliveryMode.SHIP,
        destination=destination,
        lines=lines,
        status=status,
        buyer=Buyer(
            name_masked=text(trade.receiver_name),
            phone_masked=text(trade.receiver_mobile),
            encrypted={"oaid": trade.oaid} if trade.oaid else {},
        ),
        total_fen=yuan_to_fen(trade.payment, f"{root}.payment") if trade.payment is not None else None,
        freight_fen=yuan_to_fen(trade.post_fee, f"{root}.post_fee") if trade.post_fee is not None else 0,
        discount_fen=yuan_to_fen(trade.discount_fee, f"{root}.discount_fee") if trade.discount_fee is not None else 0,
        created_at=parse_optional_platform_time(trade.created, f"{root}.created"),
        paid_at=parse_optional_platform_time(trade.pay_time, f"{root}.pay_time"),
        updated_at=parse_optional_platform_time(trade.modified, f"{root}.modified"),
        pay_by=(parse_optional_platform_time(trade.timeout_action_time, f"{root}.timeout_action_time")
                if status is ChannelStatus.UNPAID else None),
        unmapped=unmapped,
    )
