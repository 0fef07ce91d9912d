"""Tmall/Taobao: TOP signing, TMC frames and routing, taobao.trade.fullinfo.get mapping, relay.

Fixtures follow Taobao's documented field tables (trade status enum, yuan strings,
"yyyy-MM-dd HH:mm:ss" Beijing times, orders with outer_sku_id/num/price) and the TMC message
shape (id, topic, content JSON text, pub_time, user_nick).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from datetime import datetime, timedelta, timezone

import pytest

from adapters import tmall, tmc
from adapters.errors import PayloadError, SignatureError, StaleTimestamp, UpstreamError
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
APP_KEY, APP_SECRET = "12345678", "sandboxbbf5579605d7936422c11af0e"
CREDS = tmall.TmallCredentials(app_key=APP_KEY, app_secret=APP_SECRET, session="sess-1")
NOW = datetime(2024, 6, 18, 10, 5, tzinfo=BJ)


def independent_top_md5(params: dict[str, str], secret: str, body: bytes = b"") -> str:
    concat = "".join(k + params[k] for k in sorted(params) if k != "sign")
    return hashlib.md5(secret.encode() + concat.encode() + body + secret.encode()).hexdigest().upper()


def trade_json(**overrides) -> dict:
    trade = {
        "tid": 2231958349123456789,
        "tid_str": "2231958349123456789",
        "status": "WAIT_SELLER_SEND_GOODS",
        "type": "fixed",
        "payment": "45.70",
        "total_fee": "48.70",
        "post_fee": "6.00",
        "discount_fee": "9.00",
        "created": "2024-06-18 09:58:00",
        "pay_time": "2024-06-18 10:00:00",
        "modified": "2024-06-18 10:00:05",
        "receiver_name": "李**",
        "receiver_mobile": "*******5678",
        "receiver_state": "浙江省",
        "receiver_city": "杭州市",
        "receiver_district": "西湖区",
        "receiver_town": "文新街道",
        "receiver_address": "文一西路**号",
        "oaid": "1Qf7ZVvN2mTwYRPnHI6lVUKXxxxx",
        "orders": [
            {"oid": 2231958349123456790, "num_iid": 600000001, "sku_id": "4500000001", "outer_sku_id": "SKU-TEA-500",
             "outer_iid": "ITEM-TEA", "num": 3, "price": "12.90", "payment": "38.70", "title": "乌龙茶",
             "status": "WAIT_SELLER_SEND_GOODS", "refund_status": "NO_REFUND"},
            {"oid": "2231958349123456791", "num_iid": 600000002, "sku_id": "4500000002", "outer_sku_id": "",
             "outer_iid": "", "num": 1, "price": "10.00", "payment": "7.00"},
        ],
    }
    trade.update(overrides)
    return {"trade_fullinfo_get_response": {"trade": trade, "request_id": "abc"}}


def raw(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


# ------------------------------------------------------------------------------ signing


def test_top_md5_sign_matches_the_documented_recipe():
    params = {"foo": "1", "bar": "2", "foo_bar": "3", "foobar": "4"}
    # the docs' example: md5(secret + "bar2foo1foo_bar3foobar4" + secret)
    expected = hashlib.md5(b"helloworld" + b"bar2foo1foo_bar3foobar4" + b"helloworld").hexdigest().upper()
    assert tmall.top_sign(params, "helloworld") == expected


def test_top_hmac_variants():
    params = {"foo": "1", "bar": "2"}
    assert tmall.top_sign(params, "s", "hmac") == hmac.new(b"s", b"bar2foo1", hashlib.md5).hexdigest().upper()
    assert tmall.top_sign(params, "s", "hmac-sha256") == hmac.new(b"s", b"bar2foo1", hashlib.sha256).hexdigest().upper()
    with pytest.raises(SignatureError):
        tmall.top_sign(params, "s", "rot13")


def test_tmc_connect_sign_is_upper_md5_of_the_documented_string():
    expected = hashlib.md5(
        f"{APP_SECRET}app_key{APP_KEY}group_namedefaulttimestamp1718676000000{APP_SECRET}".encode()
    ).hexdigest().upper()
    assert tmc.connect_sign(APP_KEY, APP_SECRET, "default", 1718676000000) == expected


# ------------------------------------------------------------------------------ TMC frames


def test_frame_codec_matches_the_published_byte_sample():
    # mapleflow/tmcpy3 tests/test_messageio.py: a CONNECTACK with flag 1 and a token
    sample = b"\x02\x01\x04\x00\x01\x00\x00\x00\x05\x00$\x00\x00\x0032e88d28-20b1-40dd-8e2d-abec197277fe\x00\x00"
    frame = tmc.decode_frame(sample)
    assert frame.message_type == tmc.MessageType.CONNECTACK and frame.flag == 1
    assert frame.token == "32e88d28-20b1-40dd-8e2d-abec197277fe"
    assert tmc.encode_frame(frame) == sample


def test_connect_and_confirm_frames_round_trip():
    connect = tmc.decode_frame(tmc.connect_frame(APP_KEY, APP_SECRET, "default", 1718676000000))
    assert connect.message_type == tmc.MessageType.CONNECT
    assert connect.headers["sign"] == tmc.connect_sign(APP_KEY, APP_SECRET, "default", 1718676000000)
    assert connect.headers["timestamp"] == "1718676000000" and connect.headers["group_name"] == "default"
    confirm = tmc.decode_frame(tmc.confirm_frame("tok", 8000000000123))
    assert confirm.token == "tok" and confirm.headers == {"__kind": 2, "id": 8000000000123}


@pytest.mark.parametrize("bad", [b"", b"\x02", b"\x02\x02\x01\x00\xff\xff\xff\x7f", b"\x02\x02\x09\x00",
                                 b"\x02\x02\x01\x00\x01\x00\x00\x00k\x09"])
def test_malformed_frames_are_payload_errors(bad):
    with pytest.raises(PayloadError):
        tmc.decode_frame(bad)


def data_frame(topic: str, content: dict, message_id: int = 8000000000123) -> bytes:
    return tmc.encode_frame(tmc.Frame(message_type=tmc.MessageType.SEND, headers={
        "__kind": tmc.MessageKind.DATA, "id": message_id, "topic": topic, "content": json.dumps(content),
        "pub_time": tmc.Date(1718676005000), "pub_app_key": "12497914", "user_id": 100200, "user_nick": "shop-a",
    }))


# ------------------------------------------------------------------------------ routing


def event_for(topic: str, content: dict):
    frame = tmc.decode_frame(data_frame(topic, content))
    return tmall.event_from_message(tmall.message_from_tmc_headers(frame.headers))


def test_buyer_pay_message_becomes_an_upsert():
    event = event_for("taobao_trade_TradeBuyerPay", {"tid": 2231958349123456789, "oid": 2231958349123456789,
                                                     "status": "WAIT_SELLER_SEND_GOODS", "payment": "45.70",
                                                     "buyer_nick": "b**", "seller_nick": "shop-a", "type": "fixed"})
    assert event.kind is ChannelEventKind.UPSERT and event.status is ChannelStatus.PAID
    assert event.external_id == "2231958349123456789" and event.message_id == "8000000000123"
    assert event.amount_fen == 4570 and event.channel is Channel.TMALL
    assert event.topic == "taobao_trade_TradeBuyerPay"


def test_close_and_refund_messages():
    closed = event_for("taobao_trade_TradeClose", {"tid": 1, "oid": 1, "status": "TRADE_CLOSED_BY_TAOBAO"})
    assert closed.kind is ChannelEventKind.CANCEL and closed.status is ChannelStatus.CANCELLED
    refunded = event_for("taobao_refund_RefundSuccess", {"tid": 1, "oid": 2, "refund_id": 9, "refund_fee": "12.90",
                                                         "modified": "2024-06-18 12:00:00"})
    assert refunded.kind is ChannelEventKind.REFUND_LINES and refunded.refunded_line_ids == ["2"]
    assert refunded.amount_fen == 1290 and refunded.occurred_at == datetime(2024, 6, 18, 12, tzinfo=BJ)
    created = event_for("taobao_refund_RefundCreated", {"tid": 1, "oid": 2, "refund_fee": "12.90"})
    assert created.kind is ChannelEventKind.IGNORE
    success = event_for("taobao_trade_TradeSuccess", {"tid": 1, "status": "TRADE_FINISHED"})
    assert success.kind is ChannelEventKind.STATUS and success.status is ChannelStatus.COMPLETED
    create = event_for("taobao_trade_TradeCreate", {"tid": 1, "status": "WAIT_BUYER_PAY"})
    assert create.kind is ChannelEventKind.UPSERT and create.status is ChannelStatus.UNPAID


def test_bad_content_names_the_field_and_message_id():
    frame = tmc.decode_frame(tmc.encode_frame(tmc.Frame(message_type=2, headers={
        "id": 77, "topic": "taobao_trade_TradeBuyerPay", "content": "{not json"})))
    with pytest.raises(PayloadError) as info:
        tmall.event_from_message(tmall.message_from_tmc_headers(frame.headers))
    assert info.value.field == "content" and info.value.message_id == "77"
    with pytest.raises(PayloadError) as info:
        event_for("taobao_trade_TradeBuyerPay", {"tid": 1, "payment": "12,90"})
    assert info.value.field == "content.payment"


# ------------------------------------------------------------------------------ fullinfo


def gazetteer_centre(adcode: str) -> tuple[float, float]:
    """Read cpca's CSV directly (independently of adapters.geo) for the expected centre."""
    import csv
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("cpca")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "adcodes.csv"
    with path.open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["adcode"].startswith(adcode):
                return float(row["latitude"]), float(row["longitude"])
    raise LookupError(adcode)


