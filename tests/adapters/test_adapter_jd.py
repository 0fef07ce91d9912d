"""JD: JOS signing (JD's own worked example), order search/get parsing, the relay webhook.

Fixtures follow jingdong.pop.order.search as JOS returns it:
{"jingdong_pop_order_search_responce": {"code": "0", "searchorderinfo_result": {"apiResult":
{"success": true}, "orderInfoList": [...], "orderTotal": n}}} with yuan-string amounts,
consigneeInfo and itemInfoList[{skuId, outerSkuId, jdPrice, itemTotal}].
"""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import datetime, timedelta, timezone
from urllib.parse import urlencode

import pytest

from adapters import jd
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
CREDS = jd.JdCredentials(app_key="jd-app", app_secret="jd-secret", access_token="jd-token")
NOW = datetime(2024, 6, 18, 10, 5, tzinfo=BJ)


def test_jos_sign_reproduces_jds_worked_example():
    # open.jd.com dev guide (listId=2643): this exact parameter set signs to the value below
    params = {
        "360buy_param_json": '{"end_date":null,"optional_fields":null,"order_state":"WAIT_SELLER_STOCK_OUT",'
        '"page":"1","page_size":"200","start_date":null}',
        "access_token": "yourtoken",
        "app_key": "yourappkey",
        "method": "jingdong.pop.order.search",
        "timestamp": "2021-05-07 09:20:39.683+0800",
        "v": "2.0",
    }
    assert jd.jos_sign(params, "yourappSecret") == "D70825340F4084360B9362B60DFD7930"
    assert jd.jos_sign(params | {"sign": "ignored"}, "yourappSecret") == "D70825340F4084360B9362B60DFD7930"


def order_json(**overrides) -> dict:
    order = {
        "orderId": "305512345678",
        "venderId": "10086",
        "orderType": "22",
        "orderState": "WAIT_SELLER_STOCK_OUT",
        "orderTotalPrice": "51.70",
        "orderSellerPrice": "46.70",
        "orderPayment": "41.70",
        "freightPrice": "5.00",
        "sellerDiscount": "10.00",
        "orderStartTime": "2024-06-18 09:58:00",
        "paymentConfirmTime": "2024-06-18 10:00:00",
        "modified": "2024-06-18 10:00:30",
        "consigneeInfo": {"fullname": "王**", "mobile": "138****1234", "telephone": "", "fullAddress": "广东省深圳市南山区粤海街道****",
                          "province": "广东", "provinceId": "19", "city": "深圳市", "cityId": "1607",
                          "county": "南山区", "countyId": "3155", "town": "粤海街道"},
        "itemInfoList": [
            {"skuId": "100012345678", "outerSkuId": "SKU-TEA-500", "skuName": "乌龙茶", "jdPrice": "12.90",
             "itemTotal": "3", "wareId": "10001"},
            {"skuId": "100012345679", "outerSkuId": "", "skuName": "茶杯", "jdPrice": "8.00", "itemTotal": "1"},
        ],
    }
    order.update(overrides)
    return order


def search_body(orders: list[dict], total: int | None = None) -> bytes:
    return json.dumps({"jingdong_pop_order_search_responce": {"code": "0", "searchorderinfo_result": {
        "apiResult": {"success": True, "chineseErrCode": "成功", "englishErrCode": "success", "numberCode": 10100000},
        "orderInfoList": orders, "orderTotal": len(orders) if total is None else total}}}, ensure_ascii=False).encode()


