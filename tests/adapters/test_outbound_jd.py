"""JD outbound: stock set and shipment fields, JOS signature, replies classified."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))

from outbound_helpers import FUZZ, NOW, md5_wrapped  # noqa: E402

from adapters.jd import JdCredentials, jos_sign  # noqa: E402
from adapters.outbound import jd  # noqa: E402
from adapters.outbound.carriers import Carrier  # noqa: E402
from adapters.outbound.common import OutboundInputError, OutcomeKind, ShipState, StockLevel, outcome_after_check  # noqa: E402

CREDS = JdCredentials(app_key="yourappkey", app_secret="yourappSecret", access_token="yourtoken")
ORDER = "230000000001"


def test_official_jos_vector_still_holds():
    """The helper these builders reuse reproduces JD's own worked example (channels.md §3.2)."""
    params = {
        "360buy_param_json": '{"end_date":null,"optional_fields":null,"order_state":"WAIT_SELLER_STOCK_OUT",'
                             '"page":"1","page_size":"200","start_date":null}',
        "access_token": "yourtoken", "app_key": "yourappkey", "method": "jingdong.pop.order.search",
        "timestamp": "2021-05-07 09:20:39.683+0800", "v": "2.0",
    }
    assert jos_sign(params, "yourappSecret") == "D70825340F4084360B9362B60DFD7930"


def check_common(req, method: str) -> dict:
    form = req.form
    assert req.method == "POST" and req.url == "https://api.jd.com/routerjson"
    assert form["method"] == method and form["app_key"] == "yourappkey" and form["access_token"] == "yourtoken"
    assert form["v"] == "2.0" and form["timestamp"] == "2024-06-18 10:00:00.123+0800"
    assert form["sign"] == md5_wrapped("yourappSecret", form)
    return json.loads(form["360buy_param_json"])


def test_stock_set_full_values():
    levels = [StockLevel(platform_sku_id="100012345678", quantity=5), StockLevel(platform_sku_id="100012345679", quantity=0)]
    req = jd.build_stock_set(CREDS, levels=levels, stock_ref="oms-stk-1", store_id="88", now=NOW)
    business = check_common(req, "jingdong.ware.stock.sku.set")
    assert business == {"req": {"stockRfId": "oms-stk-1", "skuStocks": [
        {"skuId": 100012345678, "stockNum": 5, "storeId": 88},
        {"skuId": 100012345679, "stockNum": 0, "storeId": 88},
    ]}}
    assert "incrStockNum" not in req.form["360buy_param_json"]
    with_model = jd.build_stock_set(CREDS, levels=levels[:1], stock_ref="r", update_model="M", now=NOW)
    assert check_common(with_model, "jingdong.ware.stock.sku.set")["req"]["updateModel"] == "M"


def test_stock_set_input_errors():
    with pytest.raises(OutboundInputError):
        jd.build_stock_set(CREDS, levels=[], stock_ref="r", now=NOW)
    with pytest.raises(OutboundInputError):
        jd.build_stock_set(CREDS, levels=[StockLevel(platform_sku_id="1", quantity=1)], stock_ref="", now=NOW)


def test_shipment_fields():
    req = jd.build_shipment(CREDS, order_id=ORDER, waybills=[jd.Waybill(carrier=Carrier.SF, tracking_no="SF100")], now=NOW)
    assert check_common(req, "jingdong.pop.order.shipment") == {"orderId": ORDER, "logiCoprId": "467", "logiNo": "SF100"}


def test_shipment_several_carriers_and_numbers():
    bills = [jd.Waybill(carrier=Carrier.ZTO, tracking_no="1200458628372"), jd.Waybill(carrier="2100", tracking_no="468778814888"),
             jd.Waybill(carrier=Carrier.ZTO, tracking_no="111232")]
    business = check_common(jd.build_shipment(CREDS, order_id=ORDER, waybills=bills, now=NOW), "jingdong.pop.order.shipment")
    assert business["logiCoprId"] == "1499|2100"
    assert business["logiNo"] == "1200458628372,111232|468778814888"


def test_self_delivery_is_1274_without_tracking():
    business = check_common(jd.build_self_delivery(CREDS, order_id=ORDER, now=NOW), "jingdong.pop.order.shipment")
    assert business == {"orderId": ORDER, "logiCoprId": "1274", "logiNo": ""}
    with pytest.raises(OutboundInputError):
        jd.build_shipment(CREDS, order_id=ORDER, waybills=[jd.Waybill(carrier=Carrier.SF)], now=NOW)
    with pytest.raises(OutboundInputError):
        jd.build_shipment(CREDS, order_id=ORDER, waybills=[jd.Waybill(carrier=Carrier.SF, tracking_no="a|b")], now=NOW)


def test_order_state_query():
    business = check_common(jd.build_order_state(CREDS, order_id=ORDER, now=NOW), "jingdong.pop.order.get")
    assert business == {"order_id": ORDER, "optional_fields": "orderId,orderState"}


# ---------------------------------------------------------------- replies

LIMITED = json.dumps({"error_response": {"code": "2", "zh_desc": "请隔日再调用", "en_desc": "App Call Limited"}}).encode()


