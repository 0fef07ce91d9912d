"""One table from our carrier names to each platform's carrier code.

Sources (docs platforms/outbound.md): JD ids are a third-party map (id 69263897249) except
1274 = 厂家自送 (merchant self-delivery, official PHP SDK doc comment); Taobao codes come from
`taobao.logistics.companies.get` (outbound.md quotes only "POST" and "ZJS" as examples);
Douyin codes come from `/order/logisticsCompanyList` (outbound.md quotes "shunfeng" and
"qita"); WeChat ids come from `get_delivery_list` ("ZTO" seen in a WeChat forum request).

Every value not named in those sources is UNCONFIRMED (listed in `UNCONFIRMED`): check each
against the shop's own carrier list API before go-live; a shop may override any code by
passing the platform's code string instead of our name.

"self" (the merchant's or store's own rider) has no carrier on most platforms:
- Tmall: no company code -> ship with `taobao.logistics.dummy.send` (no logistics);
- JD: 1274 厂家自送, tracking number may be empty;
- Douyin: no code found -> None (UNCONFIRMED how 小时达 self-delivery is confirmed);
- WeChat: `logistics_type` 2 (同城配送) needs no express_company -> None.
"""

from __future__ import annotations

import enum

import msgspec

from adapters.outbound.common import OutboundInputError, Platform


class Carrier(enum.StrEnum):
    """Our carrier names (the values the store app and the routing plan use)."""

    SF = "sf"  # 顺丰
    ZTO = "zto"  # 中通
    YTO = "yto"  # 圆通
    STO = "sto"  # 申通
    YUNDA = "yunda"  # 韵达
    EMS = "ems"  # 邮政 EMS
    JD = "jd"  # 京东快递
    DEPPON = "deppon"  # 德邦
    SELF = "self"  # merchant / store own rider


class CarrierCodes(msgspec.Struct, frozen=True, kw_only=True):
    """One carrier's code on each platform (None: that platform has no code for it)."""

    tmall: str | None  # Taobao company_code
    jd: int | None  # JD logiCoprId
    douyin: str | None  # Douyin company_code
    wechat: str | None  # WeChat express_company (delivery_id)


CARRIERS: dict[Carrier, CarrierCodes] = {
    Carrier.SF: CarrierCodes(tmall="SF", jd=467, douyin="shunfeng", wechat="SF"),
    Carrier.ZTO: CarrierCodes(tmall="ZTO", jd=1499, douyin="zhongtong", wechat="ZTO"),
    Carrier.YTO: CarrierCodes(tmall="YTO", jd=463, douyin="yuantong", wechat="YTO"),
    Carrier.STO: CarrierCodes(tmall="STO", jd=470, douyin="shentong", wechat="STO"),
    Carrier.YUNDA: CarrierCodes(tmall="YUNDA", jd=1327, douyin="yunda", wechat="YD"),
    Carrier.EMS: CarrierCodes(tmall="EMS", jd=465, douyin="ems", wechat="EMS"),
    Carrier.JD: CarrierCodes(tmall="JD", jd=2087, douyin="jd", wechat="JD"),
    Carrier.DEPPON: CarrierCodes(tmall="DBL", jd=3046, douyin="debangwuliu", wechat="DBL"),
    Carrier.SELF: CarrierCodes(tmall=None, jd=1274, douyin=None, wechat=None),
}

#: JD's id for 厂家自送 (merchant self-delivery): confirmed by the official SDK doc comment
JD_SELF_DELIVERY = 1274

#: (carrier, platform) pairs whose code is not confirmed by a source (see the module docstring)
UNCONFIRMED: frozenset[tuple[Carrier, Platform]] = frozenset(
    # Taobao: every code is our reading of common usage, not from taobao.logistics.companies.get
    {(c, Platform.TMALL) for c in Carrier if c is not Carrier.SELF}
    # JD: third-party map only (1274 is confirmed)
    | {(c, Platform.JD) for c in Carrier if c is not Carrier.SELF}
    # Douyin: only "shunfeng" is quoted in outbound.md
    | {(c, Platform.DOUYIN) for c in Carrier if c not in (Carrier.SF,)}
    # WeChat: only "ZTO" is seen in a WeChat request sample
    | {(c, Platform.WECHAT) for c in Carrier if c not in (Carrier.ZTO, Carrier.SELF)}
)


def carrier_code(carrier: Carrier | str, platform: Platform) -> str | int | None:
    """The platform's code for `carrier`; a string that is not one of our names passes through
    unchanged (a shop-specific platform code). None: the platform has no code for it."""
    try:
        ours = Carrier(carrier)
    except ValueError:
        if not str(carrier).strip():
            raise OutboundInputError("carrier is empty") from None
        return str(carrier).strip()  # already a platform code
    codes = CARRIERS[ours]
    return {
        Platform.TMALL: codes.tmall,
        Platform.JD: codes.jd,
        Platform.DOUYIN: codes.douyin,
        Platform.WECHAT: codes.wechat,
    }[platform]


def require_code(carrier: Carrier | str, platform: Platform) -> str:
    """Like carrier_code, but a carrier the platform has no code for is an input error."""
    code = carrier_code(carrier, platform)
    if code is None:
        raise OutboundInputError(f"{platform.value} has no carrier code for {carrier!s}")
    return str(code)