def test_paid_order_becomes_the_expected_normalized_order():
    page = jd.parse_search_response(search_body([order_json()]), sku_map={"100012345679": "SKU-CUP"})
    assert page.total == 1
    (result,) = page.results
    event = result.event
    assert event.kind is ChannelEventKind.UPSERT and event.status is ChannelStatus.PAID
    assert event.message_id == "305512345678@2024-06-18 10:00:30" and event.channel is Channel.JD
    assert event.raw == json.dumps(order_json(), ensure_ascii=False).encode()
    order = event.order
    expected = NormalizedOrder(
        channel=Channel.JD,
        external_id="305512345678",
        delivery_mode=DeliveryMode.SHIP,
        destination=Destination(lat=order.destination.lat, lng=order.destination.lng,
                                address="广东省深圳市南山区粤海街道****", approximate=True,
                                province="广东", city="深圳市", district="南山区"),
        lines=[
            OrderLine(sku="SKU-TEA-500", quantity=3, unit_price=1290, platform_line_id="100012345678",
                      platform_sku_id="100012345678"),
            OrderLine(sku="SKU-CUP", quantity=1, unit_price=800, platform_line_id="100012345679",
                      platform_sku_id="100012345679"),
        ],
        status=ChannelStatus.PAID,
        buyer=Buyer(name_masked="王**", phone_masked="138****1234"),
        total_fen=4170,
        freight_fen=500,
        discount_fen=1000,
        created_at=datetime(2024, 6, 18, 9, 58, tzinfo=BJ),
        paid_at=datetime(2024, 6, 18, 10, 0, tzinfo=BJ),
        updated_at=datetime(2024, 6, 18, 10, 0, 30, tzinfo=BJ),
    )
    assert order == expected
    # 南山区 centre from the gazetteer, GCJ-02
    assert 22.5 < order.destination.lat < 22.6 and 113.9 < order.destination.lng < 114.0


@pytest.mark.parametrize(("state", "kind", "status"), [
    ("TRADE_CANCELED", ChannelEventKind.CANCEL, ChannelStatus.CANCELLED),
    ("WAIT_GOODS_RECEIVE_CONFIRM", ChannelEventKind.STATUS, ChannelStatus.SHIPPED),
    ("FINISHED_L", ChannelEventKind.STATUS, ChannelStatus.COMPLETED),
    ("LOCKED", ChannelEventKind.IGNORE, None),
])
def test_state_routing(state, kind, status):
    (result,) = jd.parse_search_response(search_body([order_json(orderState=state)])).results
    assert result.event.kind is kind and result.event.status is status


def test_one_bad_order_does_not_sink_the_page():
    bad = order_json(orderId="305500000000")
    bad["itemInfoList"][0]["itemTotal"] = "0"
    worse = order_json(orderId="305500000001", orderPayment="41.7O")
    page = jd.parse_search_response(search_body([order_json(), bad, worse]))
    assert [r.event is not None for r in page.results] == [True, False, False]
    assert page.results[1].error.field == "orderInfoList[1].itemInfoList[0].itemTotal"
    assert page.results[1].error.message_id == "305500000000"
    assert page.results[2].error.field == "orderInfoList[2].orderPayment"


def test_unmapped_sku_is_kept_with_a_reason():
    (result,) = jd.parse_search_response(search_body([order_json()])).results
    line = result.event.order.lines[1]
    assert line.sku == "jd:100012345679" and "100012345679" in line.unmapped_reason


def test_error_envelopes():
    with pytest.raises(UpstreamError) as info:
        jd.parse_search_response(json.dumps({"error_response": {"code": "19", "zh_desc": "token过期",
                                                                "en_desc": "Invalid access_token"}}).encode())
    assert info.value.code == "19"
    failed = json.dumps({"jingdong_pop_order_search_responce": {"searchorderinfo_result": {
        "apiResult": {"success": False, "englishErrCode": "system busy"}}}}).encode()
    with pytest.raises(UpstreamError):
        jd.parse_search_response(failed)


def test_search_request_is_signed_and_asks_by_modified_time():
    request = jd.build_search_request(CREDS, start=NOW - timedelta(minutes=10), end=NOW, page=2, page_size=50,
                                      base_url="http://127.0.0.1:9/routerjson", now=NOW)
    form = request.form
    concat = "".join(k + form[k] for k in sorted(form) if k != "sign")
    assert form["sign"] == hashlib.md5(f"jd-secret{concat}jd-secret".encode()).hexdigest().upper()
    business = json.loads(form["360buy_param_json"])
    assert business["start_date"] == "2024-06-18 09:55:00" and business["end_date"] == "2024-06-18 10:05:00"
    assert business["dateType"] == "0" and business["page"] == "2" and "modified" in business["optional_fields"]
    assert form["timestamp"] == "2024-06-18 10:05:00.000+0800" and form["method"] == "jingdong.pop.order.search"
    assert form["access_token"] == "jd-token" and form["v"] == "2.0"