def test_paid_trade_becomes_the_expected_normalized_order():
    order = tmall.parse_fullinfo_response(raw(trade_json()), sku_map={"4500000002": "SKU-CUP"})
    lat, lng = gazetteer_centre("330106")  # 西湖区, Hangzhou
    expected = NormalizedOrder(
        channel=Channel.TMALL,
        external_id="2231958349123456789",
        delivery_mode=DeliveryMode.SHIP,
        destination=Destination(lat=lat, lng=lng, address="浙江省杭州市西湖区文新街道文一西路**号",
                                approximate=True, province="浙江省", city="杭州市", district="西湖区"),
        lines=[
            OrderLine(sku="SKU-TEA-500", quantity=3, unit_price=1290, platform_line_id="2231958349123456790",
                      platform_sku_id="4500000001"),
            OrderLine(sku="SKU-CUP", quantity=1, unit_price=1000, platform_line_id="2231958349123456791",
                      platform_sku_id="4500000002"),
        ],
        status=ChannelStatus.PAID,
        buyer=Buyer(name_masked="李**", phone_masked="*******5678", encrypted={"oaid": "1Qf7ZVvN2mTwYRPnHI6lVUKXxxxx"}),
        total_fen=4570,
        freight_fen=600,
        discount_fen=900,
        created_at=datetime(2024, 6, 18, 9, 58, tzinfo=BJ),
        paid_at=datetime(2024, 6, 18, 10, 0, tzinfo=BJ),
        updated_at=datetime(2024, 6, 18, 10, 0, 5, tzinfo=BJ),
    )
    assert order == expected


