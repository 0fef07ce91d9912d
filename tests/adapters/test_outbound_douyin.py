"""Douyin outbound: stock and shipment fields, API signature (outbound.md §3.1 vector), replies."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))

from outbound_helpers import FUZZ, NOW, douyin_sign  # noqa: E402

from adapters.douyin import DouyinCredentials, api_sign  # noqa: E402
from adapters.outbound import douyin  # noqa: E402
from adapters.outbound.carriers import Carrier  # noqa: E402
from adapters.outbound.common import (  # noqa: E402
    OutboundInputError,
    OutcomeKind,
    Parcel,
    ParcelLine,
    StockLevel,
    compact_json,
)

CREDS = DouyinCredentials(app_key="7000000000000000001", app_secret="test-secret-0001", access_token="tok-9")
ORDER = "6920000000000000001"


def test_outbound_md_self_computed_vector():
    """outbound.md §3.1: the param_json text and sign for a sku.syncStock call."""
    business = {"idempotent_id": "oms-adj-000001", "incremental": True, "product_id": 3539925204033339668,
                "sku_id": 1737398770243598, "stock_num": -5}
    param_json = compact_json(business)
    assert param_json == ('{"idempotent_id":"oms-adj-000001","incremental":true,"product_id":3539925204033339668,'
                          '"sku_id":1737398770243598,"stock_num":-5}')
    expected = "f1d13e43604486c261e2446d4cb5846c5328cc47a901876a0a94091a688201d6"
    assert douyin_sign("7000000000000000001", "test-secret-0001", "sku.syncStock", param_json, "1718000000") == expected
    assert api_sign("7000000000000000001", "test-secret-0001", "sku.syncStock", param_json, "1718000000") == expected


def check_common(req, method: str) -> dict:
    assert req.method == "POST"
    assert req.url == "https://openapi-fxg.jinritemai.com/" + method.replace(".", "/")
    q = req.params
    assert q["app_key"] == CREDS.app_key and q["method"] == method and q["v"] == "2"
    assert q["access_token"] == "tok-9" and q["sign_method"] == "hmac-sha256"
    assert q["timestamp"] == str(int(NOW.timestamp()))
    param_json = req.body.decode()
    assert q["sign"] == douyin_sign(CREDS.app_key, CREDS.app_secret, method, param_json, q["timestamp"])
    business = json.loads(param_json)
    assert compact_json(business) == param_json  # keys sorted, compact: the signed text is the sent text
    return business


def test_sync_stock_full_value_with_idempotent_id_and_store():
    req = douyin.build_sync_stock(CREDS, sku_id="1737398770243598", quantity=12, idempotent_id="oms-stk-7",
                                  product_id="3539925204033339668", store_id="9001", now=NOW)
    assert check_common(req, "sku.syncStock") == {
        "sku_id": 1737398770243598, "stock_num": 12, "incremental": False, "idempotent_id": "oms-stk-7",
        "product_id": 3539925204033339668, "store_id": 9001,
    }


def test_sync_stock_large_ids_stay_exact():
    req = douyin.build_sync_stock(CREDS, sku_id="9007199254740993", quantity=1, idempotent_id="i", now=NOW)
    assert b'"sku_id":9007199254740993' in req.body


def test_sync_stock_batch():
    levels = [StockLevel(platform_sku_id="1001", quantity=3), StockLevel(platform_sku_id="1002", quantity=0)]
    req = douyin.build_sync_stock_batch(CREDS, product_id="3539925204033339668", levels=levels,
                                        idempotent_id="oms-b-1", store_id="9001", now=NOW)
    assert check_common(req, "sku.syncStockBatch") == {
        "product_id": 3539925204033339668, "incremental": False, "idempotent_id": "oms-b-1", "store_id": 9001,
        "sku_sync_list": [{"sku_id": 1001, "sku_type": 0, "stock_num": 3}, {"sku_id": 1002, "sku_type": 0, "stock_num": 0}],
    }
    with pytest.raises(OutboundInputError):
        douyin.build_sync_stock_batch(CREDS, product_id="1", levels=[], idempotent_id="x", now=NOW)


def test_logistics_add_whole_order():
    req = douyin.build_logistics_add(CREDS, order_id=ORDER, carrier=Carrier.SF, tracking_no="SF1", store_id="9001", now=NOW)
    business = check_common(req, "order.logisticsAdd")
    assert business == {"order_id": ORDER, "company_code": "shunfeng", "logistics_code": "SF1", "store_id": 9001}
    assert "is_reject_refund" not in business and "is_refund_reject" not in business  # never override a refund


def test_logistics_add_multi_pack():
    parcels = [
        Parcel(carrier=Carrier.SF, tracking_no="SF1", lines=(ParcelLine(platform_line_id="6920000000000000002", quantity=1),)),
        Parcel(carrier="qita", tracking_no="Q2", lines=(ParcelLine(platform_line_id="6920000000000000003", quantity=2),)),
    ]
    req = douyin.build_logistics_add_multi_pack(CREDS, order_id=ORDER, parcels=parcels, request_id="oms-ship-1", now=NOW)
    assert check_common(req, "order.logisticsAddMultiPack") == {
        "order_id": ORDER, "request_id": "oms-ship-1",
        "pack_list": [
            {"shipped_order_info": [{"shipped_order_id": "6920000000000000002", "shipped_num": 1}],
             "logistics_code": "SF1", "company_code": "shunfeng"},
            {"shipped_order_info": [{"shipped_order_id": "6920000000000000003", "shipped_num": 2}],
             "logistics_code": "Q2", "company_code": "qita"},
        ],
    }
    with pytest.raises(OutboundInputError):
        douyin.build_logistics_add_multi_pack(CREDS, order_id=ORDER, parcels=parcels, request_id="", now=NOW)


def test_self_delivery_has_no_douyin_code():
    with pytest.raises(OutboundInputError):
        douyin.build_logistics_add(CREDS, order_id=ORDER, carrier=Carrier.SELF, tracking_no="x", now=NOW)


# ---------------------------------------------------------------- replies


def reply(code: int, sub_code: str = "", sub_msg: str = "", data: object = None) -> bytes:
    doc = {"code": code, "msg": "success" if code == 10000 else "业务处理失败", "sub_code": sub_code, "sub_msg": sub_msg,
           "log_id": "202406181000000001", "data": data if data is not None else {}}
    return json.dumps(doc, ensure_ascii=False).encode()


def test_success_and_pack_ids():
    assert douyin.parse_sync_stock(200, reply(10000)).kind is OutcomeKind.ACCEPTED
    multi = douyin.parse_logistics_add_multi_pack(200, reply(10000, data={"pack_list": [{"pack_id": "P1"}, {"pack_id": "P2"}]}))
    assert multi.kind is OutcomeKind.ACCEPTED and multi.refs == ("P1", "P2")
    assert douyin.parse_logistics_add(200, b'{"err_no":0,"message":"success","data":{}}').kind is OutcomeKind.ACCEPTED


def test_refund_pending_is_intercepted():
    out = douyin.parse_logistics_add(200, reply(50002, "isv.business-failed:60040", "发货订单中有退款申请需要处理，请先处理。"))
    assert out.kind is OutcomeKind.INTERCEPTED and out.code == "isv.business-failed:60040"
    assert douyin.parse_logistics_add(200, reply(50002, "isv.business-failed:60120", "订单正在售后中")).kind is OutcomeKind.INTERCEPTED
    assert douyin.parse_logistics_add(200, reply(50002, "isv.business-failed:60021", "订单已取消，禁止发货。")).kind is OutcomeKind.INTERCEPTED


def test_already_shipped():
    out = douyin.parse_logistics_add(200, reply(50002, "isv.business-failed:60110", "订单已发货，不允许再次执行发货。"))
    assert out.kind is OutcomeKind.ALREADY_SHIPPED and out.done
    multi = douyin.parse_logistics_add_multi_pack(200, reply(50002, "isv.business-failed:70023", "70023:已发货，请检查订单状态"))
    assert multi.kind is OutcomeKind.ALREADY_SHIPPED
    single = douyin.parse_logistics_add(200, reply(50002, "isv.business-failed:70023", "70023:没有能发货的订单，请修改后重试"))
    assert single.kind is OutcomeKind.CHECK_STATE


def test_stock_errors():
    dup = douyin.parse_sync_stock(200, reply(40004, "isv.parameter-invalid:40010", "[idempotent_id]重复，操作已执行"))
    assert dup.kind is OutcomeKind.ACCEPTED
    assert douyin.parse_sync_stock_batch(200, reply(40004, "isv.parameter-invalid:2010021", "更新库存数失败: 幂等ID重复")).done
    assert douyin.parse_sync_stock(200, reply(50002, "isv.business-failed:2010401", "2010401:系统繁忙，请稍后再试")).kind is OutcomeKind.RETRYABLE
    assert douyin.parse_sync_stock(200, reply(20000, "isp.service-error:2010002", "操作超时，请重试")).kind is OutcomeKind.RETRYABLE
    gone = douyin.parse_sync_stock(200, reply(40004, "isv.parameter-invalid:5", "sku_id: 21062210000363, 找不到对应的sku"))
    assert gone.kind is OutcomeKind.REJECTED and "找不到" in gone.message


def test_transport_and_rate_limit():
    assert douyin.parse_sync_stock(503, b"").kind is OutcomeKind.RETRYABLE
    assert douyin.parse_sync_stock(429, b"").kind is OutcomeKind.RATE_LIMITED
    assert douyin.parse_sync_stock(200, reply(50002, "isv.business-failed:1", "请求过于频繁")).kind is OutcomeKind.RATE_LIMITED
    assert douyin.parse_logistics_add(200, reply(40003, "isv.access-token-expired", "access_token已过期")).kind is OutcomeKind.AUTH_FAILED


@FUZZ
@given(status=st.integers(min_value=0, max_value=599), body=st.binary(max_size=300))
def test_no_body_makes_a_parser_raise(status, body):
    for parse in (douyin.parse_sync_stock, douyin.parse_sync_stock_batch, douyin.parse_logistics_add,
                  douyin.parse_logistics_add_multi_pack):
        assert parse(status, body).kind in OutcomeKind


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
    max_leaves=10,
)


@FUZZ
@given(code=json_values, sub_code=json_values, data=json_values, status=st.sampled_from([200, 401, 500]))
def test_json_of_any_shape_never_raises(code, sub_code, data, status):
    body = json.dumps({"code": code, "sub_code": sub_code, "msg": sub_code, "data": data}).encode()
    for parse in (douyin.parse_sync_stock, douyin.parse_logistics_add_multi_pack):
        assert parse(status, body).kind in OutcomeKind


def test_garbage_is_retryable():
    assert douyin.parse_logistics_add(200, b"<html>").kind is OutcomeKind.RETRYABLE
    assert douyin.parse_logistics_add(200, b"{}").kind is OutcomeKind.RETRYABLE
