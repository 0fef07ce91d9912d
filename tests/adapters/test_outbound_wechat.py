"""WeChat mini-program outbound: upload_shipping_info fields and replies; get_order state."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))

from outbound_helpers import FUZZ, NOW  # noqa: E402

from adapters.outbound import wechat  # noqa: E402
from adapters.outbound.carriers import Carrier  # noqa: E402
from adapters.outbound.common import OutboundInputError, OutcomeKind, ShipState, outcome_after_check  # noqa: E402

KEY = wechat.WechatOrderKey(transaction_id="4200002990202601226107283773")
TOKEN = "ACCESS_TOKEN-1"


def body_of(req) -> dict:
    assert req.method == "POST" and req.params == {"access_token": TOKEN}
    assert req.headers["Content-Type"] == "application/json"
    return json.loads(req.body)


def test_express_upload_has_every_required_field():
    req = wechat.build_upload_shipping_info(
        TOKEN, order_key=KEY, logistics_type=wechat.LogisticsType.EXPRESS, payer_openid="o-payer", upload_time=NOW,
        shipping=[wechat.WechatShipment(item_desc="微信红包抱枕*1个", carrier=Carrier.ZTO, tracking_no="75611788998298")],
    )
    assert req.url == "https://api.weixin.qq.com/wxa/sec/order/upload_shipping_info"
    assert body_of(req) == {
        "order_key": {"order_number_type": 2, "transaction_id": "4200002990202601226107283773"},
        "logistics_type": 1,
        "delivery_mode": 1,
        "shipping_list": [{"item_desc": "微信红包抱枕*1个", "tracking_no": "75611788998298", "express_company": "ZTO"}],
        "upload_time": "2024-06-18T10:00:00.123+08:00",
        "payer": {"openid": "o-payer"},
    }


def test_same_city_and_pickup_need_only_item_desc():
    for kind, number in ((wechat.LogisticsType.SAME_CITY, 2), (wechat.LogisticsType.PICKUP, 4)):
        req = wechat.build_upload_shipping_info(
            TOKEN, order_key=wechat.WechatOrderKey(mchid="1620153222", out_trade_no="A1"), logistics_type=kind,
            payer_openid="o", upload_time=NOW, shipping=[wechat.WechatShipment(item_desc="鲜牛奶*2")],
        )
        body = body_of(req)
        assert body["logistics_type"] == number and body["shipping_list"] == [{"item_desc": "鲜牛奶*2"}]
        assert body["order_key"] == {"order_number_type": 1, "mchid": "1620153222", "out_trade_no": "A1"}


def test_split_delivery():
    shipping = [wechat.WechatShipment(item_desc=f"item {i}", carrier=Carrier.YTO, tracking_no=f"YT{i}") for i in range(3)]
    req = wechat.build_upload_shipping_info(TOKEN, order_key=KEY, logistics_type=wechat.LogisticsType.EXPRESS,
                                            payer_openid="o", upload_time=NOW, shipping=shipping, is_all_delivered=True)
    body = body_of(req)
    assert body["delivery_mode"] == 2 and body["is_all_delivered"] is True and len(body["shipping_list"]) == 3


@pytest.mark.parametrize("kwargs", [
    {"shipping": []},
    {"shipping": [wechat.WechatShipment(item_desc="x" * 121)]},
    {"shipping": [wechat.WechatShipment(item_desc="x", carrier=Carrier.ZTO)]},  # express without tracking
    {"shipping": [wechat.WechatShipment(item_desc="x", carrier=Carrier.SF, tracking_no="SF1")]},  # SF needs contact
    {"shipping": [wechat.WechatShipment(item_desc="x", carrier=Carrier.ZTO, tracking_no=str(i)) for i in range(16)],
     "is_all_delivered": True},
    {"shipping": [wechat.WechatShipment(item_desc="x", carrier=Carrier.ZTO, tracking_no=str(i)) for i in range(2)]},
])
def test_input_rules(kwargs):
    base = {"order_key": KEY, "logistics_type": wechat.LogisticsType.EXPRESS, "payer_openid": "o", "upload_time": NOW}
    with pytest.raises(OutboundInputError):
        wechat.build_upload_shipping_info(TOKEN, **(base | kwargs))


def test_sf_with_masked_contact():
    req = wechat.build_upload_shipping_info(
        TOKEN, order_key=KEY, logistics_type=wechat.LogisticsType.EXPRESS, payer_openid="o", upload_time=NOW,
        shipping=[wechat.WechatShipment(item_desc="x", carrier=Carrier.SF, tracking_no="SF1", receiver_contact="150****0494")])
    assert body_of(req)["shipping_list"][0]["contact"] == {"receiver_contact": "150****0494"}


def test_get_order():
    assert body_of(wechat.build_get_order(TOKEN, order_key=KEY)) == {"transaction_id": KEY.transaction_id}
    check = wechat.parse_get_order(200, b'{"errcode":0,"errmsg":"ok","order":{"order_state":2}}')
    assert check.state is ShipState.SHIPPED and outcome_after_check(check).kind is OutcomeKind.ALREADY_SHIPPED
    refunded = wechat.parse_get_order(200, b'{"errcode":0,"order":{"order_state":5}}')
    assert outcome_after_check(refunded).kind is OutcomeKind.INTERCEPTED


def test_replies():
    assert wechat.parse_upload_shipping_info(200, b'{"errcode":0,"errmsg":"ok"}').kind is OutcomeKind.ACCEPTED
    missing = json.dumps({"errcode": 10060001, "errmsg": "支付单不存在 rid: 6639eae2-2d7c4699-190e24dd"},
                         ensure_ascii=False).encode()
    out = wechat.parse_upload_shipping_info(200, missing)
    assert out.kind is OutcomeKind.RETRYABLE and out.retry_after == 60 and out.code == "10060001"
    assert wechat.parse_upload_shipping_info(200, b'{"errcode":10060003,"errmsg":"x"}').kind is OutcomeKind.ALREADY_SHIPPED
    assert wechat.parse_upload_shipping_info(200, b'{"errcode":10060004,"errmsg":"x"}').kind is OutcomeKind.CHECK_STATE
    assert wechat.parse_upload_shipping_info(200, b'{"errcode":-1,"errmsg":"system error"}').kind is OutcomeKind.RETRYABLE
    assert wechat.parse_upload_shipping_info(200, b'{"errcode":42001,"errmsg":"expired"}').kind is OutcomeKind.AUTH_FAILED
    limited = wechat.parse_upload_shipping_info(200, b'{"errcode":45011,"errmsg":"minute quota"}')
    assert limited.kind is OutcomeKind.RATE_LIMITED and limited.retry_after == 60
    assert wechat.parse_upload_shipping_info(200, b'{"errcode":10060005,"errmsg":"x"}').kind is OutcomeKind.REJECTED
    assert wechat.parse_upload_shipping_info(500, b"").kind is OutcomeKind.RETRYABLE


@FUZZ
@given(status=st.integers(min_value=0, max_value=599), body=st.binary(max_size=300))
def test_no_body_makes_a_parser_raise(status, body):
    assert wechat.parse_upload_shipping_info(status, body).kind in OutcomeKind
    assert wechat.parse_get_order(status, body).outcome.kind in OutcomeKind


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
    max_leaves=10,
)


@FUZZ
@given(errcode=json_values, order=json_values)
def test_json_of_any_shape_never_raises(errcode, order):
    body = json.dumps({"errcode": errcode, "errmsg": order, "order": order}).encode()
    assert wechat.parse_upload_shipping_info(200, body).kind in OutcomeKind
    assert wechat.parse_get_order(200, body).outcome.kind in OutcomeKind


def test_garbage_is_retryable():
    assert wechat.parse_upload_shipping_info(200, b"\x00\x01").kind is OutcomeKind.RETRYABLE
    assert wechat.parse_upload_shipping_info(200, b'{"errmsg":"ok"}').kind is OutcomeKind.RETRYABLE


def test_an_errcode_of_unicode_digits_is_not_a_number():
    # "²".isdigit() is true but int("²") raises: such a reply is unreadable, not a crash
    body = json.dumps({"errcode": "²", "errmsg": "x"}).encode()
    assert wechat.parse_upload_shipping_info(200, body).kind is OutcomeKind.RETRYABLE
