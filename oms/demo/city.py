"""Pure data for the demo city: Shanghai (plus a tiny Hangzhou satellite).

Everything here is static and deterministic: no I/O, no network, no clock.

* ``DEMO_NODES`` -- one central warehouse in the Jiading logistics area and 55
  stores at shopping areas / metro stations across all 16 Shanghai districts,
  followed by 3 Hangzhou stores used for cross-city pickup demos.
* ``DEMO_SKUS`` -- 224 SKUs of a fictional apparel / lifestyle brand, built
  deterministically from small lists (category x colour x size).
* ``demo_stock(seed)`` -- deterministic (node_id, sku, on_hand) rows.

Coordinates are GCJ-02 (the datum used by Chinese map SDKs such as AMap /
Tencent Maps), rounded to 6 decimals.  They are plausible approximations of
the named places, good enough for routing / radius demos, not for surveying.
"""

from __future__ import annotations

import random
from typing import Literal

import msgspec

__all__ = [
    "DemoNode",
    "DemoSku",
    "DEMO_NODES",
    "DEMO_SKUS",
    "DEMO_WAREHOUSE_ID",
    "SHANGHAI_DISTRICTS",
    "SHANGHAI_BOUNDS",
    "demo_stock",
    "SALE_SKUS",
    "HOT_SKU",
]

NodeKind = Literal["store", "warehouse"]
Capability = Literal["delivery", "pickup", "ship"]


class DemoNode(msgspec.Struct, frozen=True):
    id: str
    kind: NodeKind
    name: str
    district: str
    lat: float
    lng: float
    capabilities: tuple[Capability, ...]
    delivery_radius_m: int
    capacity_per_hour: int


class DemoSku(msgspec.Struct, frozen=True):
    sku: str
    name: str
    unit_price_fen: int


# --------------------------------------------------------------------------
# Geography
# --------------------------------------------------------------------------

#: The 16 districts of Shanghai municipality.
SHANGHAI_DISTRICTS: tuple[str, ...] = (
    "黄浦区",
    "徐汇区",
    "长宁区",
    "静安区",
    "普陀区",
    "虹口区",
    "杨浦区",
    "浦东新区",
    "闵行区",
    "宝山区",
    "嘉定区",
    "金山区",
    "松江区",
    "青浦区",
    "奉贤区",
    "崇明区",
)

#: Rough bounding box of Shanghai municipality: (lat_min, lat_max, lng_min, lng_max).
SHANGHAI_BOUNDS: tuple[float, float, float, float] = (30.7, 31.9, 120.85, 122.0)

DEMO_WAREHOUSE_ID = "SH-WH-JIADING"

_DL_PU: tuple[Capability, ...] = ("delivery", "pickup")
_DL_PU_SHIP: tuple[Capability, ...] = ("delivery", "pickup", "ship")