def test_gateway_errors():
    limited = jd.parse_shipment(200, LIMITED)
    assert limited.kind is OutcomeKind.RATE_LIMITED and limited.retry_after == jd.RATE_LIMIT_WAIT_SECONDS
    stale = b'{"error_response":{"code":"8","zh_desc":"","en_desc":"Invalid Timestamp"}}'
    assert jd.parse_stock_set(200, stale).kind is OutcomeKind.RETRYABLE
    token = b'{"error_response":{"code":"19","en_desc":"Invalid access_token"}}'
    assert jd.parse_stock_set(200, token).kind is OutcomeKind.AUTH_FAILED
    other = b'{"error_response":{"code":"61","en_desc":"Invalid arguments"}}'
    assert jd.parse_stock_set(200, other).kind is OutcomeKind.REJECTED


def _stock(results, success=True) -> bytes:
    return json.dumps({"jingdong_ware_stock_sku_set_responce": {"code": "0", "returnType": {
        "success": success, "obj": {"updateStockResult": results}}}}).encode()


def test_stock_set_per_sku_results():
    ok = _stock([{"data": "11", "success": True, "storeId": 0}, {"data": "12", "success": True, "storeId": 0}])
    assert jd.parse_stock_set(200, ok).kind is OutcomeKind.ACCEPTED
    partial = jd.parse_stock_set(200, _stock([{"data": "11", "success": True}, {"data": "12", "success": False, "message": "x"}]))
    assert partial.kind is OutcomeKind.PARTIAL and partial.failed == ("12",)
    none = jd.parse_stock_set(200, _stock([{"data": "11", "success": False}], success=False))
    assert none.kind is OutcomeKind.REJECTED and none.failed == ("11",)


def _ship(result) -> bytes:
    return json.dumps({"jingdong_pop_order_shipment_responce": {"code": "0", "sopjosshipment_result": result}},
                      ensure_ascii=False).encode()


def test_shipment_replies():
    assert jd.parse_shipment(200, _ship({"success": True})).kind is OutcomeKind.ACCEPTED
    retry = jd.parse_shipment(200, _ship({"success": False, "errorCode": "999999", "chineseErrCode": "系统异常"}))
    assert retry.kind is OutcomeKind.RETRYABLE
    again = jd.parse_shipment(200, _ship({"success": False, "errorCode": "10400", "chineseErrCode": "订单已出库"}))
    assert again.kind is OutcomeKind.CHECK_STATE and again.message == "订单已出库"
    bad = jd.parse_shipment(200, _ship({"success": False, "errorCode": "1", "chineseErrCode": "运单号不正确"}))
    assert bad.kind is OutcomeKind.REJECTED and bad.code == "1"


def _state(state: str) -> bytes:
    return json.dumps({"jingdong_pop_order_get_responce": {"code": "0", "orderDetailInfo": {
        "orderInfo": {"orderId": ORDER, "orderState": state}}}}).encode()


@pytest.mark.parametrize("state, ship_state, after", [
    ("WAIT_SELLER_STOCK_OUT", ShipState.OPEN, OutcomeKind.RETRYABLE),
    ("WAIT_GOODS_RECEIVE_CONFIRM", ShipState.SHIPPED, OutcomeKind.ALREADY_SHIPPED),
    ("FINISHED_L", ShipState.SHIPPED, OutcomeKind.ALREADY_SHIPPED),
    ("TRADE_CANCELED", ShipState.CLOSED, OutcomeKind.INTERCEPTED),
    ("LOCKED", ShipState.REFUND_PENDING, OutcomeKind.INTERCEPTED),
])
def test_order_state(state, ship_state, after):
    check = jd.parse_order_state(200, _state(state))
    assert check.state is ship_state and check.platform_status == state
    assert outcome_after_check(check).kind is after


@FUZZ
@given(status=st.integers(min_value=0, max_value=599), body=st.binary(max_size=300))
def test_no_body_makes_a_parser_raise(status, body):
    assert jd.parse_stock_set(status, body).kind in OutcomeKind
    assert jd.parse_shipment(status, body).kind in OutcomeKind
    assert jd.parse_order_state(status, body).outcome.kind in OutcomeKind


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
    max_leaves=10,
)


@FUZZ
@given(key=st.sampled_from(["error_response", "jingdong_ware_stock_sku_set_responce",
                            "jingdong_pop_order_shipment_responce", "jingdong_pop_order_get_responce"]),
       value=json_values, inner=json_values)
def test_json_of_any_shape_never_raises(key, value, inner):
    for doc in ({key: value}, {key: {"returnType": inner, "sopjosshipment_result": inner, "orderDetailInfo": inner}}):
        body = json.dumps(doc).encode()
        assert jd.parse_stock_set(200, body).kind in OutcomeKind
        assert jd.parse_shipment(200, body).kind in OutcomeKind
        assert jd.parse_order_state(200, body).outcome.kind in OutcomeKind


def test_garbage_is_retryable():
    assert jd.parse_shipment(200, b"not json").kind is OutcomeKind.RETRYABLE
    assert jd.parse_stock_set(200, b'{"jingdong_ware_stock_sku_set_responce":{}}').kind is OutcomeKind.RETRYABLE
