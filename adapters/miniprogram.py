"""WeChat mini-program (our own mall): its order push, and WeChat Pay API v3 notifications.

Two kinds of POST reach /webhooks/miniprogram; `is_wechatpay_notification(headers)` tells them
apart by WeChat Pay's `Wechatpay-Signature` header.

1. The order push — our own documented JSON, sent by the mini-program's backend when it
   creates or changes an order (before payment). Headers:
       X-OMS-Timestamp: Unix seconds when it was sent
       X-OMS-Signature: hex HMAC-SHA256(OMS_MINIPROGRAM_PUSH_SECRET, timestamp + "\n" + body)
   refused when the timestamp is 5 minutes old or more (or as far in the future). Body:
       {"event_id": "evt-001",              unique per push: the inbox key
        "event": "order.created" | "order.updated" | "order.cancelled" | "order.lines_refunded",
        "refunded_line_ids": ["1"],          (order.lines_refunded only)
        "order": {
          "order_no": "MP20240618001",       = WeChat Pay out_trade_no
          "status": "unpaid" | "paid" | "cancelled",
          "delivery_mode": "delivery" | "pickup" | "ship",
          "pickup_store_id": "S001",         our node id (pickup only)
          "receiver": {"name_masked", "phone_masked", "province", "city", "district",
                       "address_masked", "lat", "lng", "coord_system": "gcj02" | "wgs84"},
          "items": [{"line_id": "1", "sku_code": "SKU-1", "platform_sku_id": "w1",
                     "quantity": 2, "unit_price_fen": 1290}],
          "freight_fen": 0, "discount_fen": 0, "total_fen": 2580,
          "created_at": "2024-06-18T10:00:00+08:00", "promised_by": null}}
   Answer: 200 {"ok":true} / 4xx {"ok":false,"error":...}.

2. WeChat Pay API v3 notifications (payment and refund results). Verified with RSA-SHA256 over
   "timestamp\\nnonce\\nbody\\n" using the platform public key (OMS_MINIPROGRAM_PLATFORM_PUBLIC_KEY),
   timestamps 300 s old or more refused, `resource` decrypted with AEAD_AES_256_GCM using the
   32-byte APIv3 key (OMS_MINIPROGRAM_APIV3_KEY), its nonce and associated_data. Answer 204 with
   no body on success; 4xx/5xx with {"code":"FAIL","message":...} otherwise (WeChat retries for
   about a day: 15s/15s/30s/3m/.../6h).

Sources (checked with the search tool): WeChat Pay v3 payment notification
(pay.weixin.qq.com/wiki/doc/apiv3/apis/chapter3_4_5.shtml, as reproduced on
blog1.leaderlan.com/index.php/archives/8: id, create_time, resource_type, event_type
TRANSACTION.SUCCESS, resource{algorithm AEAD_AES_256_GCM, ciphertext, nonce, associated_data,
original_type}, decrypted transaction with out_trade_no, trade_state, success_time,
amount{total, payer_total, currency}); decryption steps and key/nonce sizes (same page and the
wepay-docs.netlify.app refund-notify page); ack rules and retry schedule (WeChat Pay notify
docs); WeChat community article on APIv3 decryption failures (developers.weixin.qq.com).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Literal

import msgspec
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509 import load_pem_x509_certificate

from adapters.common import (
    EMPTY_SKU_MAP,
    WebhookReply,
    decode_json,
    finish_order,
    header,
    id_text,
    quantity,
    resolve_sku,
    same_hex,
    text,
)
from adapters.errors import AdapterError, PayloadError, SignatureError, StaleTimestamp
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
from adapters.timeutil import parse_aware, parse_rfc3339

CHANNEL = Channel.MINIPROGRAM
#: both windows are "older than 5 minutes is refused"; WeChat Pay says 300 s or more
MAX_AGE_SECONDS = 300

TIMESTAMP_HEADER = "X-OMS-Timestamp"
SIGNATURE_HEADER = "X-OMS-Signature"

WECHATPAY_TIMESTAMP = "Wechatpay-Timestamp"
WECHATPAY_NONCE = "Wechatpay-Nonce"
WECHATPAY_SIGNATURE = "Wechatpay-Signature"
WECHATPAY_SERIAL = "Wechatpay-Serial"


def _check_age(stamp: str | None, now: float | None, field: str) -> None:
    if stamp is None or not stamp.strip().isascii() or not stamp.strip().isdigit() or len(stamp.strip()) > 12:
        raise StaleTimestamp("timestamp header missing or not Unix seconds", field=field)
    age = (time.time() if now is None else now) - int(stamp.strip())
    if abs(age) >= MAX_AGE_SECONDS:
        raise StaleTimestamp("timestamp is 5 minutes old or more", field=field)


# ==================================================================== 1. our own order push


def sign_order_push(secret: str, timestamp: str, raw: bytes) -> str:
    """Hex HMAC-SHA256(secret, timestamp + "\\n" + body): what the mini-program backend sends."""
    return hmac.new(secret.encode(), timestamp.encode() + b"\n" + raw, hashlib.sha256).hexdigest()


def verify_order_push(raw: bytes, headers: Mapping[str, str], secret: str, *, now: float | None = None) -> None:
    """SignatureError for a missing/wrong X-OMS-Signature, StaleTimestamp for an old push."""
    given = header(headers, SIGNATURE_HEADER)
    stamp = header(headers, TIMESTAMP_HEADER)
    if not given:
        raise SignatureError("miniprogram: X-OMS-Signature missing", field=SIGNATURE_HEADER)
    if stamp is None:
        raise StaleTimestamp("miniprogram: X-OMS-Timestamp missing", field=TIMESTAMP_HEADER)
    if not same_hex(sign_order_push(secret, stamp, raw), given):
        raise SignatureError("miniprogram: signature does not match", field=SIGNATURE_HEADER)
    _check_age(stamp, now, TIMESTAMP_HEADER)  # after the signature: the timestamp is signed too


class MpReceiver(msgspec.Struct, frozen=True, kw_only=True):
    """Receiver as the mini-program backend sends it: already masked, never full text."""

    name_masked: str | None = None
    phone_masked: str | None = None
    province: str | None = None
    city: str | None = None
    district: str | None = None
    address_masked: str | None = None
    lat: float | str | None = None
    lng: float | str | None = None
    coord_system: Literal["gcj02", "wgs84"] = "gcj02"


class MpItem(msgspec.Struct, frozen=True, kw_only=True):
    line_id: str | int
    sku_code: str | None = None
    platform_sku_id: str | None = None
    quantity: int
    unit_price_fen: int


class MpOrder(msgspec.Struct, frozen=True, kw_only=True):
    """Our own documented order shape (see the module docstring)."""

    order_no: str
    status: Literal["unpaid", "paid", "cancelled"] = "unpaid"
    delivery_mode: Literal["delivery", "pickup", "ship"]
    pickup_store_id: str | None = None
    receiver: MpReceiver = MpReceiver()
    items: list[MpItem]
    freight_fen: int = 0
    discount_fen: int = 0
    total_fen: int | None = None
    created_at: str | None = None
    promised_by: str | None = None
    updated_at: str | None = None


class MpPush(msgspec.Struct, frozen=True, kw_only=True):
    event_id: str
    event: Literal["order.created", "order.updated", "order.cancelled", "order.lines_refunded"]
    order: MpOrder
    refunded_line_ids: list[str] = []


STATUS_MAP: dict[str, ChannelStatus] = {
    "unpaid": ChannelStatus.UNPAID,
    "paid": ChannelStatus.PAID,
    "cancelled": ChannelStatus.CANCELLED,
}

ROUTES: dict[str, ChannelEventKind] = {
    "order.created": ChannelEventKind.UPSERT,
    "order.updated": ChannelEventKind.UPSERT,
    "order.cancelled": ChannelEventKind.CANCEL,
    "order.lines_refunded": ChannelEventKind.REFUND_LINES,
}


def order_from_push(order: MpOrder, *, sku_map: Mapping[str, str] = EMPTY_SKU_MAP) -> NormalizedOrder:
    """Map our mini-program order JSON onto the NormalizedOrder contract."""
    root = "order"
    if not order.items:
        raise PayloadError(f"{root}.items", "order has no items")
    lines, unmapped = [], []
    for i, item in enumerate(order.items):
        where = f"{root}.items[{i}]"
        line_id = id_text(item.line_id, f"{where}.line_id")
        sku, reason = resolve_sku(
            (item.sku_code,), text(item.platform_sku_id), sku_map, channel=CHANNEL, line_label=f"line {line_id}"
        )
        if reason:
            unmapped.append(reason)
        lines.append(
            OrderLine(
                sku=sku,
                quantity=quantity(item.quantity, f"{where}.quantity"),
                unit_price=fen(item.unit_price_fen, f"{where}.unit_price_fen"),
                platform_line_id=line_id,
                platform_sku_id=text(item.platform_sku_id),
                unmapped_reason=reason,
            )
        )
    rec = order.receiver
    lat = parse_coordinate(rec.lat, f"{root}.receiver.lat")
    lng = parse_coordinate(rec.lng, f"{root}.receiver.lng")
    address = text(rec.address_masked) or ""
    if lat is not None and lng is not None:
        destination = destination_from_point(
            lat, lng, field=f"{root}.receiver", address=address, province=text(rec.province),
            city=text(rec.city), district=text(rec.district), wgs84=rec.coord_system == "wgs84",
        )
    else:
        destination = destination_from_region(
            text(rec.province), text(rec.city), text(rec.district), field=f"{root}.receiver", address=address
        )
    mode = DeliveryMode(order.delivery_mode)
    if mode is DeliveryMode.PICKUP and not text(order.pickup_store_id):
        raise PayloadError(f"{root}.pickup_store_id", "a pickup order must name the store")
    return finish_order(
        channel=CHANNEL,
        external_id=id_text(order.order_no, f"{root}.order_no"),
        delivery_mode=mode,
        destination=destination,
        lines=lines,
        status=STATUS_MAP[order.status],
        pickup_node_id=text(order.pickup_store_id) if mode is DeliveryMode.PICKUP else None,
        buyer=Buyer(name_masked=text(rec.name_masked), phone_masked=text(rec.phone_masked)),
        total_fen=fen(order.total_fen, f"{root}.total_fen") if order.total_fen is not None else None,
        freight_fen=fen(order.freight_fen, f"{root}.freight_fen"),
        discount_fen=fen(order.discount_fen, f"{root}.discount_fen"),
        created_at=parse_aware(order.created_at, f"{root}.created_at") if order.created_at else None,
        promised_by=parse_aware(order.promised_by, f"{root}.promised_by") if order.promised_by else None,
        updated_at=parse_aware(order.updated_at, f"{root}.updated_at") if order.updated_at else None,
        unmapped=unmapped,
    )


def parse_order_push(
    raw: bytes,
    headers: Mapping[str, str],
    secret: str,
    *,
    sku_map: Mapping[str, str] = EMPTY_SKU_MAP,
    now: float | None = None,
) -> ChannelEvent:
    """Verify and parse one mini-program order push into a ChannelEvent carrying the order."""
    verify_order_push(raw, headers, secret, now=now)
    push = decode_json(raw, MpPush, root="body")
    message_id = id_text(push.event_id, "event_id")
    try:
        order = order_from_push(push.order, sku_map=sku_map)
        kind = ROUTES[push.event]
        if kind is ChannelEventKind.REFUND_LINES and not push.refunded_line_ids:
            raise PayloadError("refunded_line_ids", "order.lines_refunded names no lines")
    except AdapterError as exc:
        raise exc.with_message_id(message_id) from None
    return ChannelEvent(
        channel=CHANNEL,
        message_id=message_id,
        kind=kind,
        external_id=order.external_id,
        topic=push.event,
        status=ChannelStatus.CANCELLED if kind is ChannelEventKind.CANCEL else order.status,
        occurred_at=order.updated_at or order.created_at,
        order=order,
        refunded_line_ids=list(push.refunded_line_ids) if kind is ChannelEventKind.REFUND_LINES else [],
        raw=raw,
    )


def order_push_ack_success() -> WebhookReply:
    """200 {"ok":true}: our own contract with the mini-program backend."""
    return WebhookReply(status=200, body=b'{"ok":true}')


def order_push_ack_error(error: AdapterError) -> WebhookReply:
    """4xx with the reason and field (the backend fixes and resends)."""
    return WebhookReply(status=error.status, body=msgspec.json.encode({"ok": False, **error.describe()}))


# ==================================================================== 2. WeChat Pay API v3


def is_wechatpay_notification(headers: Mapping[str, str]) -> bool:
    """True when the POST carries WeChat Pay's signature headers (else it is our order push)."""
    return header(headers, WECHATPAY_SIGNATURE) is not None or header(headers, WECHATPAY_SERIAL) is not None


