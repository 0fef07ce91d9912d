"""The order's pure decisions (oms/orders/decide.py), on plain values: no PostgreSQL, no Redis."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from oms.errors import IllegalTransition
from oms.orders.decide import (
    ChannelAction,
    UnknownOrderNews,
    channel_update,
    check_lines,
    lines_after_plan,
    new_order_outcome,
    news_for_unknown_order,
    order_status_from,
    status_path,
    too_late_to_cancel,
    unpaid_outcome,
)
from oms.orders.model import ChannelStatus, OrderStatus
from oms.orders.rows import Reserved
from routing import Allocation, Plan, RouteLine, Strategy, Unserved

T0 = datetime(2024, 11, 11, tzinfo=timezone.utc)
C = ChannelStatus


def _plan(unserved=(), reason="no node has it") -> Plan:
    return Plan((), tuple(unserved), Strategy.SINGLE, reason, 0.0)


def _reserved(node: str, *lines: tuple[str, int]) -> Reserved:
    return Reserved(f"f-{node}", Allocation(node, tuple(RouteLine(s, q) for s, q in lines), 100.0))


# ---- a new order -----------------------------------------------------------------------------------
def test_a_line_with_an_unknown_sku_is_backordered_and_says_which():
    status, reason = check_lines(["pen", "ghost", "ink"], {"ghost"})
    assert status == ["open", "backordered", "open"]
    assert reason == [None, "unknown SKU 'ghost'", None]


def test_lines_the_reservations_cover_stay_open_and_the_rest_wait_with_routings_reason():
    lines = [RouteLine("pen", 2), RouteLine("ink", 1), RouteLine("cap", 3)]
    plan = _plan([Unserved("ink", 1, "ink is out everywhere"), Unserved("cap", 1, "only 2 caps in range")])
    status, reason = lines_after_plan(lines, ["open"] * 3, [None] * 3,
                                      [_reserved("a", ("pen", 2)), _reserved("b", ("cap", 2))], plan)
    assert status == ["open", "backordered", "backordered"]  # a line served in part waits for the rest
    assert reason == [None, "ink is out everywhere", "1 of 3 waiting: only 2 caps in range"]


def test_a_line_already_backordered_is_left_as_it_is():
    status, reason = lines_after_plan([RouteLine("ghost", 1)], ["backordered"], ["unknown SKU 'ghost'"], [], _plan())
    assert (status, reason) == (["backordered"], ["unknown SKU 'ghost'"])


def test_a_paid_order_is_allocated_partially_allocated_or_backordered():
    assert new_order_outcome(["open", "open"], [None, None], True, "single node") == (OrderStatus.ALLOCATED, None)
    status, reason = new_order_outcome(["open", "backordered"], [None, "ink is out"], True, "split")
    assert status is OrderStatus.PARTIALLY_ALLOCATED and reason == "partly backordered: ink is out"
    assert new_order_outcome(["backordered"], ["ink is out"], False, "no node has ink") == (
        OrderStatus.BACKORDERED, "no node has ink")


def test_an_order_first_seen_unpaid_cancelled_or_shipped_reserves_nothing():
    assert unpaid_outcome(C.UNPAID, "jd") == (OrderStatus.CREATED, None)
    assert unpaid_outcome(C.CANCELLED, "jd") == (OrderStatus.CANCELLED, None)
    status, reason = unpaid_outcome(C.SHIPPED, "tmall")
    assert status is OrderStatus.SHIPPED and "before the OMS saw it" in reason


# ---- what a channel status means for our order -------------------------------------------------------
def test_an_older_or_equal_channel_status_changes_nothing():
    assert channel_update(C.UNPAID, None, C.PAID, None, "allocated") is ChannelAction.IGNORE
    assert channel_update(C.PAID, None, C.PAID, None, "allocated") is ChannelAction.IGNORE


def test_a_newer_status_dated_before_what_we_hold_changes_nothing():
    assert channel_update(C.PAID, T0, C.UNPAID, T0 + timedelta(seconds=1), "created") is ChannelAction.IGNORE
    assert channel_update(C.PAID, T0 + timedelta(seconds=1), C.UNPAID, T0, "created") is ChannelAction.ALLOCATE


def test_paid_allocates_a_created_order_cancelled_cancels_and_others_are_recorded():
    assert channel_update(C.PAID, None, C.UNPAID, None, "created") is ChannelAction.ALLOCATE
    assert channel_update(C.PAID, None, C.UNPAID, None, "cancelled") is ChannelAction.RECORD
    assert channel_update(C.CANCELLED, None, C.PAID, None, "allocated") is ChannelAction.CANCEL
    assert channel_update(C.SHIPPED, None, C.PAID, None, "picked") is ChannelAction.RECORD


def test_news_about_an_order_we_do_not_have():
    assert news_for_unknown_order(C.PAID, is_payment=True, carries_order=False) is UnknownOrderNews.RETRY
    assert news_for_unknown_order(C.PAID, is_payment=False, carries_order=True) is UnknownOrderNews.CREATE
    assert news_for_unknown_order(C.SHIPPED, is_payment=False, carries_order=True) is UnknownOrderNews.NOTE
    assert news_for_unknown_order(C.UNPAID, is_payment=False, carries_order=False) is UnknownOrderNews.NOTE


def test_a_cancel_after_hand_over_is_too_late():
    assert too_late_to_cancel("shipped") and too_late_to_cancel(OrderStatus.COLLECTED)
    assert not too_late_to_cancel("picked") and not too_late_to_cancel(None)


# ---- the order follows its fulfilments -----------------------------------------------------------------
@pytest.mark.parametrize("mode, fulfilments, expected", [
    ("delivery", [("allocated", "serve")], "allocated"),
    ("delivery", [("picked", "serve"), ("allocated", "serve")], "picking"),
    ("delivery", [("picked", "serve"), ("shipped", "serve")], "picked"),
    ("delivery", [("shipped", "serve"), ("rejected", "serve")], "shipped"),
    ("delivery", [("rejected", "serve")], "backordered"),
    ("delivery", [("delivered", "serve"), ("shipped", "serve")], "shipped"),
    ("delivery", [("delivered", "serve"), ("delivered", "serve")], "delivered"),
    ("pickup", [("ready_for_pickup", "serve"), ("picked", "transfer")], "picking"),
    ("pickup", [("ready_for_pickup", "serve"), ("shipped", "transfer")], "picking"),  # on the road, not here
    ("pickup", [("ready_for_pickup", "serve"), ("received", "transfer")], "ready_for_pickup"),
    ("pickup", [("collected", "serve"), ("received", "transfer")], "collected"),
    ("pickup", [("ready_for_pickup", "serve"), ("returned", "transfer")], "ready_for_pickup"),
])
def test_the_order_status_its_fulfilments_imply(mode, fulfilments, expected):
    assert order_status_from(mode, fulfilments) == expected


def test_a_waiting_line_makes_the_order_partially_allocated_and_all_lines_cancelled_cancels_it():
    from oms.orders.decide import order_status_with_lines
    from oms.orders.lines import line_states, missing_units

    lines = [{"line_no": 1, "sku": "pen", "quantity": 2, "cancelled_qty": 0, "reason": None},
             {"line_no": 2, "sku": "ink", "quantity": 1, "cancelled_qty": 0, "reason": "ink is out"}]
    states = line_states(lines, {"pen": 2})
    assert [(st.status, st.waiting) for st in states] == [("open", 0), ("backordered", 1)]
    assert missing_units(lines, {"pen": 2}) == {"ink": 1}
    shipped = [("shipped", "serve")]
    assert order_status_with_lines("delivery", shipped, states) == "partially_allocated"
    assert order_status_with_lines("delivery", [], states) == "backordered"
    lines[1]["cancelled_qty"] = 1  # the buyer gave up the ink
    assert order_status_with_lines("delivery", shipped, line_states(lines, {"pen": 2})) == "shipped"
    lines[0]["cancelled_qty"] = 2
    assert order_status_with_lines("delivery", [("cancelled", "serve")], line_states(lines, {})) == "cancelled"
    # a unit a store's reject is re-routing right now is not routed again by a restock meanwhile
    lines = [{"line_no": 1, "sku": "pen", "quantity": 1, "cancelled_qty": 0,
              "reason": "rejected at s1 (damaged); re-routing"}]
    assert missing_units(lines, {}) == {}


def test_the_order_reaches_a_status_through_the_transition_table():
    assert status_path("picking", "shipped") == ["picked", "shipped"]
    assert status_path("allocated", "picked") == ["picked"]
    with pytest.raises(IllegalTransition):
        status_path("collected", "allocated")