def test_simplified_and_wrapped_orders_shapes_are_both_read():
    body = trade_json()["trade_fullinfo_get_response"]
    body["trade"]["orders"] = {"order": body["trade"]["orders"]}
    order = tmall.parse_fullinfo_response(raw(body))
    assert [line.sku for line in order.lines] == ["SKU-TEA-500", "tmall:4500000002"]
    assert order.unmapped and "4500000002" in order.unmapped[0]


@pytest.mark.parametrize(("status", "expected"), [
    ("WAIT_BUYER_PAY", ChannelStatus.UNPAID), ("WAIT_SELLER_SEND_GOODS", ChannelStatus.PAID),
    ("SELLER_CONSIGNED_PART", ChannelStatus.PAID), ("WAIT_BUYER_CONFIRM_GOODS", ChannelStatus.SHIPPED),
    ("TRADE_FINISHED", ChannelStatus.COMPLETED), ("TRADE_CLOSED", ChannelStatus.CANCELLED),
    ("TRADE_CLOSED_BY_TAOBAO", ChannelStatus.CANCELLED)])
def test_status_table(status, expected):
    assert tmall.parse_fullinfo_response(raw(trade_json(status=status))).status is expected


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda t: t["orders"][0].update(num=0), "trade.orders[0].num"),
    (lambda t: t["orders"][0].update(price="12.9O"), "trade.orders[0].price"),
    (lambda t: t["orders"][1].update(price=10.0), "trade.orders[1].price"),
    (lambda t: t.update(payment="abc"), "trade.payment"),
    (lambda t: t.update(status="SOMETHING_NEW"), "trade.status"),
    (lambda t: t.update(pay_time="18/06/2024"), "trade.pay_time"),
    (lambda t: t.update(receiver_state="", receiver_city="", receiver_district=""), "trade.receiver_state"),
])
def test_bad_trade_names_the_field(mutate, field):
    body = copy.deepcopy(trade_json())
    mutate(body["trade_fullinfo_get_response"]["trade"])
    with pytest.raises(PayloadError) as info:
        tmall.parse_fullinfo_response(raw(body))
    assert info.value.field == field