def load_platform_public_key(pem: str | bytes) -> rsa.RSAPublicKey:
    """Load the WeChat Pay platform public key from PEM text: a public key or a certificate."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        if b"BEGIN CERTIFICATE" in data:
            key = load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ValueError(f"not a PEM public key or certificate: {exc}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("the WeChat Pay platform key must be RSA")
    return key


class WechatPayResource(msgspec.Struct, frozen=True, kw_only=True):
    algorithm: str
    ciphertext: str
    nonce: str
    associated_data: str | None = None
    original_type: str | None = None


class WechatPayNotification(msgspec.Struct, frozen=True, kw_only=True):
    """The notification envelope (id, create_time, event_type, resource_type, resource, summary)."""

    id: str
    create_time: str | None = None
    event_type: str
    resource_type: str | None = None
    resource: WechatPayResource
    summary: str | None = None


class WechatPayAmount(msgspec.Struct, frozen=True, kw_only=True):
    total: int
    payer_total: int | None = None
    currency: str | None = None
    payer_currency: str | None = None


class WechatPayTransaction(msgspec.Struct, frozen=True, kw_only=True):
    """Decrypted `transaction` resource of TRANSACTION.SUCCESS."""

    out_trade_no: str
    transaction_id: str | None = None
    trade_state: str
    trade_state_desc: str | None = None
    success_time: str | None = None
    mchid: str | None = None
    appid: str | None = None
    amount: WechatPayAmount


class WechatPayRefundAmount(msgspec.Struct, frozen=True, kw_only=True):
    total: int
    refund: int
    payer_total: int | None = None
    payer_refund: int | None = None


class WechatPayRefund(msgspec.Struct, frozen=True, kw_only=True):
    """Decrypted `refund` resource of REFUND.SUCCESS / REFUND.ABNORMAL / REFUND.CLOSED."""

    out_trade_no: str
    out_refund_no: str | None = None
    refund_id: str | None = None
    refund_status: str
    success_time: str | None = None
    amount: WechatPayRefundAmount


def wechatpay_message(timestamp: str, nonce: str, raw: bytes) -> bytes:
    """The signed text: "timestamp\\nnonce\\nbody\\n" over the exact bytes received."""
    return timestamp.encode() + b"\n" + nonce.encode() + b"\n" + raw + b"\n"


def verify_wechatpay(
    raw: bytes,
    headers: Mapping[str, str],
    public_key: rsa.RSAPublicKey,
    *,
    now: float | None = None,
    expected_serial: str | None = None,
) -> None:
    """RSA-SHA256 (PKCS#1 v1.5) signature check and the 300-second timestamp window."""
    stamp = header(headers, WECHATPAY_TIMESTAMP)
    nonce = header(headers, WECHATPAY_NONCE)
    signature = header(headers, WECHATPAY_SIGNATURE)
    if not signature or nonce is None or stamp is None:
        raise SignatureError("wechatpay: signature headers missing", field=WECHATPAY_SIGNATURE)
    if expected_serial and (header(headers, WECHATPAY_SERIAL) or "").strip() != expected_serial:
        raise SignatureError("wechatpay: Wechatpay-Serial names another key", field=WECHATPAY_SERIAL)
    try:
        decoded = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("wechatpay: signature is not base64", field=WECHATPAY_SIGNATURE) from None
    try:
        public_key.verify(decoded, wechatpay_message(stamp, nonce, raw), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise SignatureError("wechatpay: signature does not match", field=WECHATPAY_SIGNATURE) from None
    _check_age(stamp, now, WECHATPAY_TIMESTAMP)


def decrypt_resource(resource: WechatPayResource, apiv3_key: bytes) -> bytes:
    """AEAD_AES_256_GCM: key = APIv3 key (32 bytes), nonce and associated_data from the resource."""
    if resource.algorithm != "AEAD_AES_256_GCM":
        raise PayloadError("resource.algorithm", "only AEAD_AES_256_GCM is supported")
    if len(apiv3_key) != 32:
        raise ValueError("the APIv3 key must be exactly 32 bytes")
    try:
        ciphertext = base64.b64decode(resource.ciphertext, validate=True)
    except (binascii.Error, ValueError):
        raise PayloadError("resource.ciphertext", "not base64") from None
    nonce = resource.nonce.encode("utf-8")
    if not nonce:
        raise PayloadError("resource.nonce", "nonce is empty")
    try:
        return AESGCM(apiv3_key).decrypt(nonce, ciphertext, (resource.associated_data or "").encode("utf-8"))
    except InvalidTag:
        # signed by WeChat but not decryptable with our key: a configuration problem, or tampering
        raise PayloadError("resource.ciphertext", "cannot decrypt with the configured APIv3 key") from None
    except (ValueError, OverflowError):
        raise PayloadError("resource", "malformed ciphertext or nonce") from None


def parse_wechatpay_notification(
    raw: bytes,
    headers: Mapping[str, str],
    *,
    public_key: rsa.RSAPublicKey,
    apiv3_key: bytes,
    now: float | None = None,
    expected_serial: str | None = None,
) -> ChannelEvent:
    """Verify, decrypt and route a WeChat Pay notification into a ChannelEvent.

    TRANSACTION.SUCCESS -> STATUS paid, external_id = out_trade_no, amount_fen = amount.total
    (the core checks it against the order: see `check_paid_amount`). REFUND.SUCCESS of the
    whole amount -> CANCEL; of part -> REFUND_LINES with no line ids (the mini-program's own
    order.lines_refunded push names the lines). Other events are acknowledged and ignored.
    """
    verify_wechatpay(raw, headers, public_key, now=now, expected_serial=expected_serial)
    note = decode_json(raw, WechatPayNotification, root="body")
    message_id = id_text(note.id, "id")
    try:
        plain = decrypt_resource(note.resource, apiv3_key)
        occurred = parse_rfc3339(note.create_time, "create_time") if note.create_time else None
        if note.event_type == "TRANSACTION.SUCCESS":
            tx = decode_json(plain, WechatPayTransaction, root="resource")
            if tx.trade_state != "SUCCESS":
                raise PayloadError("resource.trade_state", "TRANSACTION.SUCCESS without trade_state SUCCESS")
            return ChannelEvent(
                channel=CHANNEL,
                message_id=message_id,
                kind=ChannelEventKind.STATUS,
                external_id=id_text(tx.out_trade_no, "resource.out_trade_no"),
                topic=note.event_type,
                status=ChannelStatus.PAID,
                occurred_at=parse_rfc3339(tx.success_time, "resource.success_time") if tx.success_time else occurred,
                amount_fen=fen(tx.amount.total, "resource.amount.total"),
                raw=raw,
            )
        if note.event_type.startswith("REFUND."):
            refund = decode_json(plain, WechatPayRefund, root="resource")
            external_id = id_text(refund.out_trade_no, "resource.out_trade_no")
            refunded = fen(refund.amount.refund, "resource.amount.refund")
            total = fen(refund.amount.total, "resource.amount.total")
            if note.event_type != "REFUND.SUCCESS" or refund.refund_status != "SUCCESS":
                kind = ChannelEventKind.IGNORE  # ABNORMAL / CLOSED: no money moved back
            elif refunded >= total:
                kind = ChannelEventKind.CANCEL
            else:
                kind = ChannelEventKind.REFUND_LINES
            return ChannelEvent(
                channel=CHANNEL,
                message_id=message_id,
                kind=kind,
                external_id=external_id,
                topic=note.event_type,
                status=ChannelStatus.CANCELLED if kind is ChannelEventKind.CANCEL else None,
                occurred_at=parse_rfc3339(refund.success_time, "resource.success_time")
                if refund.success_time
                else occurred,
                amount_fen=refunded,
                raw=raw,
            )
        return ChannelEvent(
            channel=CHANNEL, message_id=message_id, kind=ChannelEventKind.IGNORE, external_id="",
            topic=note.event_type, occurred_at=occurred, raw=raw,
        )
    except AdapterError as exc:
        raise exc.with_message_id(message_id) from None


def check_paid_amount(event: ChannelEvent, order: NormalizedOrder) -> None:
    """The core calls this before marking a mini-program order paid: amount.total must equal
    what the order charges (total_fen, else lines + freight - discount)."""
    expected = order.total_fen
    if expected is None:
        expected = order.lines_total_fen + order.freight_fen - order.discount_fen
    if event.amount_fen != expected:
        raise PayloadError("resource.amount.total", "paid amount differs from the order's total",
                           message_id=event.message_id)


def wechatpay_ack_success() -> WebhookReply:
    """204 with no body: WeChat Pay treats 200/204 as received and stops retrying."""
    return WebhookReply(status=204, body=b"", content_type="")


def wechatpay_ack_error(status: int, message: str) -> WebhookReply:
    """4xx/5xx with {"code":"FAIL","message":...}: WeChat Pay retries later."""
    return WebhookReply(status=status, body=msgspec.json.encode({"code": "FAIL", "message": message}))
