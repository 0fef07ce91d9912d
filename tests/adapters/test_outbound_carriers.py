"""The carrier table: every carrier has an entry, confirmed values stay as the sources say."""

from __future__ import annotations

import pytest

from adapters.outbound.carriers import CARRIERS, JD_SELF_DELIVERY, UNCONFIRMED, Carrier, carrier_code, require_code
from adapters.outbound.common import OutboundInputError, Platform


def test_every_carrier_has_codes():
    assert set(CARRIERS) == set(Carrier)


def test_confirmed_values():
    assert carrier_code(Carrier.SELF, Platform.JD) == JD_SELF_DELIVERY == 1274
    assert (Carrier.SELF, Platform.JD) not in UNCONFIRMED
    assert carrier_code(Carrier.SF, Platform.DOUYIN) == "shunfeng"
    assert carrier_code(Carrier.ZTO, Platform.WECHAT) == "ZTO"
    assert (Carrier.SF, Platform.DOUYIN) not in UNCONFIRMED
    assert (Carrier.SF, Platform.TMALL) in UNCONFIRMED and (Carrier.YTO, Platform.JD) in UNCONFIRMED


def test_self_delivery_has_no_code_where_the_platform_has_none():
    for platform in (Platform.TMALL, Platform.DOUYIN, Platform.WECHAT):
        assert carrier_code(Carrier.SELF, platform) is None
        with pytest.raises(OutboundInputError):
            require_code(Carrier.SELF, platform)


def test_platform_codes_pass_through():
    assert carrier_code("ZJS", Platform.TMALL) == "ZJS"
    assert carrier_code("sf", Platform.TMALL) == "SF"  # our name wins
    with pytest.raises(OutboundInputError):
        carrier_code(" ", Platform.TMALL)
