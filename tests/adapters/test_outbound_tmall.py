"""Tmall/Taobao outbound: every required field present and signed; replies classified."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))

from outbound_helpers import FUZZ, NOW, md5_wrapped  # noqa: E402

from adapters.outbound import tmall  # noqa: E402
from adapters.outbound.carriers import Carrier  # noqa: E402
from adapters.outbound.common import (  # noqa: E402
    OutboundInputError,
    OutcomeKind,
    Parcel,
    ParcelLine,
    RetailStore,
    ShipState,
    StockLevel,
    outcome_after_check,
)
from adapters.tmall import TmallCredentials  # noqa: E402

CREDS = TmallCredentials(app_key="12345678", app_secret="helloworld", session="sess-1")
TID = "4000000000000000001"


def check_common(req, method: str) -> dict[str, str]:
    form = req.form
    assert req.method == "POST" and req.path == "/router/rest"
    assert req.url == "https://eco.taobao.com/router/rest"
    assert form["method"] == method
    assert form["app_key"] == "12345678" and form["session"] == "sess-1"
    assert form["timestamp"] == "2024-06-18 10:00:00"  # Beijing time, no millis
    assert form["v"] == "2.0" and form["format"] == "json" and form["sign_method"] == "md5"
    assert form["sign"] == md5_wrapped("helloworld", form)  # independent computation
    return form


def test_item_quantity_update_is_a_full_value():
    req = tmall.build_item_quantity_update(CREDS, num_iid="600000001", sku_id="5000001", quantity=7, now=NOW)
    form = check_common(req, "taobao.item.quantity.update")
    assert form["num_iid"] == "600000001" and form["sku_id"] == "5000001"
    assert form["quantity"] == "7" and form["type"] == "1"


def test_item_quantity_update_without_sku_and_zero():
    form = tmall.build_item_quantity_update(CREDS, num_iid="600000001", quantity=0, now=NOW).form
    assert "sku_id" not in form and form["quantity"] == "0"


def test_negative_quantity_is_refused():
    with pytest.raises(OutboundInputError):
        tmall.build_item_quantity_update(CREDS, num_iid="1", quantity=-1, now=NOW)


def test_naive_timestamp_is_refused():
    with pytest.raises(OutboundInputError):
        tmall.build_item_quantity_update(CREDS, num_iid="1", quantity=1, now=NOW.replace(tzinfo=None))


def test_skus_quantity_update_splits_at_twenty():
    levels = [StockLevel(platform_sku_id=str(5000000 + i), quantity=i) for i in range(45)]
    calls = tmall.build_skus_quantity_update(CREDS, num_iid="600000001", levels=levels, now=NOW)
    assert len(calls) == 3
    pairs = []
    for call in calls:
        form = check_common(call, "taobao.skus.quantity.update")
        assert form["type"] == "1" and form["num_iid"] == "600000001"
        chunk = form["skuid_quantities"].split(";")
        assert len(chunk) <= 20
        pairs += chunk
    assert pairs == [f"{5000000 + i}:{i}" for i in range(45)]


def test_skus_quantity_update_refuses_duplicates_and_empty():
    with pytest.raises(OutboundInputError):
        tmall.build_skus_quantity_update(CREDS, num_iid="1", levels=[], now=NOW)
    twice = [StockLevel(platform_sku_id="9", quantity=1), StockLevel(platform_sku_id="9", quantity=2)]
    with pytest.raises(OutboundInputError):
        tmall.build_skus_quantity_update(CREDS, num_iid="1", levels=twice, now=NOW)


def test_offline_send_carries_the_store_feature():
    req = tmall.build_offline_send(
        CREDS, tid=TID, carrier=Carrier.SF, out_sid="SF1234567890", now=NOW,
        store=RetailStore(store_id="12345", kind="STORE"),
    )
    form = check_common(req, "taobao.logistics.offline.send")
    assert form["tid"] == TID and form["out_sid"] == "SF1234567890" and form["company_code"] == "SF"
    assert form["feature"] == "retailStoreId=12345;retailStoreType=STORE"
    assert "is_split" not in form


def test_offline_send_split_and_platform_code_passthrough():
    form = tmall.build_offline_send(
        CREDS, tid=TID, carrier="ZJS", out_sid="Z1", sub_tids=["11", "12"], now=NOW,
        store=RetailStore(store_id="W9", kind="WAREHOUSE"),
    ).form
    assert form["company_code"] == "ZJS" and form["is_split"] == "1" and form["sub_tid"] == "11,12"
    assert form["feature"] == "retailStoreId=W9;retailStoreType=WAREHOUSE"


def test_offline_send_refuses_self_delivery_and_empty_tracking():
    with pytest.raises(OutboundInputError):
        tmall.build_offline_send(CREDS, tid=TID, carrier=Carrier.SELF, out_sid="x", now=NOW)
    with pytest.raises(OutboundInputError):
        tmall.build_offline_send(CREDS, tid=TID, carrier=Carrier.SF, out_sid=" ", now=NOW)
    with pytest.raises(OutboundInputError):
        RetailStore(store_id="1", kind="SHOP")


def test_ascp_offline_send_packages_per_sub_order():
    parcels = [
        Parcel(carrier=Carrier.ZTO, tracking_no="ZT1", lines=(ParcelLine(platform_line_id="11", quantity=2),)),
        Parcel(carrier=Carrier.SF, tracking_no="SF2",
               lines=(ParcelLine(platform_line_id="12", quantity=1, part=True),)),
    ]
    req = tmall.build_ascp_offline_send(CREDS, tid=TID, parcels=parcels, now=NOW,
                                        store=RetailStore(store_id="S1"))
    form = check_common(req, "alibaba.ascp.logistics.offline.send")
    assert form["tid"] == TID and form["consign_type"] == "1"
    assert form["feature"] == "retailStoreId=S1;retailStoreType=STORE"
    pkgs = json.loads(form["consign_pkgs"])
    assert pkgs == [
        {"company_code": "ZTO", "out_sid": "ZT1", "goods": [{"sub_tid": "11", "num": 2, "item_type": 0}]},
        {"company_code": "SF", "out_sid": "SF2", "goods": [{"sub_tid": "12", "num": 1, "item_type": 0}]},
    ]
    assert json.loads(form["consign_status"]) == [
        {"sub_tid": "11", "is_part_consign": False},
        {"sub_tid": "12", "is_part_consign": True},
    ]


def test_dummy_send_and_state_query():
    form = check_common(tmall.build_dummy_send(CREDS, tid=TID, store=RetailStore(store_id="7"), now=NOW),
                        "taobao.logistics.dummy.send")
    assert form["tid"] == TID and form["feature"] == "retailStoreId=7;retailStoreType=STORE"
    form = check_common(tmall.build_trade_state(CREDS, tid=TID, now=NOW), "taobao.trade.fullinfo.get")
    assert form["tid"] == TID and form["fields"] == "tid,status,orders"


def test_hmac_sign_method():
    import hashlib
    import hmac

    form = tmall.build_dummy_send(CREDS, tid=TID, now=NOW, sign_method="hmac").form
    concat = "".join(k + v for k, v in sorted(form.items()) if k != "sign" and v)
    assert form["sign"] == hmac.new(b"helloworld", concat.encode(), hashlib.md5).hexdigest().upper()


# ---------------------------------------------------------------- replies

RATE_LIMIT = (b'{"error_response":{"code":7,"msg":"App Call Limited","sub_code":'
              b'"accesscontrol.limited-by-app-api-access-count","sub_msg":"This ban will last for 2 more seconds"}}')
B04 = json.dumps({"error_response": {"code": 15, "msg": "Remote service error",
                                     "sub_code": "isv.logistics-offline-service-error:B04",
                                     "sub_msg": "订单状态不对该物流订单已经发货或者已关闭，不能重复发货"}},
                 ensure_ascii=False).encode()
B60 = json.dumps({"error_response": {"code": 15, "msg": "Remote service error",
                                     "sub_code": "isv.logistics-offline-service-error:B60",
                                     "sub_msg": "运单号不符合规则或已经被使用"}}, ensure_ascii=False).encode()
B150 = b'{"error_response":{"code":15,"msg":"Remote service error","sub_code":"isv.logistics-offline-service-error:B150"}}'
SESSION = b'{"error_response":{"code":27,"msg":"Invalid session","sub_code":"invalid-sessionkey"}}'


@pytest.mark.parametrize("parse", [tmall.parse_offline_send, tmall.parse_dummy_send, tmall.parse_ascp_offline_send,
                                   tmall.parse_item_quantity_update, tmall.parse_skus_quantity_update])
def test_rate_limit_wait_is_parsed(parse):
    outcome = parse(200, RATE_LIMIT)
    assert outcome.kind is OutcomeKind.RATE_LIMITED and outcome.retry_after == 2.0
    assert outcome.code == "accesscontrol.limited-by-app-api-access-count"
    assert parse(200, RATE_LIMIT.replace(b" 2 ", b" 27 ")).retry_after == 27.0


def test_shipment_replies():
    ok = b'{"logistics_offline_send_response":{"shipping":{"is_success":true}}}'
    assert tmall.parse_offline_send(200, ok).kind is OutcomeKind.ACCEPTED
    dummy = b'{"logistics_dummy_send_response":{"shipping":{"is_success":true}}}'
    assert tmall.parse_dummy_send(200, dummy).done
    ascp = b'{"alibaba_ascp_logistics_offline_send_response":{"result":{"success":true},"request_id":"x"}}'
    assert tmall.parse_ascp_offline_send(200, ascp).kind is OutcomeKind.ACCEPTED
    b04 = tmall.parse_offline_send(200, B04)
    assert b04.kind is OutcomeKind.CHECK_STATE and b04.code.endswith(":B04") and "重复发货" in b04.message
    rejected = tmall.parse_offline_send(200, B60)
    assert rejected.kind is OutcomeKind.REJECTED and rejected.code.endswith(":B60")
    assert tmall.parse_offline_send(200, B150).kind is OutcomeKind.RETRYABLE
    assert tmall.parse_offline_send(200, SESSION).kind is OutcomeKind.AUTH_FAILED
    assert tmall.parse_offline_send(502, b"<html>bad gateway</html>").kind is OutcomeKind.RETRYABLE


def test_quantity_replies():
    ok = b'{"item_quantity_update_response":{"item":{"num_iid":600000001,"num":7,"modified":"2024-06-18 10:00:00"}}}'
    assert tmall.parse_item_quantity_update(200, ok).kind is OutcomeKind.ACCEPTED
    ok = b'{"skus_quantity_update_response":{"item":{"num_iid":600000001,"modified":"2024-06-18 10:00:00"}}}'
    assert tmall.parse_skus_quantity_update(200, ok).kind is OutcomeKind.ACCEPTED
    # the wrong envelope is not a success
    assert tmall.parse_item_quantity_update(200, ok).kind is OutcomeKind.RETRYABLE
    bad = b'{"error_response":{"code":15,"msg":"Remote service error","sub_code":"isv.item-not-exist"}}'
    assert tmall.parse_item_quantity_update(200, bad).kind is OutcomeKind.REJECTED


def _trade(status: str, orders: list[dict]) -> bytes:
    return json.dumps({"trade_fullinfo_get_response": {"trade": {"tid": int(TID), "status": status,
                                                                 "orders": {"order": orders}}}}).encode()


def test_trade_state_after_b04():
    shipped = tmall.parse_trade_state(200, _trade("WAIT_BUYER_CONFIRM_GOODS", [{"oid": 11, "status": "WAIT_BUYER_CONFIRM_GOODS"}]))
    assert shipped.state is ShipState.SHIPPED and outcome_after_check(shipped).kind is OutcomeKind.ALREADY_SHIPPED
    closed = tmall.parse_trade_state(200, _trade("TRADE_CLOSED", [{"oid": 11, "status": "TRADE_CLOSED"}]))
    assert outcome_after_check(closed).kind is OutcomeKind.INTERCEPTED
    refunding = tmall.parse_trade_state(
        200, _trade("WAIT_SELLER_SEND_GOODS", [{"oid": 11, "status": "WAIT_SELLER_SEND_GOODS",
                                                "refund_status": "WAIT_SELLER_AGREE"}]))
    assert refunding.state is ShipState.REFUND_PENDING
    assert outcome_after_check(refunding).kind is OutcomeKind.INTERCEPTED
    part = tmall.parse_trade_state(200, _trade("SELLER_CONSIGNED_PART", [
        {"oid": 11, "status": "WAIT_BUYER_CONFIRM_GOODS"}, {"oid": 12, "status": "WAIT_SELLER_SEND_GOODS"}]))
    assert part.shipped_lines == {"11"}
    assert outcome_after_check(part, ["11"]).kind is OutcomeKind.ALREADY_SHIPPED
    assert outcome_after_check(part, ["12"]).kind is OutcomeKind.RETRYABLE
    assert tmall.parse_trade_state(200, RATE_LIMIT).outcome.kind is OutcomeKind.RATE_LIMITED


@FUZZ
@given(status=st.integers(min_value=0, max_value=599), body=st.binary(max_size=300))
def test_no_body_makes_a_parser_raise(status, body):
    for parse in (tmall.parse_offline_send, tmall.parse_ascp_offline_send, tmall.parse_dummy_send,
                  tmall.parse_item_quantity_update, tmall.parse_skus_quantity_update):
        assert parse(status, body).kind in OutcomeKind
    assert tmall.parse_trade_state(status, body).outcome.kind in OutcomeKind


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
    max_leaves=10,
)
keys = st.sampled_from(["error_response", "logistics_offline_send_response", "trade_fullinfo_get_response",
                        "item_quantity_update_response", "alibaba_ascp_logistics_offline_send_response"])


@FUZZ
@given(key=keys, value=json_values, status=st.sampled_from([200, 400, 500]))
def test_json_of_any_shape_never_raises(key, value, status):
    body = json.dumps({key: value}).encode()
    for parse in (tmall.parse_offline_send, tmall.parse_ascp_offline_send, tmall.parse_item_quantity_update):
        assert parse(status, body).kind in OutcomeKind
    assert tmall.parse_trade_state(status, body).outcome.kind in OutcomeKind


def test_garbage_is_retryable():
    assert tmall.parse_offline_send(200, b"\xff\x00garbage").kind is OutcomeKind.RETRYABLE
    assert tmall.parse_offline_send(200, b"[]").kind is OutcomeKind.RETRYABLE