# (id, name, district, lat, lng, capabilities, delivery_radius_m, capacity_per_hour)
_SHANGHAI_STORES: tuple[tuple[str, str, str, float, float, tuple[Capability, ...], int, int], ...] = (
    # 黄浦区 -- dense downtown
    ("SH-ST-001", "南京东路店 Nanjing Rd E", "黄浦区", 31.238200, 121.484300, _DL_PU_SHIP, 3000, 80),
    ("SH-ST-002", "新天地店 Xintiandi", "黄浦区", 31.219800, 121.475400, _DL_PU, 3000, 60),
    ("SH-ST-003", "人民广场店 People's Square", "黄浦区", 31.232300, 121.475500, _DL_PU, 3000, 70),
    ("SH-ST-004", "豫园店 Yuyuan", "黄浦区", 31.227600, 121.492100, _DL_PU, 3000, 45),
    # 静安区
    ("SH-ST-005", "南京西路店 Nanjing Rd W", "静安区", 31.229400, 121.459800, _DL_PU_SHIP, 3000, 75),
    ("SH-ST-006", "静安寺店 Jing'an Temple", "静安区", 31.223700, 121.446000, _DL_PU, 3000, 60),
    ("SH-ST-007", "大宁店 Daning", "静安区", 31.280800, 121.458100, _DL_PU, 3500, 50),
    # 徐汇区
    ("SH-ST-008", "徐家汇店 Xujiahui", "徐汇区", 31.195000, 121.437000, _DL_PU_SHIP, 3000, 80),
    ("SH-ST-009", "漕河泾店 Caohejing", "徐汇区", 31.168700, 121.398300, _DL_PU, 3500, 45),
    ("SH-ST-010", "徐汇滨江店 West Bund", "徐汇区", 31.176900, 121.459200, _DL_PU, 3500, 40),
    # 长宁区
    ("SH-ST-011", "中山公园店 Zhongshan Park", "长宁区", 31.221500, 121.418200, _DL_PU, 3000, 65),
    ("SH-ST-012", "虹桥店 Hongqiao", "长宁区", 31.210500, 121.405800, _DL_PU, 3500, 50),
    ("SH-ST-013", "古北店 Gubei", "长宁区", 31.197500, 121.398500, _DL_PU, 3500, 40),
    # 普陀区
    ("SH-ST-014", "长寿路店 Changshou Rd", "普陀区", 31.241700, 121.438600, _DL_PU, 3000, 55),
    ("SH-ST-015", "真如店 Zhenru", "普陀区", 31.256700, 121.408100, _DL_PU, 3500, 45),
    ("SH-ST-016", "环球港店 Global Harbor", "普陀区", 31.232600, 121.412500, _DL_PU_SHIP, 3500, 70),
    # 虹口区
    ("SH-ST-017", "四川北路店 Sichuan Rd N", "虹口区", 31.256000, 121.485500, _DL_PU, 3000, 55),
    ("SH-ST-018", "北外滩店 North Bund", "虹口区", 31.249200, 121.500900, _DL_PU, 3000, 45),
    ("SH-ST-019", "曲阳店 Quyang", "虹口区", 31.281500, 121.490200, _DL_PU, 3500, 40),
    # 杨浦区
    ("SH-ST-020", "五角场店 Wujiaochang", "杨浦区", 31.300500, 121.514400, _DL_PU_SHIP, 3500, 75),
    ("SH-ST-021", "平凉路店 Pingliang Rd", "杨浦区", 31.262000, 121.525000, _DL_PU, 3000, 40),
    ("SH-ST-022", "新江湾城店 Xinjiangwan", "杨浦区", 31.330500, 121.505700, _DL_PU, 4000, 35),
    # 浦东新区 -- inner ring (downtown radius)
    ("SH-ST-023", "陆家嘴店 Lujiazui", "浦东新区", 31.240000, 121.505000, _DL_PU_SHIP, 3000, 80),
    ("SH-ST-024", "世纪大道店 Century Ave", "浦东新区", 31.228400, 121.526100, _DL_PU, 3000, 65),
    ("SH-ST-025", "八佰伴店 Nextage", "浦东新区", 31.227700, 121.516700, _DL_PU, 3000, 60),
    ("SH-ST-026", "花木店 Huamu", "浦东新区", 31.213200, 121.556800, _DL_PU, 4000, 45),
    ("SH-ST-027", "前滩店 Qiantan", "浦东新区", 31.149500, 121.470800, _DL_PU, 4000, 50),
    # 浦东新区 -- outer (suburban radius)
    ("SH-ST-028", "张江店 Zhangjiang", "浦东新区", 31.203000, 121.588300, _DL_PU, 5000, 55),
    ("SH-ST-029", "金桥店 Jinqiao", "浦东新区", 31.259800, 121.594600, _DL_PU, 5000, 45),
    ("SH-ST-030", "川沙店 Chuansha", "浦东新区", 31.192700, 121.703500, _DL_PU, 5000, 35),
    ("SH-ST-031", "惠南店 Huinan", "浦东新区", 31.051800, 121.760100, _DL_PU, 5000, 30),
    ("SH-ST-032", "三林店 Sanlin", "浦东新区", 31.146800, 121.508300, _DL_PU, 5000, 40),
    ("SH-ST-033", "周浦店 Zhoupu", "浦东新区", 31.114600, 121.574200, _DL_PU, 5000, 40),
    ("SH-ST-034", "临港店 Lingang", "浦东新区", 30.899700, 121.929400, _DL_PU, 5000, 25),
    # 闵行区
    ("SH-ST-035", "莘庄店 Xinzhuang", "闵行区", 31.111200, 121.385500, _DL_PU, 5000, 55),
    ("SH-ST-036", "七宝店 Qibao", "闵行区", 31.159200, 121.352700, _DL_PU, 5000, 45),
    ("SH-ST-037", "虹桥枢纽店 Hongqiao Hub", "闵行区", 31.194900, 121.320700, _DL_PU_SHIP, 5000, 70),
    ("SH-ST-038", "浦江店 Pujiang", "闵行区", 31.083200, 121.507800, _DL_PU, 5000, 30),
    ("SH-ST-039", "颛桥店 Zhuanqiao", "闵行区", 31.058800, 121.413900, _DL_PU, 5000, 30),
    # 宝山区
    ("SH-ST-040", "大华店 Dahua", "宝山区", 31.277800, 121.420600, _DL_PU, 5000, 40),
    ("SH-ST-041", "顾村店 Gucun", "宝山区", 31.348200, 121.384500, _DL_PU, 5000, 30),
    ("SH-ST-042", "淞宝店 Songbao", "宝山区", 31.400500, 121.489100, _DL_PU, 5000, 30),
    # 嘉定区
    ("SH-ST-043", "嘉定新城店 Jiading New City", "嘉定区", 31.331800, 121.251000, _DL_PU, 5000, 35),
    ("SH-ST-044", "南翔店 Nanxiang", "嘉定区", 31.297500, 121.318500, _DL_PU, 5000, 30),
    ("SH-ST-045", "安亭店 Anting", "嘉定区", 31.293800, 121.166200, _DL_PU, 5000, 25),
    # 金山区
    ("SH-ST-046", "金山新城店 Jinshan New City", "金山区", 30.741400, 121.341700, _DL_PU, 5000, 25),
    ("SH-ST-047", "朱泾店 Zhujing", "金山区", 30.898900, 121.163800, _DL_PU, 5000, 20),
    # 松江区
    ("SH-ST-048", "松江新城店 Songjiang New City", "松江区", 31.035800, 121.226600, _DL_PU_SHIP, 5000, 50),
    ("SH-ST-049", "九亭店 Jiuting", "松江区", 31.136800, 121.325800, _DL_PU, 5000, 35),
    ("SH-ST-050", "泗泾店 Sijing", "松江区", 31.120600, 121.264000, _DL_PU, 5000, 30),
    # 青浦区
    ("SH-ST-051", "青浦新城店 Qingpu New City", "青浦区", 31.150600, 121.119400, _DL_PU, 5000, 30),
    ("SH-ST-052", "徐泾店 Xujing", "青浦区", 31.185400, 121.272900, _DL_PU, 5000, 35),
    ("SH-ST-053", "朱家角店 Zhujiajiao", "青浦区", 31.110600, 121.053700, _DL_PU, 5000, 20),
    # 奉贤区
    ("SH-ST-054", "南桥店 Nanqiao", "奉贤区", 30.919200, 121.467100, _DL_PU, 5000, 30),
    # 崇明区
    ("SH-ST-055", "城桥店 Chengqiao", "崇明区", 31.623400, 121.397800, _DL_PU, 5000, 20),
)

