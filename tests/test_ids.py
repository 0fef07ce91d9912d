"""Identifiers: fixed width, sorted by time, age readable back."""

from __future__ import annotations

import time

from hypothesis import given, strategies as st

from oms.infra import ids


@given(st.integers(min_value=0, max_value=36**10 - 1), st.integers(min_value=1, max_value=10))
def test_base36_matches_the_digit_by_digit_definition(n, width):
    n %= 36**width
    expected = "".join("0123456789abcdefghijklmnopqrstuvwxyz"[(n // 36**i) % 36] for i in reversed(range(width)))
    assert ids._b36(n, width) == expected


def test_ids_have_one_width_and_sort_by_the_time_they_were_made():
    made = []
    for _ in range(3):
        made += [ids.new_id("o") for _ in range(200)]
        time.sleep(0.002)
    assert {len(i) for i in made} == {20}
    assert len(set(made)) == len(made)
    stamps = [i[1:10] for i in made]
    assert stamps == sorted(stamps)
    assert 0 <= ids.id_age_s(made[0]) < 5
