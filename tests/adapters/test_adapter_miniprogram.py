"""Mini-program order push (our HMAC contract) and WeChat Pay API v3 notifications.

The tests make their own RSA key pair and APIv3 key and build notifications the way WeChat Pay
documents them: body {"id","create_time","event_type","resource_type","resource":{algorithm,
ciphertext,nonce,associated_data,original_type},"summary"}, resource encrypted with AES-256-GCM,
signature RSA-SHA256 over "timestamp\\nnonce\\nbody\\n".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from adapters import miniprogram
from adapters.errors import PayloadError, SignatureError, StaleTimestamp
from adapters.normalized import (
    Buyer,
    Channel,
    ChannelEventKind,
    ChannelStatus,
    DeliveryMode,
    Destination,
    NormalizedOrder,
    OrderLine,
)

BJ = timezone(timedelta(hours=8))
PUSH_SECRET = "mp-push-secret"
NOW = 1718676000.0  # 2024-06-18 10:00:00 +08:00
PRIVATE_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_PEM = PRIVATE_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
).decode()
PUBLIC_KEY = miniprogram.load_platform_public_key(PUBLIC_PEM)
APIV3_KEY = b"0123456789abcdef0123456789ABCDEF"


def push_body(**order_overrides) -> dict:
    order = {
        "order_no": "MP20240618001",
        "status": "unpaid",
        "delivery_mode": "delivery",
        "receiver": {"name_masked": "赵*", "phone_masked": "139****8888", "province": "上海市", "city": "上海市",
                     "district": "黄浦区", "address_masked": "南京东路***", "lat": 31.23525, "lng": 121.47568,
                     "coord_system": "gcj02"},
        "items": [{"line_id": "1", "sku_code": "SKU-TEA-500", "quantity": 2, "unit_price_fen": 1290},
                  {"line_id": "2", "platform_sku_id": "wx-77", "quantity": 1, "unit_price_fen": 500}],
        "freight_fen": 600,
        "discount_fen": 100,
        "total_fen": 3080,
        "created_at": "2024-06-18T09:59:00+08:00",
        "promised_by": "2024-06-18T11:00:00+08:00",
    }
    order.update(order_overrides)
    return {"event_id": "evt-001", "event": "order.created", "order": order}


def signed(body: bytes, *, secret: str = PUSH_SECRET, ts: float = NOW) -> dict[str, str]:
    stamp = str(int(ts))
    mac = hmac.new(secret.encode(), stamp.encode() + b"\n" + body, hashlib.sha256).hexdigest()
    return {"X-OMS-Timestamp": stamp, "X-OMS-Signature": mac}


def test_order_push_becomes_the_expected_order():
    body = json.dumps(push_body()).encode()
    event = miniprogram.parse_order_push(body, signed(body), PUSH_SECRET, sku_map={"wx-77": "SKU-CUP"}, now=NOW + 60)
    assert event.kind is ChannelEventKind.UPSERT and event.message_id == "evt-001"
    assert event.external_id == "MP20240618001" and event.status is ChannelStatus.UNPAID and event.raw == body
    assert event.order == NormalizedOrder(
        channel=Channel.MINIPROGRAM,
        external_id="MP20240618001",
        delivery_mode=DeliveryMode.DELIVERY,
        destination=Destination(lat=31.23525, lng=121.47568, address="南京东路***", province="上海市", city="上海市",
                                district="黄浦区"),
        lines=[OrderLine(sku="SKU-TEA-500", quantity=2, unit_price=1290, platform_line_id="1"),
               OrderLine(sku="SKU-CUP", quantity=1, unit_price=500, platform_line_id="2", platform_sku_id="wx-77")],
        status=ChannelStatus.UNPAID,
        buyer=Buyer(name_masked="赵*", phone_masked="139****8888"),
        total_fen=3080,
        freight_fen=600,
        discount_fen=100,
        created_at=datetime(2024, 6, 18, 9, 59, tzinfo=BJ),
        promised_by=datetime(2024, 6, 18, 11, 0, tzinfo=BJ),
    )


def test_wgs84_receiver_is_converted_to_gcj02():
    receiver = push_body()["order"]["receiver"] | {"coord_system": "wgs84"}
    body = json.dumps(push_body(receiver=receiver)).encode()
    order = miniprogram.parse_order_push(body, signed(body), PUSH_SECRET, now=NOW).order
    assert order.destination.lat != 31.23525 and abs(order.destination.lat - 31.23525) < 0.01


def test_order_push_refusals():
    body = json.dumps(push_body()).encode()
    with pytest.raises(SignatureError):
        miniprogram.parse_order_push(body, signed(body, secret="other"), PUSH_SECRET, now=NOW)
    with pytest.raises(SignatureError):
        miniprogram.parse_order_push(body.replace(b"3080", b"3081"), signed(body), PUSH_SECRET, now=NOW)
    with pytest.raises(StaleTimestamp):  # 5 minutes old: refused
        miniprogram.parse_order_push(body, signed(body, ts=NOW - 300), PUSH_SECRET, now=NOW)
    miniprogram.parse_order_push(body, signed(body, ts=NOW - 299), PUSH_SECRET, now=NOW)  # just inside
    with pytest.raises(SignatureError):
        miniprogram.parse_order_push(body, {}, PUSH_SECRET, now=NOW)
    bad = json.dumps(push_body(items=[{"line_id": "1", "sku_code": "A", "quantity": 0, "unit_price_fen": 1}])).encode()
    with pytest.raises(PayloadError) as info:
        miniprogram.parse_order_push(bad, signed(bad), PUSH_SECRET, now=NOW)
    assert info.value.field == "order.items[0].quantity" and info.value.message_id == "evt-001"
    pickup = json.dumps(push_body(delivery_mode="pickup")).encode()
    with pytest.raises(PayloadError) as info:
        miniprogram.parse_order_push(pickup, signed(pickup), PUSH_SECRET, now=NOW)
    assert info.value.field == "order.pickup_store_id"


def test_cancel_and_refunded_lines_pushes():
    body = json.dumps(push_body() | {"event_id": "evt-2", "event": "order.cancelled"}).encode()
    event = miniprogram.parse_order_push(body, signed(body), PUSH_SECRET, now=NOW)
    assert event.kind is ChannelEventKind.CANCEL and event.status is ChannelStatus.CANCELLED
    body = json.dumps(push_body() | {"event_id": "evt-3", "event": "order.lines_refunded",
                                     "refunded_line_ids": ["2"]}).encode()
    event = miniprogram.parse_order_push(body, signed(body), PUSH_SECRET, now=NOW)
    assert event.kind is ChannelEventKind.REFUND_LINES and event.refunded_line_ids == ["2"]


# ------------------------------------------------------------------------------- WeChat Pay v3


def notification(event_type: str, resource: dict, *, key: bytes = APIV3_KEY, note_id: str = "EV-2018022511223320873"):
    nonce = "fdasflkja484"
    aad = "transaction"
    ciphertext = AESGCM(key).encrypt(nonce.encode(), json.dumps(resource).encode(), aad.encode())
    return json.dumps({
        "id": note_id, "create_time": "2024-06-18T10:00:02+08:00", "resource_type": "encrypt-resource",
        "event_type": event_type, "summary": "支付成功",
        "resource": {"original_type": "transaction", "algorithm": "AEAD_AES_256_GCM",
                     "ciphertext": base64.b64encode(ciphertext).decode(), "associated_data": aad, "nonce": nonce},
    }, ensure_ascii=False).encode()


def wechat_headers(body: bytes, *, ts: float = NOW, key=PRIVATE_KEY, nonce: str = "5K8264ILTKCH16CQ2502SI8ZNMTM67VS"):
    stamp = str(int(ts))
    message = f"{stamp}\n{nonce}\n".encode() + body + b"\n"
    signature = base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()
    return {"Wechatpay-Timestamp": stamp, "Wechatpay-Nonce": nonce, "Wechatpay-Signature": signature,
            "Wechatpay-Serial": "PUB_KEY_ID_0112345678", "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048"}


TRANSACTION = {"mchid": "1900000109", "appid": "wxd678efh567hg6787", "out_trade_no": "MP20240618001",
               "transaction_id": "4200000000202406180000000001", "trade_type": "JSAPI", "trade_state": "SUCCESS",
               "trade_state_desc": "支付成功", "bank_type": "CMC", "success_time": "2024-06-18T10:00:01+08:00",
               "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
               "amount": {"total": 3080, "payer_total": 3080, "currency": "CNY", "payer_currency": "CNY"}}


def parse(body: bytes, headers: dict[str, str], **kw):
    return miniprogram.parse_wechatpay_notification(body, headers, public_key=PUBLIC_KEY, apiv3_key=APIV3_KEY,
                                                    now=NOW + 5, **kw)


def test_payment_notification_marks_paid_with_the_amount():
    body = notification("TRANSACTION.SUCCESS", TRANSACTION)
    assert miniprogram.is_wechatpay_notification(wechat_headers(body))
    event = parse(body, wechat_headers(body))
    assert event.kind is ChannelEventKind.STATUS and event.status is ChannelStatus.PAID
    assert event.external_id == "MP20240618001" and event.amount_fen == 3080
    assert event.message_id == "EV-2018022511223320873" and event.raw == body
    assert event.occurred_at == datetime(2024, 6, 18, 10, 0, 1, tzinfo=BJ)


def test_paid_amount_is_checked_against_the_order():
    body = json.dumps(push_body()).encode()
    order = miniprogram.parse_order_push(body, signed(body), PUSH_SECRET, now=NOW).order
    paid = parse(notification("TRANSACTION.SUCCESS", TRANSACTION), wechat_headers(notification("TRANSACTION.SUCCESS",
                                                                                                TRANSACTION)))
    miniprogram.check_paid_amount(paid, order)
    short = TRANSACTION | {"amount": {"total": 3000, "payer_total": 3000, "currency": "CNY"}}
    body2 = notification("TRANSACTION.SUCCESS", short)
    with pytest.raises(PayloadError) as info:
        miniprogram.check_paid_amount(parse(body2, wechat_headers(body2)), order)
    assert info.value.field == "resource.amount.total"


def test_refund_notifications():
    full = {"mchid": "1900000100", "out_trade_no": "MP20240618001", "transaction_id": "42000", "out_refund_no": "R1",
            "refund_id": "50000", "refund_status": "SUCCESS", "success_time": "2024-06-18T12:00:00+08:00",
            "amount": {"total": 3080, "refund": 3080, "payer_total": 3080, "payer_refund": 3080}}
    body = notification("REFUND.SUCCESS", full, note_id="EV-R1")
    event = parse(body, wechat_headers(body))
    assert event.kind is ChannelEventKind.CANCEL and event.amount_fen == 3080
    partial = full | {"amount": {"total": 3080, "refund": 500}}
    body = notification("REFUND.SUCCESS", partial, note_id="EV-R2")
    assert parse(body, wechat_headers(body)).kind is ChannelEventKind.REFUND_LINES
    closed = full | {"refund_status": "CLOSED"}
    body = notification("REFUND.CLOSED", closed, note_id="EV-R3")
    assert parse(body, wechat_headers(body)).kind is ChannelEventKind.IGNORE


def test_wrong_key_signature_is_refused():
    body = notification("TRANSACTION.SUCCESS", TRANSACTION)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(SignatureError) as info:
        parse(body, wechat_headers(body, key=other))
    assert info.value.status == 401


def test_tampered_body_is_refused():
    body = notification("TRANSACTION.SUCCESS", TRANSACTION)
    headers = wechat_headers(body)
    with pytest.raises(SignatureError):
        parse(body.replace(b"EV-2018", b"EV-2019"), headers)


def test_signature_over_the_documented_message_independently():
    body = notification("TRANSACTION.SUCCESS", TRANSACTION)
    headers = wechat_headers(body)
    # verify with cryptography directly over "timestamp\nnonce\nbody\n", not through the adapter
    PRIVATE_KEY.public_key().verify(
        base64.b64decode(headers["Wechatpay-Signature"]),
        headers["Wechatpay-Timestamp"].encode() + b"\n" + headers["Wechatpay-Nonce"].encode() + b"\n" + body + b"\n",
        padding.PKCS1v15(), hashes.SHA256(),
    )
    assert miniprogram.wechatpay_message(headers["Wechatpay-Timestamp"], headers["Wechatpay-Nonce"], body) == (
        headers["Wechatpay-Timestamp"].encode() + b"\n" + headers["Wechatpay-Nonce"].encode() + b"\n" + body + b"\n"
    )


def test_old_timestamps_are_refused():
    body = notification("TRANSACTION.SUCCESS", TRANSACTION)
    with pytest.raises(StaleTimestamp):
        miniprogram.parse_wechatpay_notification(body, wechat_headers(body, ts=NOW - 300), public_key=PUBLIC_KEY,
                                                 apiv3_key=APIV3_KEY, now=NOW)
    miniprogram.parse_wechatpay_notification(body, wechat_headers(body, ts=NOW - 299), public_key=PUBLIC_KEY,
                                             apiv3_key=APIV3_KEY, now=NOW)


def test_resource_encrypted_with_another_key_is_refused():
    body = notification("TRANSACTION.SUCCESS", TRANSACTION, key=os.urandom(32))
    with pytest.raises(PayloadError) as info:
        parse(body, wechat_headers(body))
    assert info.value.field == "resource.ciphertext" and info.value.message_id == "EV-2018022511223320873"


def test_serial_pinning_and_missing_headers():
    body = notification("TRANSACTION.SUCCESS", TRANSACTION)
    with pytest.raises(SignatureError):
        parse(body, wechat_headers(body), expected_serial="PUB_KEY_ID_OTHER")
    parse(body, wechat_headers(body), expected_serial="PUB_KEY_ID_0112345678")
    with pytest.raises(SignatureError):
        parse(body, {"Wechatpay-Timestamp": str(int(NOW))})


def test_acks():
    ok = miniprogram.wechatpay_ack_success()
    assert ok.status in (200, 204) and ok.body == b""
    fail = miniprogram.wechatpay_ack_error(401, "签名错误")
    assert fail.status == 401 and json.loads(fail.body) == {"code": "FAIL", "message": "签名错误"}


def test_certificate_pem_is_accepted_too():
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com Root CA")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(PRIVATE_KEY.public_key())
            .serial_number(1).not_valid_before(datetime(2024, 1, 1)).not_valid_after(datetime(2030, 1, 1))
            .sign(PRIVATE_KEY, hashes.SHA256()))
    key = miniprogram.load_platform_public_key(cert.public_bytes(serialization.Encoding.PEM))
    body = notification("TRANSACTION.SUCCESS", TRANSACTION)
    miniprogram.verify_wechatpay(body, wechat_headers(body), key, now=NOW)


def test_pickup_push_names_our_store_node():
    body = json.dumps(push_body(delivery_mode="pickup", pickup_store_id="store-sh-01")).encode()
    order = miniprogram.parse_order_push(body, signed(body), PUSH_SECRET, now=NOW).order
    assert order.delivery_mode is DeliveryMode.PICKUP and order.pickup_node_id == "store-sh-01"