# Hangzhou: a second small city for cross-city pickup demos.
_HANGZHOU_STORES: tuple[tuple[str, str, str, float, float, tuple[Capability, ...], int, int], ...] = (
    ("HZ-ST-001", "武林店 Wulin", "拱墅区", 30.272000, 120.164000, _DL_PU, 3000, 50),
    ("HZ-ST-002", "滨江店 Binjiang", "滨江区", 30.208500, 120.211700, _DL_PU, 4000, 35),
    ("HZ-ST-003", "钱江新城店 Qianjiang New City", "上城区", 30.246400, 120.210000, _DL_PU, 3500, 45),
)

_WAREHOUSE = DemoNode(
    id=DEMO_WAREHOUSE_ID,
    kind="warehouse",
    name="嘉定中心仓 Jiading DC",
    district="嘉定区",
    # Malu / Jiading industrial logistics belt, next to the G15 / S5 corridor.
    lat=31.328000,
    lng=121.301000,
    capabilities=("ship",),
    delivery_radius_m=0,
    capacity_per_hour=2000,
)


def _store(row: tuple[str, str, str, float, float, tuple[Capability, ...], int, int]) -> DemoNode:
    node_id, name, district, lat, lng, caps, radius, cap = row
    return DemoNode(
        id=node_id,
        kind="store",
        name=name,
        district=district,
        lat=round(lat, 6),
        lng=round(lng, 6),
        capabilities=caps,
        delivery_radius_m=radius,
        capacity_per_hour=cap,
    )