def test_top_error_response_is_upstream():
    body = raw({"error_response": {"code": 27, "msg": "Invalid session", "sub_code": "invalid-sessionkey",
                                   "request_id": "x"}})
    with pytest.raises(UpstreamError) as info:
        tmall.parse_fullinfo_response(body)
    assert info.value.code == "invalid-sessionkey"


def test_fullinfo_request_is_signed():
    request = tmall.build_fullinfo_request("2231958349123456789", CREDS, base_url="http://127.0.0.1:9/router/rest",
                                           now=NOW)
    form = request.form
    assert request.url == "http://127.0.0.1:9/router/rest" and form["method"] == "taobao.trade.fullinfo.get"
    assert form["timestamp"] == "2024-06-18 10:05:00" and form["tid"] == "2231958349123456789"
    assert form["session"] == "sess-1" and "orders" in form["fields"]
    assert form["sign"] == independent_top_md5(form, APP_SECRET)


# ------------------------------------------------------------------------------ relay webhook


def relay(body: bytes, *, secret: str = APP_SECRET, when: datetime = NOW, method: str = "md5") -> dict[str, str]:
    query = {"app_key": APP_KEY, "timestamp": when.strftime("%Y-%m-%d %H:%M:%S"), "sign_method": method}
    if method == "md5":
        query["sign"] = independent_top_md5(query, secret, body)
    else:
        concat = "".join(k + query[k] for k in sorted(query)).encode() + body
        query["sign"] = hmac.new(secret.encode(), concat, hashlib.sha256).hexdigest().upper()
    return query


RELAYED = raw({"id": 8000000000777, "topic": "taobao_trade_TradeBuyerPay", "pub_time": "2024-06-18 10:00:01",
               "user_nick": "shop-a", "content": json.dumps({"tid": 2231958349123456789, "status": "WAIT_SELLER_SEND_GOODS",
                                                            "payment": "45.70"})})


def test_relay_verified_over_params_and_body():
    event = tmall.parse_relay(RELAYED, relay(RELAYED), CREDS, now=NOW)
    assert event.kind is ChannelEventKind.UPSERT and event.message_id == "8000000000777"
    assert event.raw == RELAYED
    event = tmall.parse_relay(RELAYED, relay(RELAYED, method="hmac-sha256"), CREDS, now=NOW)
    assert event.external_id == "2231958349123456789"


def test_relay_wrong_signature_tampered_body_and_stale_timestamp():
    with pytest.raises(SignatureError):
        tmall.parse_relay(RELAYED, relay(RELAYED, secret="wrong"), CREDS, now=NOW)
    tampered = RELAYED.replace(b"45.70", b"45.71")
    with pytest.raises(SignatureError):
        tmall.parse_relay(tampered, relay(RELAYED), CREDS, now=NOW)
    with pytest.raises(StaleTimestamp) as info:
        tmall.parse_relay(RELAYED, relay(RELAYED, when=NOW - timedelta(minutes=11)), CREDS, now=NOW)
    assert info.value.status == 401
    with pytest.raises(SignatureError):
        tmall.parse_relay(RELAYED, {k: v for k, v in relay(RELAYED).items() if k != "sign"}, CREDS, now=NOW)
