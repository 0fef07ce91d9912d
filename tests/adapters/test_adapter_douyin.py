"""Douyin (抖店) push verification, routing, and order.orderDetail mapping.

Fixtures follow the documented shapes: the push is a JSON array of {"tag","msg_id","data"}
with `data` as JSON text (minibear2021/doudian examples.py, cnJun/sdk4-jinritemai message
models); the order detail follows the shop_order_list sample (agiso Doudian docs) plus the
instant-delivery fields named in issue #6.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from datetime import datetime, timedelta, timezone

import pytest

from adapters import douyin
from adapters.errors import PayloadError, SignatureError, UpstreamError
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

APP_KEY = "7000000000000000001"
APP_SECRET = "2ad2355c-01d0-11f8-91dc-05a8cd1054b1"
CREDS = douyin.DouyinCredentials(app_key=APP_KEY, app_secret=APP_SECRET, access_token="tok-1")
BJ = timezone(timedelta(hours=8))
ORDER_ID = "4781320682406083640"  # 19 digits: must stay text


def independent_event_sign(body: bytes) -> str:
    """md5(app_key + body + app_secret), computed here without the adapter."""
    return hashlib.md5(APP_KEY.encode() + body + APP_SECRET.encode()).hexdigest()


def push_headers(body: bytes) -> dict[str, str]:
    return {"app-id": APP_KEY, "event-sign": independent_event_sign(body), "Content-Type": "application/json"}


def message(tag: str | int, msg_id: str, data: dict) -> dict:
    return {"tag": str(tag), "msg_id": msg_id, "data": json.dumps(data)}


def encode(messages: list[dict]) -> bytes:
    return json.dumps(messages, ensure_ascii=False).encode()


PAID = message(101, "m-101", {"p_id": int(ORDER_ID), "s_ids": [4781320682406083641], "shop_id": 77,
                              "order_status": 2, "order_type": 0, "biz": 2, "pay_time": 1718676000})
CANCELLED = message(106, "m-106", {"p_id": 4781320682406099999, "s_ids": [4781320682406099998], "shop_id": 77,
                                   "order_status": 4, "cancel_time": 1718679600, "cancel_reason": "不想要了"})
REFUNDED = message(206, "m-206", {"p_id": int(ORDER_ID), "s_id": 4781320682406083641, "shop_id": 77,
                                  "aftersale_id": 7000123, "aftersale_status": 12, "aftersale_type": 2,
                                  "refund_amount": 2580, "refund_post_amount": 0, "success_time": 1718683200})


def detail_response(**overrides) -> dict:
    detail = {
        "order_id": ORDER_ID,
        "order_status": 105,
        "main_status": 105,
        "create_time": 1718675940,
        "pay_time": 1718676000,
        "update_time": 1718676060,
        "order_amount": 3880,
        "pay_amount": 3380,
        "post_amount": 500,
        "promotion_amount": 1000,
        "encrypt_post_receiver": "##qIOpbLPevlQwA6f+yNJ7HgOq*CgYIASAHKAESPgo8#1##",
        "encrypt_post_tel": "$$KlqdO3S6/9vQsJesewp8R2oBlX*CgYIASAHKAESPgo85M$1$$",
        "mask_post_receiver": "张**",
        "mask_post_tel": "138****0000",
        "post_addr": {
            "province": {"name": "福建省", "id": "35"},
            "city": {"name": "厦门市", "id": "350200"},
            "town": {"name": "思明区", "id": "350203"},
            "street": {"name": "莲前街道", "id": "350203010"},
            "encrypt_detail": "##i688Hg7Kf5y7JCzTAYaUWxswmAx8QnT*CgYIASAHKAESPgo8VOu2#1##",
        },
        "mask_post_addr": {
            "province": {"name": "福建省", "id": "35"},
            "city": {"name": "厦门市", "id": "350200"},
            "town": {"name": "思明区", "id": "350203"},
            "street": {"name": "莲前街道", "id": "350203010"},
            "detail": "莲前西路**号",
        },
        "user_coordinate": {"user_coordinate_longitude": "118.11022", "user_coordinate_latitude": "24.46948"},
        "early_arrival": True,
        "target_arrival_time": 1718679600,
        "sku_order_list": [
            {"order_id": "4781320682406083641", "parent_order_id": ORDER_ID, "sku_id": 1730000000000001,
             "out_sku_id": "SKU-TEA-500", "code": "112233", "item_num": 2, "origin_amount": 1290, "sum_amount": 2580,
             "receive_type": 1, "product_name": "乌龙茶 500g"},
            {"order_id": "4781320682406083642", "parent_order_id": ORDER_ID, "sku_id": 1730000000000002,
             "out_sku_id": "", "code": "", "item_num": 1, "origin_amount": 1300, "sum_amount": 1300,
             "receive_type": 1},
        ],
        "unknown_future_field": {"anything": [1, 2, 3]},
    }
    detail.update(overrides)
    return {"code": 10000, "msg": "success", "sub_code": "", "sub_msg": "", "log_id": "2024061810000001",
            "data": {"shop_order_detail": detail}}


def raw(obj: dict) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


# --------------------------------------------------------------------------- signature


def test_event_sign_matches_an_independent_md5():
    body = encode([PAID])
    assert douyin.sign_push(APP_KEY, APP_SECRET, body) == independent_event_sign(body)
    douyin.verify_push(body, push_headers(body), CREDS)  # no exception


def test_event_sign_compared_without_regard_to_case():
    body = encode([PAID])
    headers = push_headers(body) | {"event-sign": independent_event_sign(body).upper()}
    douyin.verify_push(body, headers, CREDS)


def test_wrong_signature_is_refused_with_401():
    body = encode([PAID])
    headers = push_headers(body) | {"event-sign": "0" * 32}
    with pytest.raises(SignatureError) as info:
        douyin.parse_push(body, headers, CREDS)
    assert info.value.status == 401


def test_missing_signature_and_foreign_app_id_are_refused():
    body = encode([PAID])
    with pytest.raises(SignatureError):
        douyin.parse_push(body, {"app-id": APP_KEY}, CREDS)
    with pytest.raises(SignatureError):
        douyin.parse_push(body, push_headers(body) | {"app-id": "someone-else"}, CREDS)


def test_tampered_body_is_refused():
    body = encode([PAID])
    headers = push_headers(body)
    tampered = body.replace(b"m-101", b"m-102")
    assert len(tampered) == len(body)
    with pytest.raises(SignatureError):
        douyin.parse_push(tampered, headers, CREDS)


def test_hmac_sha256_variant_only_behind_its_header():
    body = encode([PAID])
    mac = hmac.new(APP_SECRET.encode(), APP_KEY.encode() + body + APP_SECRET.encode(), hashlib.sha256).hexdigest()
    headers = {"app-id": APP_KEY, "event-sign": mac, "sign-method": "hmac-sha256"}
    assert len(douyin.parse_push(body, headers, CREDS)) == 1
    with pytest.raises(SignatureError):  # same value without the header: MD5 is expected
        douyin.parse_push(body, {"app-id": APP_KEY, "event-sign": mac}, CREDS)


# --------------------------------------------------------------------------- routing


def test_batch_routes_each_tag():
    body = encode([PAID, CANCELLED, REFUNDED])
    items = douyin.parse_push(body, push_headers(body), CREDS)
    assert [i.error for i in items] == [None, None, None]
    paid, cancelled, refunded = (i.event for i in items)
    assert paid.kind is ChannelEventKind.UPSERT and paid.status is ChannelStatus.PAID
    assert paid.external_id == ORDER_ID and paid.message_id == "m-101" and paid.topic == "101"
    assert paid.occurred_at == datetime(2024, 6, 18, 10, 0, tzinfo=BJ)
    assert paid.channel is Channel.DOUYIN
    assert paid.raw == json.dumps(PAID, ensure_ascii=False).encode()  # this message's own bytes
    assert cancelled.kind is ChannelEventKind.CANCEL and cancelled.status is ChannelStatus.CANCELLED
    assert cancelled.external_id == "4781320682406099999"
    assert refunded.kind is ChannelEventKind.REFUND_LINES
    assert refunded.refunded_line_ids == ["4781320682406083641"] and refunded.amount_fen == 2580


@pytest.mark.parametrize(
    ("tag", "kind", "status"),
    [(100, ChannelEventKind.UPSERT, ChannelStatus.UNPAID), (110, ChannelEventKind.UPSERT, ChannelStatus.PAID),
     (102, ChannelEventKind.STATUS, ChannelStatus.SHIPPED), (103, ChannelEventKind.STATUS, ChannelStatus.COMPLETED),
     (105, ChannelEventKind.UPSERT, None), (999, ChannelEventKind.IGNORE, None)],
)
def test_trade_tags(tag, kind, status):
    body = encode([message(tag, f"m-{tag}", {"p_id": ORDER_ID, "s_ids": [], "update_time": 1718676000})])
    (item,) = douyin.parse_push(body, push_headers(body), CREDS)
    assert item.event is not None and item.event.kind is kind and item.event.status is status


def test_refund_created_and_closed_are_acknowledged_only():
    for tag in (200, 207):
        data = {"p_id": ORDER_ID, "s_id": "1", "aftersale_type": 1, "refund_amount": 100, "apply_time": 1718676000}
        body = encode([message(tag, f"m-{tag}", data)])
        (item,) = douyin.parse_push(body, push_headers(body), CREDS)
        assert item.event.kind is ChannelEventKind.IGNORE


def test_sdk_sample_spelling_numeric_tag_msgId_and_object_data():
    body = json.dumps([{"tag": 106, "msgId": "m-x", "data": {"p_id": ORDER_ID, "s_ids": []}}]).encode()
    (item,) = douyin.parse_push(body, push_headers(body), CREDS)
    assert item.event.kind is ChannelEventKind.CANCEL and item.msg_id == "m-x"


def test_verification_ping_is_ignored_even_without_a_msg_id():
    for ping in ({"tag": "0", "msg_id": "", "data": "{}"}, {"tag": 0, "data": {}}, {"tag": "0", "msg_id": "ping-1"}):
        body = encode([ping])
        (item,) = douyin.parse_push(body, push_headers(body), CREDS)
        assert item.error is None and item.event.kind is ChannelEventKind.IGNORE
    body = encode([{"tag": "101", "data": json.dumps({"p_id": ORDER_ID})}])
    (item,) = douyin.parse_push(body, push_headers(body), CREDS)
    assert item.error is not None and item.error.field == "[0].msg_id"


def test_bad_message_in_a_batch_is_reported_and_the_others_kept():
    bad = {"tag": "101", "msg_id": "m-bad", "data": "{not json"}
    missing = message(101, "m-missing", {"s_ids": []})
    body = encode([PAID, bad, missing, CANCELLED])
    items = douyin.parse_push(body, push_headers(body), CREDS)
    assert [i.event is not None for i in items] == [True, False, False, True]
    assert isinstance(items[1].error, PayloadError)
    assert items[1].error.field == "[1].data" and items[1].error.message_id == "m-bad"
    assert items[2].error.field == "[2].data.p_id" and items[2].msg_id == "m-missing"


def test_body_that_is_not_json_is_refused_whole():
    body = b"<xml/>"
    with pytest.raises(PayloadError):
        douyin.parse_push(body, push_headers(body), CREDS)


# --------------------------------------------------------------------------- order.orderDetail


def test_paid_instant_order_becomes_the_expected_normalized_order():
    order = douyin.parse_order_detail_response(raw(detail_response()), sku_map={"1730000000000002": "SKU-CUP"})
    expected = NormalizedOrder(
        channel=Channel.DOUYIN,
        external_id=ORDER_ID,
        delivery_mode=DeliveryMode.DELIVERY,
        destination=Destination(
            lat=24.46948, lng=118.11022, address="福建省厦门市思明区莲前街道莲前西路**号", approximate=False,
            province="福建省", city="厦门市", district="思明区",
        ),
        lines=[
            OrderLine(sku="SKU-TEA-500", quantity=2, unit_price=1290, platform_line_id="4781320682406083641",
                      platform_sku_id="1730000000000001"),
            OrderLine(sku="SKU-CUP", quantity=1, unit_price=1300, platform_line_id="4781320682406083642",
                      platform_sku_id="1730000000000002"),
        ],
        status=ChannelStatus.PAID,
        pickup_node_id=None,
        buyer=Buyer(
            name_masked="张**",
            phone_masked="138****0000",
            encrypted={
                "encrypt_post_receiver": "##qIOpbLPevlQwA6f+yNJ7HgOq*CgYIASAHKAESPgo8#1##",
                "encrypt_post_tel": "$$KlqdO3S6/9vQsJesewp8R2oBlX*CgYIASAHKAESPgo85M$1$$",
                "encrypt_detail": "##i688Hg7Kf5y7JCzTAYaUWxswmAx8QnT*CgYIASAHKAESPgo8VOu2#1##",
            },
        ),
        total_fen=3380,
        freight_fen=500,
        discount_fen=1000,
        created_at=datetime(2024, 6, 18, 9, 59, tzinfo=BJ),
        paid_at=datetime(2024, 6, 18, 10, 0, tzinfo=BJ),
        promised_by=datetime(2024, 6, 18, 11, 0, tzinfo=BJ),
        updated_at=datetime(2024, 6, 18, 10, 1, tzinfo=BJ),
        unmapped=[],
    )
    assert order == expected
    assert order.paid_at.utcoffset() == timedelta(hours=8)


def test_unknown_sku_is_reported_not_rejected():
    order = douyin.parse_order_detail_response(raw(detail_response()))
    assert order.lines[0].sku == "SKU-TEA-500" and order.lines[0].unmapped_reason is None
    assert order.lines[1].sku == "douyin:1730000000000002"
    assert "1730000000000002" in order.lines[1].unmapped_reason
    assert order.unmapped == [order.lines[1].unmapped_reason]


def test_code_is_used_when_out_sku_id_is_empty():
    response = detail_response()
    response["data"]["shop_order_detail"]["sku_order_list"][1]["code"] = "SKU-CUP-CODE"
    order = douyin.parse_order_detail_response(raw(response))
    assert order.lines[1].sku == "SKU-CUP-CODE" and order.unmapped == []


def test_without_coordinates_the_district_centre_is_used_and_marked():
    response = detail_response(user_coordinate=None, early_arrival=False, target_arrival_time=0)
    order = douyin.parse_order_detail_response(raw(response))
    assert order.delivery_mode is DeliveryMode.SHIP and order.promised_by is None
    assert order.destination.approximate is True
    assert order.destination.lat == pytest.approx(24.445484) and order.destination.lng == pytest.approx(118.082649)


def test_pickup_order_names_the_store():
    response = detail_response(store_info={"store_id": 9001, "out_store_id": "store-xm-01"})
    for item in response["data"]["shop_order_detail"]["sku_order_list"]:
        item["receive_type"] = 2
    order = douyin.parse_order_detail_response(raw(response))
    assert order.delivery_mode is DeliveryMode.PICKUP and order.pickup_node_id == "store-xm-01"
    del response["data"]["shop_order_detail"]["store_info"]
    with pytest.raises(PayloadError) as info:
        douyin.parse_order_detail_response(raw(response))
    assert info.value.field == "data.shop_order_detail.store_info.store_id"


@pytest.mark.parametrize(("status", "expected"), [(1, ChannelStatus.UNPAID), (2, ChannelStatus.PAID),
                                                  (101, ChannelStatus.PAID), (3, ChannelStatus.SHIPPED),
                                                  (4, ChannelStatus.CANCELLED), (5, ChannelStatus.COMPLETED)])
def test_status_table(status, expected):
    order = douyin.parse_order_detail_response(raw(detail_response(order_status=status, main_status=status)))
    assert order.status is expected


def test_refunded_main_status_reads_as_cancelled():
    order = douyin.parse_order_detail_response(raw(detail_response(order_status=3, main_status=22)))
    assert order.status is ChannelStatus.CANCELLED


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["sku_order_list"][0].update(item_num=0), "data.shop_order_detail.sku_order_list[0].item_num"),
        (lambda d: d["sku_order_list"][1].update(origin_amount="12.90"),
         "data.shop_order_detail.sku_order_list[1].origin_amount"),
        (lambda d: d.update(order_status=77), "data.shop_order_detail.order_status"),
        (lambda d: d.update(sku_order_list=[]), "data.shop_order_detail.sku_order_list"),
        (lambda d: d.pop("order_id"), "data.shop_order_detail.order_id"),
        (lambda d: d.update(pay_amount=-1), "data.shop_order_detail.pay_amount"),
    ],
)
def test_bad_detail_names_the_field(mutate, field):
    response = copy.deepcopy(detail_response())
    mutate(response["data"]["shop_order_detail"])
    with pytest.raises(PayloadError) as info:
        douyin.parse_order_detail_response(raw(response))
    assert info.value.field == field


def test_error_envelope_is_an_upstream_error():
    body = raw({"code": 40004, "msg": "业务处理失败", "sub_code": "isv.order-not-exist", "sub_msg": "订单不存在",
                "data": {}})
    with pytest.raises(UpstreamError) as info:
        douyin.parse_order_detail_response(body)
    assert info.value.status == 502 and info.value.code == "isv.order-not-exist"


def test_order_detail_request_is_signed_over_the_exact_param_json():
    moment = datetime(2024, 6, 18, 10, 0, tzinfo=BJ)
    request = douyin.build_order_detail_request(ORDER_ID, CREDS, base_url="http://127.0.0.1:9/", now=moment)
    assert request.method == "POST" and request.url == "http://127.0.0.1:9/order/orderDetail"
    assert request.body == b'{"shop_order_id":"4781320682406083640"}'
    params = request.params
    pattern = (f"{APP_SECRET}app_key{APP_KEY}methodorder.orderDetailparam_json{request.body.decode()}"
               f"timestamp{params['timestamp']}v2{APP_SECRET}")
    assert params["timestamp"] == "1718676000"
    assert params["sign"] == hmac.new(APP_SECRET.encode(), pattern.encode(), hashlib.sha256).hexdigest()
    assert params["access_token"] == "tok-1" and params["sign_method"] == "hmac-sha256"
    md5_request = douyin.build_order_detail_request(ORDER_ID, CREDS, now=moment, sign_method="md5")
    assert md5_request.params["sign"] == hashlib.md5(pattern.encode()).hexdigest()


def test_acknowledgements():
    ack = douyin.ack_success()
    assert ack.status == 200 and ack.body == b'{"code":0,"msg":"success"}'
    error = douyin.ack_error(401, "signature mismatch")
    assert error.status == 401 and json.loads(error.body) == {"code": 40100, "msg": "signature mismatch"}


def test_credentials_repr_hides_secrets():
    assert APP_SECRET not in repr(CREDS) and "tok-1" not in repr(CREDS)