DEMO_NODES: tuple[DemoNode, ...] = (
    _WAREHOUSE,
    *(_store(r) for r in _SHANGHAI_STORES),
    *(_store(r) for r in _HANGZHOU_STORES),
)


# --------------------------------------------------------------------------
# Catalogue
# --------------------------------------------------------------------------

_COLOURS: dict[str, str] = {
    "WHT": "白色",
    "BLK": "黑色",
    "GRY": "灰色",
    "NVY": "藏青",
    "RED": "红色",
    "GRN": "绿色",
    "OLV": "橄榄绿",
    "CRM": "奶油白",
    "PNK": "粉色",
    "KHK": "卡其",
    "LBL": "浅蓝",
    "DBL": "深蓝",
    "BEI": "米色",
    "NAT": "原色",
    "BRN": "棕色",
}

_APPAREL = ("S", "M", "L", "XL", "XXL")
_APPAREL4 = ("S", "M", "L", "XL")
_WAIST = ("28", "29", "30", "31", "32", "34", "36")
_WAIST6 = ("28", "30", "31", "32", "34", "36")
_SHOE = tuple(str(s) for s in range(36, 45))
_FREE = ("F",)

# (code, Chinese name, colour codes, sizes, unit price in fen)
_CATEGORIES: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...], int], ...] = (
    ("TEE", "圆领T恤", ("WHT", "BLK", "GRY", "NVY", "RED"), _APPAREL, 9_900),
    ("POLO", "Polo衫", ("WHT", "NVY", "GRN"), _APPAREL4, 19_900),
    ("HOOD", "连帽卫衣", ("BLK", "GRY", "OLV", "CRM"), _APPAREL, 29_900),
    ("CREW", "圆领卫衣", ("GRY", "NVY", "PNK"), _APPAREL, 24_900),
    ("SWTR", "针织毛衣", ("CRM", "NVY", "GRY"), _APPAREL4, 35_900),
    ("JKT", "工装夹克", ("BLK", "KHK", "NVY"), _APPAREL, 59_900),
    ("JEAN", "直筒牛仔裤", ("LBL", "DBL", "BLK"), _WAIST, 39_900),
    ("CHNO", "休闲长裤", ("KHK", "BLK", "OLV"), _WAIST6, 29_900),
    ("SHRT", "休闲短裤", ("KHK", "NVY", "BLK"), _APPAREL4, 14_900),
    ("SNKR", "运动鞋", ("WHT", "BLK"), _SHOE, 49_900),
    ("CNVS", "帆布鞋", ("WHT", "BLK", "RED"), _SHOE, 25_900),
    ("CAP", "棒球帽", ("BLK", "WHT", "NVY", "BEI"), _FREE, 7_900),
    ("BEAN", "针织帽", ("BLK", "GRY", "RED"), _FREE, 8_900),
    ("TOTE", "帆布托特包", ("NAT", "BLK"), _FREE, 12_900),
    ("BKPK", "双肩包", ("BLK", "GRY", "NVY"), _FREE, 34_900),
    ("SOCK", "中筒袜", ("WHT", "BLK", "GRY"), ("M", "L"), 2_900),
    ("BELT", "皮带", ("BLK", "BRN"), ("90", "100", "110"), 15_900),
    ("BTL", "保温杯", ("WHT", "BLK", "GRN"), _FREE, 13_900),
    ("UMBR", "折叠伞", ("BLK", "NVY"), _FREE, 9_900),
)