def test_order_get_response():
    body = json.dumps({"jingdong_pop_order_get_responce": {"code": "0", "orderDetailInfo": {
        "orderInfo": order_json(orderState="TRADE_CANCELED", modified="2024-06-18 11:00:00")}}}).encode()
    event = jd.parse_order_get_response(body)
    assert event.kind is ChannelEventKind.CANCEL and event.order.status is ChannelStatus.CANCELLED


# ------------------------------------------------------------------------------ relay


def relay_form(message: dict, *, secret: str = "jd-secret", when: datetime = NOW) -> dict[str, str]:
    form = {"app_key": "jd-app", "method": "jingdong.pop.order.notify", "timestamp": when.strftime("%Y-%m-%d %H:%M:%S"),
            "v": "2.0", "360buy_param_json": json.dumps(message)}
    concat = "".join(k + form[k] for k in sorted(form))
    form["sign"] = hashlib.md5(f"{secret}{concat}{secret}".encode()).hexdigest().upper()
    return form


def test_relay_is_jos_verified_and_thin():
    body = urlencode(relay_form({"orderId": 305512345678, "orderState": "WAIT_SELLER_STOCK_OUT",
                                 "modified": "2024-06-18 10:00:30"})).encode()
    event = jd.parse_relay(body, CREDS, now=NOW)
    assert event.kind is ChannelEventKind.UPSERT and event.external_id == "305512345678"
    assert event.message_id == "305512345678@2024-06-18 10:00:30" and event.order is None


def test_relay_refusals():
    message = {"orderId": "305512345678", "orderState": "TRADE_CANCELED"}
    with pytest.raises(SignatureError):
        jd.parse_relay(urlencode(relay_form(message, secret="nope")).encode(), CREDS, now=NOW)
    tampered = relay_form(message)
    tampered["360buy_param_json"] = tampered["360buy_param_json"].replace("678", "679")
    with pytest.raises(SignatureError):
        jd.parse_relay(urlencode(tampered).encode(), CREDS, now=NOW)
    with pytest.raises(StaleTimestamp):
        jd.parse_relay(urlencode(relay_form(message, when=NOW - timedelta(hours=1))).encode(), CREDS, now=NOW)
    with pytest.raises(PayloadError):
        jd.parse_relay(b"\xff\xfe", CREDS, now=NOW)
    bad_json = relay_form(message)
    bad_json["360buy_param_json"] = "{oops"
    concat = "".join(k + bad_json[k] for k in sorted(bad_json) if k != "sign")
    bad_json["sign"] = hashlib.md5(f"jd-secret{concat}jd-secret".encode()).hexdigest().upper()
    with pytest.raises(PayloadError) as info:
        jd.parse_relay(urlencode(bad_json).encode(), CREDS, now=NOW)
    assert info.value.field == "360buy_param_json"


def test_mutated_order_fields_are_named():
    for mutate, field in [
        (lambda o: o.update(orderState="NEW_STATE"), "orderInfoList[0].orderState"),
        (lambda o: o["itemInfoList"][0].update(jdPrice=12.9), "orderInfoList[0].itemInfoList[0].jdPrice"),
        (lambda o: o.update(itemInfoList=[]), "orderInfoList[0].itemInfoList"),
        (lambda o: o.update(modified="2024/06/18"), "orderInfoList[0].modified"),
    ]:
        order = copy.deepcopy(order_json())
        mutate(order)
        (result,) = jd.parse_search_response(search_body([order])).results
        assert isinstance(result.error, PayloadError) and result.error.field == field
