"""Fuzzing: mangled payloads never raise anything but the typed AdapterError subclasses.

Each parser is fed (a) arbitrary bytes, (b) arbitrary JSON, and (c) valid fixtures with one
field deleted or replaced by an arbitrary JSON value — correctly signed where a signature is
checked, so the parsing code itself (not only the signature check) is exercised.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))

import test_adapter_douyin as dy  # noqa: E402
import test_adapter_jd as jdt  # noqa: E402
import test_adapter_miniprogram as mpt  # noqa: E402
import test_adapter_tmall as tmt  # noqa: E402

from adapters import douyin, jd, miniprogram, tmall, tmc  # noqa: E402
from adapters.errors import AdapterError  # noqa: E402
from adapters.normalized import ChannelEvent, NormalizedOrder  # noqa: E402

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=24)
    | st.sampled_from(["", "0", "-1", "12.90", "1e9", "2024-06-18 10:00:00", "NaN", "９", "\x00"])
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _paths(value, prefix + (key,))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            out += _paths(value, prefix + (index,))
    return out


def _leaves(doc: Any, prefix: tuple = ()) -> list[tuple]:
    if isinstance(doc, dict) and doc:
        return [leaf for key, value in doc.items() for leaf in _leaves(value, prefix + (key,))]
    if isinstance(doc, list) and doc:
        return [leaf for index, value in enumerate(doc) for leaf in _leaves(value, prefix + (index,))]
    return [prefix] if prefix else []


def mangle(doc: Any, data: st.DataObject) -> Any:
    """Delete or replace one to three nodes of a JSON document, mostly leaves (field values),
    sometimes whole objects/lists, so deep fields are reached as often as envelopes."""
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, 3))):
        leaves = _leaves(doc)
        candidates = leaves if leaves and data.draw(st.integers(0, 4)) else _paths(doc)
        path = data.draw(st.sampled_from(candidates))
        replacement = data.draw(json_values)
        if not path:
            return replacement
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        if isinstance(parent, dict) and not data.draw(st.integers(0, 3)):
            del parent[path[-1]]
        else:
            parent[path[-1]] = replacement
    return doc


def to_bytes(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode()


def typed_only(call) -> Any:
    """Run the parser: success, or an AdapterError; anything else fails the test."""
    try:
        return call()
    except AdapterError as exc:
        assert exc.status in (400, 401, 502)
        return None


# ------------------------------------------------------------------------------ Douyin


@FUZZ
@given(st.data())
def test_douyin_push_fuzz(data):
    choice = data.draw(st.integers(0, 2))
    if choice == 0:
        body = data.draw(st.binary(max_size=200))
    elif choice == 1:
        body = to_bytes(data.draw(json_values))
    else:
        body = to_bytes(mangle([dy.PAID, dy.CANCELLED, dy.REFUNDED], data))
    items = typed_only(lambda: douyin.parse_push(body, dy.push_headers(body), dy.CREDS))
    for item in items or []:
        assert (item.event is None) != (item.error is None)
        assert item.error is None or isinstance(item.error, AdapterError)
        assert item.event is None or isinstance(item.event, ChannelEvent)


@FUZZ
@given(st.data())
def test_douyin_push_data_fuzz(data):
    # mangle inside the JSON text of `data`, the part most likely to be odd
    inner = mangle(json.loads(dy.PAID["data"]), data)
    body = to_bytes([{"tag": data.draw(st.sampled_from(["101", "106", "206", 100, "x"])), "msg_id": "m",
                      "data": json.dumps(inner) if data.draw(st.booleans()) else inner}])
    (item,) = douyin.parse_push(body, dy.push_headers(body), dy.CREDS)
    assert item.error is None or isinstance(item.error, AdapterError)


@FUZZ
@given(st.data())
def test_douyin_detail_fuzz(data):
    body = to_bytes(mangle(dy.detail_response(), data))
    order = typed_only(lambda: douyin.parse_order_detail_response(body, sku_map={"1730000000000002": "SKU"}))
    assert order is None or isinstance(order, NormalizedOrder)


# ------------------------------------------------------------------------------ Tmall


@FUZZ
@given(st.data())
def test_tmall_fullinfo_fuzz(data):
    body = to_bytes(mangle(tmt.trade_json(), data))
    order = typed_only(lambda: tmall.parse_fullinfo_response(body))
    assert order is None or isinstance(order, NormalizedOrder)


@FUZZ
@given(st.binary(max_size=300))
def test_tmc_frame_fuzz(raw):
    frame = typed_only(lambda: tmc.decode_frame(raw))
    if frame is not None and "topic" in frame.headers:
        typed_only(lambda: tmall.event_from_message(tmall.message_from_tmc_headers(frame.headers)))


@FUZZ
@given(st.data())
def test_tmc_message_fuzz(data):
    content = mangle({"tid": 1, "oid": 2, "status": "TRADE_CLOSED", "payment": "1.00", "refund_fee": "1.00",
                      "modified": "2024-06-18 10:00:00"}, data)
    headers = mangle({"id": 5, "topic": data.draw(st.sampled_from(list(tmall.TOPICS) + ["x"])),
                      "content": json.dumps(content)}, data)
    if not isinstance(headers, dict):
        headers = {"content": headers}
    typed_only(lambda: tmall.event_from_message(tmall.message_from_tmc_headers(headers)))


@FUZZ
@given(st.data())
def test_tmall_relay_fuzz(data):
    body = to_bytes(mangle(json.loads(tmt.RELAYED), data))
    typed_only(lambda: tmall.parse_relay(body, tmt.relay(body), tmt.CREDS, now=tmt.NOW))


# ------------------------------------------------------------------------------ JD


@FUZZ
@given(st.data())
def test_jd_search_fuzz(data):
    doc = json.loads(jdt.search_body([jdt.order_json(), jdt.order_json(orderId="2")]))
    body = to_bytes(mangle(doc, data))
    page = typed_only(lambda: jd.parse_search_response(body))
    for result in page.results if page else []:
        assert result.error is None or isinstance(result.error, AdapterError)


@FUZZ
@given(st.data())
def test_jd_relay_fuzz(data):
    message = mangle({"orderId": "305512345678", "orderState": "WAIT_SELLER_STOCK_OUT",
                      "modified": "2024-06-18 10:00:30"}, data)
    form = jdt.relay_form({}) | {"360buy_param_json": json.dumps(message)}
    concat = "".join(k + form[k] for k in sorted(form) if k != "sign")
    form["sign"] = hashlib.md5(f"jd-secret{concat}jd-secret".encode()).hexdigest().upper()
    from urllib.parse import urlencode

    typed_only(lambda: jd.parse_relay(urlencode(form).encode(), jdt.CREDS, now=jdt.NOW))
    typed_only(lambda: jd.parse_relay(data.draw(st.binary(max_size=100)), jdt.CREDS, now=jdt.NOW))


# ------------------------------------------------------------------------------ mini-program


@FUZZ
@given(st.data())
def test_miniprogram_push_fuzz(data):
    body = to_bytes(mangle(mpt.push_body(), data))
    typed_only(lambda: miniprogram.parse_order_push(body, mpt.signed(body), mpt.PUSH_SECRET, now=mpt.NOW))


@FUZZ
@given(st.data())
def test_wechatpay_fuzz(data):
    resource = mangle(mpt.TRANSACTION, data)
    note = json.loads(mpt.notification("TRANSACTION.SUCCESS", mpt.TRANSACTION))
    nonce = "fdasflkja484"
    note["resource"]["ciphertext"] = base64.b64encode(
        AESGCM(mpt.APIV3_KEY).encrypt(nonce.encode(), to_bytes(resource), b"transaction")
    ).decode()
    note["event_type"] = data.draw(st.sampled_from(["TRANSACTION.SUCCESS", "REFUND.SUCCESS", "OTHER"]))
    if data.draw(st.booleans()):
        note = mangle(note, data)
    body = to_bytes(note)
    stamp = str(int(mpt.NOW))
    signature = base64.b64encode(
        mpt.PRIVATE_KEY.sign(f"{stamp}\nn\n".encode() + body + b"\n", padding.PKCS1v15(), hashes.SHA256())
    ).decode()
    headers = {"Wechatpay-Timestamp": stamp, "Wechatpay-Nonce": "n", "Wechatpay-Signature": signature}
    typed_only(lambda: miniprogram.parse_wechatpay_notification(
        body, headers, public_key=mpt.PUBLIC_KEY, apiv3_key=mpt.APIV3_KEY, now=mpt.NOW))


# ------------------------------------------------------------------------------ every field, every odd value
# Random mangling reaches a given deep field only now and then; this sweep replaces (and
# deletes) every field of every fixture with each hostile value, deterministically.

HOSTILE = [None, "", "abc", "-1", "1e3", "12.905", "１２", -1, 0, 1.5, 2**70, -(2**70), True, [], {}, [1], {"a": 1}]


def _sweep(doc: Any, parse) -> int:
    checked = 0
    for path in _paths(doc):
        if not path:
            continue
        for value in HOSTILE + ["<delete>"]:
            mutated = copy.deepcopy(doc)
            parent = mutated
            for step in path[:-1]:
                parent = parent[step]
            if value == "<delete>":
                if not isinstance(parent, dict):
                    continue
                del parent[path[-1]]
            else:
                parent[path[-1]] = value
            typed_only(lambda: parse(mutated))
            checked += 1
    return checked


def test_sweep_douyin_detail():
    assert _sweep(dy.detail_response(), lambda d: douyin.parse_order_detail_response(to_bytes(d))) > 500


def test_sweep_douyin_push():
    def parse(messages):
        body = to_bytes(messages)
        for item in douyin.parse_push(body, dy.push_headers(body), dy.CREDS):
            assert item.error is None or isinstance(item.error, AdapterError)
    messages = [dy.PAID | {"data": json.loads(dy.PAID["data"])}, dy.CANCELLED, dy.REFUNDED | {"data": json.loads(dy.REFUNDED["data"])}]
    assert _sweep(messages, lambda m: typed_only(lambda: parse(m))) > 100


def test_sweep_tmall_fullinfo():
    assert _sweep(tmt.trade_json(), lambda d: tmall.parse_fullinfo_response(to_bytes(d))) > 500


def test_sweep_tmc_message():
    content = {"tid": 1, "oid": 2, "status": "TRADE_CLOSED", "payment": "1.00", "refund_fee": "1.00",
               "modified": "2024-06-18 10:00:00"}
    for topic in ("taobao_trade_TradeBuyerPay", "taobao_refund_RefundSuccess"):
        _sweep(content, lambda c: tmall.event_from_message(tmall.message_from_tmc_headers(
            {"id": 5, "topic": topic, "content": json.dumps(c)})))
    _sweep({"id": 5, "topic": "taobao_trade_TradeClose", "content": json.dumps(content), "pub_time": "x"},
           lambda h: tmall.event_from_message(tmall.message_from_tmc_headers(h)))


def test_sweep_jd_search():
    doc = json.loads(jdt.search_body([jdt.order_json()]))

    def parse(d):
        page = jd.parse_search_response(to_bytes(d))
        for result in page.results:
            assert result.error is None or isinstance(result.error, AdapterError)
    assert _sweep(doc, parse) > 500


def test_sweep_miniprogram_push():
    def parse(d):
        body = to_bytes(d)
        return miniprogram.parse_order_push(body, mpt.signed(body), mpt.PUSH_SECRET, now=mpt.NOW)
    assert _sweep(mpt.push_body(), parse) > 300


def test_sweep_wechatpay_resource():
    def parse(resource):
        note = json.loads(mpt.notification("TRANSACTION.SUCCESS", mpt.TRANSACTION))
        note["resource"]["ciphertext"] = base64.b64encode(
            AESGCM(mpt.APIV3_KEY).encrypt(b"fdasflkja484", to_bytes(resource), b"transaction")).decode()
        body = to_bytes(note)
        return miniprogram.parse_wechatpay_notification(body, mpt.wechat_headers(body), public_key=mpt.PUBLIC_KEY,
                                                        apiv3_key=mpt.APIV3_KEY, now=mpt.NOW)
    assert _sweep(mpt.TRANSACTION, parse) > 200