def _size_label(code: str, size: str) -> str:
    if size == "F":
        return "均码"
    if code in ("SNKR", "CNVS"):
        return f"{size}码"
    if code in ("JEAN", "CHNO"):
        return f"腰围{size}"
    if code == "BELT":
        return f"{size}cm"
    return size


def _build_skus() -> tuple[DemoSku, ...]:
    out: list[DemoSku] = []
    for code, cn_name, colours, sizes, price in _CATEGORIES:
        for colour in colours:
            for size in sizes:
                out.append(
                    DemoSku(
                        sku=f"SKU-{code}-{colour}-{size}",
                        name=f"{cn_name} {_COLOURS[colour]} {_size_label(code, size)}",
                        unit_price_fen=price,
                    )
                )
    return tuple(out)


DEMO_SKUS: tuple[DemoSku, ...] = _build_skus()


# --------------------------------------------------------------------------
# Stock
# --------------------------------------------------------------------------


#: the bestsellers every Shanghai store carries in depth for a sale (and `oms simulate-sale` sells)
SALE_SKUS: tuple[str, ...] = (
    *(f"SKU-TEE-{c}-{s}" for c in ("WHT", "BLK", "GRY", "NVY", "RED") for s in ("M", "L")),
    *(f"SKU-HOOD-{c}-{s}" for c in ("GRY", "OLV") for s in ("M", "L")),
    "SKU-HOOD-BLK-L",
    *(f"SKU-CAP-{c}-F" for c in ("BLK", "WHT", "NVY", "BEI")),
    *(f"SKU-SOCK-{c}-{s}" for c in ("WHT", "BLK", "GRY") for s in ("M", "L")),
    *(f"SKU-BTL-{c}-F" for c in ("WHT", "BLK", "GRN")),
    "SKU-TOTE-NAT-F", "SKU-TOTE-BLK-F", "SKU-UMBR-BLK-F", "SKU-UMBR-NVY-F",
    *(f"SKU-SNKR-WHT-{s}" for s in ("40", "41", "42")),
    *(f"SKU-JEAN-DBL-{w}" for w in ("30", "31", "32")),
)
#: the Double 11 hot item: few units, everywhere, sold out within minutes (no oversell, ever)
HOT_SKU = "SKU-HOOD-BLK-M"
HOT_WAREHOUSE_UNITS = 30
HOT_STORE_UNITS = 1


def demo_stock(seed: int = 11) -> list[tuple[str, str, int]]:
    """Deterministic initial stock rows ``(node_id, sku, on_hand)``.

    The warehouse holds every SKU (100-500 units; the bestsellers 1,500-2,500). Every store
    holds the bestsellers (``SALE_SKUS``) in depth, scaled to its picking capacity, so a
    one-hour order finds them nearby; besides, each store holds a random ~30% of the rest
    (0-8 units; a zero row is a "listed but sold out" item). The hot SKU is scarce on purpose:
    ``HOT_STORE_UNITS`` per store and ``HOT_WAREHOUSE_UNITS`` in the warehouse. Only
    ``random.Random(seed)`` is used, so the same seed always yields the same list.
    """
    rng = random.Random(seed)
    core = set(SALE_SKUS)
    rows: list[tuple[str, str, int]] = []
    for node in DEMO_NODES:
        if node.kind == "warehouse":
            for s in DEMO_SKUS:
                if s.sku == HOT_SKU:
                    rows.append((node.id, s.sku, HOT_WAREHOUSE_UNITS))
                else:
                    rows.append((node.id, s.sku, rng.randint(1500, 2500) if s.sku in core else rng.randint(100, 500)))
            continue
        depth = max(1, node.capacity_per_hour // 10)
        for s in DEMO_SKUS:
            if s.sku == HOT_SKU:
                rows.append((node.id, s.sku, HOT_STORE_UNITS))
            elif s.sku in core:
                rows.append((node.id, s.sku, rng.randint(4 * depth, 8 * depth)))
            elif rng.random() < 0.3:
                rows.append((node.id, s.sku, rng.randint(0, 8)))
    return rows
