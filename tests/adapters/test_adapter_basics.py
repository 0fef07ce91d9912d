"""Money, time and geography helpers shared by every adapter."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.errors import PayloadError
from adapters.geo import destination_from_region, in_china, locate_region, wgs84_to_gcj02
from adapters.money import MAX_FEN, fen, fen_to_yuan, yuan_to_fen
from adapters.timeutil import from_epoch_seconds, parse_platform_time, parse_rfc3339

# ----------------------------------------------------------------------------- money


@pytest.mark.parametrize(
    ("text", "expected"),
    [("12.90", 1290), ("12.9", 1290), ("12", 1200), ("0.01", 1), ("0.10", 10), ("0", 0), ("12.900", 1290),
     ("199999.99", 19999999), ("007.05", 705)],
)
def test_yuan_strings_become_exact_fen(text, expected):
    assert yuan_to_fen(text, "price") == expected


def test_0_1_plus_0_2_style_values_stay_exact():
    # through float, 0.29 * 100 == 28.999999999999996 -> 28; the parser must give 29
    assert int(float("0.29") * 100) == 28
    assert yuan_to_fen("0.29", "price") == 29
    assert yuan_to_fen("1.15", "price") == 115


@pytest.mark.parametrize(
    "bad",
    ["12.905", "-1", "-0.01", "1e3", "abc", "", " 12.90", "12.90 ", "12.", ".5", "1,000.00", "１２", "NaN",
     "inf", "0x10", "+5", "12.9.0", 12.9, True, None, [], {}],
)
def test_odd_amounts_are_refused_naming_the_field(bad):
    with pytest.raises(PayloadError) as info:
        yuan_to_fen(bad, "orders[0].price")
    assert info.value.field == "orders[0].price"
    assert info.value.status == 400


def test_integer_yuan_and_fen_bounds():
    assert yuan_to_fen(12, "price") == 1200
    assert fen(1290, "amount") == 1290
    for bad in (-1, MAX_FEN + 1, 1.5, "12", True):
        with pytest.raises(PayloadError):
            fen(bad, "amount")


@given(st.integers(min_value=0, max_value=10**12))
def test_yuan_round_trip_is_exact(amount):
    assert yuan_to_fen(fen_to_yuan(amount), "x") == amount


@settings(max_examples=300)
@given(st.text(max_size=30))
def test_any_text_is_an_amount_or_a_payload_error(value):
    try:
        result = yuan_to_fen(value, "x")
    except PayloadError:
        return
    assert isinstance(result, int) and result >= 0


# ----------------------------------------------------------------------------- time


def test_platform_time_is_beijing_aware():
    moment = parse_platform_time("2024-06-18 10:00:00", "created")
    assert moment.utcoffset() == timedelta(hours=8)
    assert moment.astimezone(timezone.utc) == datetime(2024, 6, 18, 2, 0, tzinfo=timezone.utc)


def test_platform_time_with_millis_and_offset():
    moment = parse_platform_time("2021-05-07 09:20:39.683+0800", "timestamp")
    assert moment.microsecond == 683000 and moment.utcoffset() == timedelta(hours=8)


@pytest.mark.parametrize("bad", ["2024-13-01 00:00:00", "2024-06-18", "yesterday", "", 1718676000, None,
                                 "٢٠٢٤-06-18 10:00:00"])
def test_bad_platform_times_are_refused(bad):
    with pytest.raises(PayloadError):
        parse_platform_time(bad, "created")


def test_epoch_seconds_and_rfc3339():
    assert from_epoch_seconds(0, "t") is None
    moment = from_epoch_seconds(1718676000, "t")
    assert moment is not None and moment.utcoffset() == timedelta(hours=8)
    assert moment.astimezone(timezone.utc) == datetime(2024, 6, 18, 2, 0, tzinfo=timezone.utc)
    assert parse_rfc3339("2018-06-08T10:34:56+08:00", "t").utcoffset() == timedelta(hours=8)
    for bad in (-5, 10**12, "1718676000", 1.5):
        with pytest.raises(PayloadError):
            from_epoch_seconds(bad, "t")
    with pytest.raises(PayloadError):
        parse_rfc3339("2018-06-08T10:34:56", "t")  # no offset


# ----------------------------------------------------------------------------- geography


def test_district_centre_from_the_cpca_gazetteer():
    place = locate_region("福建省", "厦门市", "思明区")
    assert place is not None and place.adcode == "350203"
    assert place.lat == pytest.approx(24.445484) and place.lng == pytest.approx(118.082649)


def test_same_district_name_in_two_cities_is_told_apart():
    beijing = locate_region("北京市", "北京市", "朝阳区")
    changchun = locate_region("吉林省", "长春市", "朝阳区")
    assert beijing is not None and beijing.adcode == "110105"
    assert changchun is not None and changchun.adcode == "220104"
    assert locate_region(None, None, "朝阳区") is None  # ambiguous without a city: no guess


def test_region_destination_is_marked_approximate_and_unknown_region_refused():
    dest = destination_from_region("上海", "上海市", "浦东新区", field="receiver", address="上海浦东***")
    assert dest.approximate is True and dest.district == "浦东新区"
    assert 31.0 < dest.lat < 31.5 and 121.3 < dest.lng < 121.8
    falls_back = destination_from_region("广东省", "东莞市", "不存在镇", field="receiver")
    assert falls_back.approximate and falls_back.lat == pytest.approx(23.020673)  # city centre
    with pytest.raises(PayloadError) as info:
        destination_from_region("火星省", None, None, field="receiver")
    assert info.value.field == "receiver"


def test_wgs84_to_gcj02_shifts_inside_china_only():
    lat, lng = wgs84_to_gcj02(39.908692, 116.397477)  # Tiananmen, WGS-84
    assert 0.001 < lat - 39.908692 < 0.002
    assert 0.005 < lng - 116.397477 < 0.007
    assert wgs84_to_gcj02(48.8566, 2.3522) == (48.8566, 2.3522)  # Paris: untouched
    assert in_china(31.23, 121.47)
    assert not in_china(35.68, 139.76)  # Tokyo
