"""Destinations: one coordinate system (GCJ-02) for nodes and orders, converted at the edge.

GCJ-02 is what Amap/Tencent maps, Douyin's `user_coordinate` and the `cpca` gazetteer use,
and what store coordinates copied from a Chinese map are in. WGS-84 input (a phone GPS, the
mini-program's default `wx.getLocation`) is converted here, once.

When a platform gives no coordinates (Taobao, JD), the destination falls back to the centre of
the buyer's district from the offline gazetteer shipped inside the `cpca` package and is marked
`approximate=True`, so one-hour routing can treat it with care (a district is kilometres wide).
"""

from __future__ import annotations

import csv
import importlib.util
import math
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from adapters.errors import PayloadError
from adapters.normalized import Destination

# -- WGS-84 -> GCJ-02 ("Mars coordinates"); the public-domain formula every Chinese SDK uses --

_A = 6378245.0  # Krasovsky 1940 semi-major axis, as the GCJ-02 algorithm defines it
_EE = 0.00669342162296594323


def in_china(lat: float, lng: float) -> bool:
    """Rough mainland bounding box: outside it GCJ-02 equals WGS-84 by definition."""
    return 72.004 <= lng <= 137.8347 and 0.8293 <= lat <= 55.8271


def _transform_lat(x: float, y: float) -> float:
    ret = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * math.sqrt(abs(x))
    ret += (20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)) * 2.0 / 3.0
    ret += (20.0 * math.sin(y * math.pi) + 40.0 * math.sin(y / 3.0 * math.pi)) * 2.0 / 3.0
    ret += (160.0 * math.sin(y / 12.0 * math.pi) + 320 * math.sin(y * math.pi / 30.0)) * 2.0 / 3.0
    return ret


def _transform_lng(x: float, y: float) -> float:
    ret = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * math.sqrt(abs(x))
    ret += (20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)) * 2.0 / 3.0
    ret += (20.0 * math.sin(x * math.pi) + 40.0 * math.sin(x / 3.0 * math.pi)) * 2.0 / 3.0
    ret += (150.0 * math.sin(x / 12.0 * math.pi) + 300.0 * math.sin(x / 30.0 * math.pi)) * 2.0 / 3.0
    return ret


def wgs84_to_gcj02(lat: float, lng: float) -> tuple[float, float]:
    """Convert a WGS-84 point to GCJ-02 (offset of a few hundred metres inside China)."""
    if not in_china(lat, lng):
        return lat, lng
    d_lat = _transform_lat(lng - 105.0, lat - 35.0)
    d_lng = _transform_lng(lng - 105.0, lat - 35.0)
    rad_lat = lat / 180.0 * math.pi
    magic = 1 - _EE * math.sin(rad_lat) ** 2
    sqrt_magic = math.sqrt(magic)
    d_lat = (d_lat * 180.0) / ((_A * (1 - _EE)) / (magic * sqrt_magic) * math.pi)
    d_lng = (d_lng * 180.0) / (_A / sqrt_magic * math.cos(rad_lat) * math.pi)
    return lat + d_lat, lng + d_lng


# -- the offline gazetteer (cpca's adcodes.csv: adcode, name, longitude, latitude; GCJ-02) --


class Place(NamedTuple):
    adcode: str  # 6 digits: 2 province + 2 city + 2 district
    name: str
    lat: float | None
    lng: float | None

    @property
    def rank(self) -> int:
        """0 province, 1 city, 2 district (county)."""
        if self.adcode.endswith("0000"):
            return 0
        if self.adcode.endswith("00"):
            return 1
        return 2


@lru_cache(maxsize=1)
def _gazetteer() -> tuple[Place, ...]:
    # Read the CSV straight from the installed package without importing `cpca` itself,
    # which would pull in pandas (seconds of start-up) for a 3,500-line table.
    spec = importlib.util.find_spec("cpca")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the cpca package (offline gazetteer) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "adcodes.csv"
    places = []
    with path.open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            try:
                lat, lng = float(row["latitude"]), float(row["longitude"])
            except (TypeError, ValueError):
                lat = lng = None  # e.g. "市辖区" rows carry no centre
            places.append(Place(row["adcode"][:6], row["name"], lat, lng))
    return tuple(places)


_SUFFIXES = ("特别行政区", "维吾尔自治区", "壮族自治区", "回族自治区", "自治区", "自治州", "省", "市", "地区", "盟")


def _short(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix) + 1:
            return name[: -len(suffix)]
    return name


@lru_cache(maxsize=1)
def _index() -> dict[tuple[int, str], tuple[Place, ...]]:
    """(rank, name) and (rank, short name) -> places: lookups without scanning 3,500 rows."""
    index: dict[tuple[int, str], list[Place]] = {}
    for place in _gazetteer():
        for key in {place.name, _short(place.name)}:
            index.setdefault((place.rank, key), []).append(place)
    return {key: tuple(places) for key, places in index.items()}


def _find(name: str | None, rank: int, prefix: str = "") -> Place | None:
    if not name:
        return None
    name = name.strip()
    index = _index()
    hits = index.get((rank, name)) or (index.get((rank, _short(name))) if len(_short(name)) >= 2 else None) or ()
    hits = tuple(p for p in hits if p.adcode.startswith(prefix))
    return hits[0] if len(hits) == 1 or (hits and prefix) else None


def locate_region(province: str | None, city: str | None, district: str | None) -> Place | None:
    """Most specific gazetteer entry (district > city > province) that has a centre."""
    found: list[Place] = []
    prov = _find(province, 0)
    if prov is not None:
        found.append(prov)
    prefix = prov.adcode[:2] if prov else ""
    town = _find(city, 1, prefix)
    if town is not None:
        found.append(town)
        prefix = town.adcode[:4]
    elif city and prov is None:
        # province missing: a city name is usually unique nationwide
        town = _find(city, 1)
        if town is not None:
            found.append(town)
            prefix = town.adcode[:4]
    county = _find(district, 2, prefix) if (prefix or district) else None
    if county is None and district and prefix and len(prefix) == 4:
        # municipalities and direct-administered cities: districts hang under the province
        county = _find(district, 2, prefix[:2])
    if county is not None:
        found.append(county)
    for place in reversed(found):
        if place.lat is not None and place.lng is not None:
            return place
    return None


def _prefix_match(text: str, rank: int, prefix: str) -> Place | None:
    """The gazetteer entry of `rank` under adcode `prefix` whose name (or short name) starts `text`,
    the longest such name winning."""
    best: tuple[int, Place] | None = None
    for place in _gazetteer():
        if place.rank != rank or not place.adcode.startswith(prefix) or place.name == "市辖区":
            continue
        for name in (place.name, _short(place.name)):
            if len(name) >= 2 and text.startswith(name) and (best is None or len(name) > best[0]):
                best = (len(name), place)
    return best[1] if best else None


@lru_cache(maxsize=4096)
def region_from_text(address: str) -> tuple[str | None, str | None, str | None]:
    """(province, city, district) read from the start of a Chinese address ("上海市黄浦区南京东路…"),
    as cpca does, with the gazetteer's full names; None for the parts the text does not name."""
    text = (address or "").strip()
    province = city = district = None
    prov = _prefix_match(text, 0, "")
    prefix = ""
    if prov is not None:
        province, prefix = prov.name, prov.adcode[:2]
        text = text[len(prov.name):] if text.startswith(prov.name) else text[len(_short(prov.name)):]
    town = _prefix_match(text, 1, prefix)
    if town is not None:
        city, prefix = town.name, town.adcode[:4]
        text = text[len(town.name):] if text.startswith(town.name) else text[len(_short(town.name)):]
        if province is None:
            province = next((p.name for p in _gazetteer() if p.adcode == town.adcode[:2] + "0000"), None)
    elif province is not None and province.endswith("市"):
        city = province  # a municipality is its own city
    county = _prefix_match(text, 2, prefix) if prefix else None
    if county is not None:
        district = county.name
    return province, city, district


def _check_point(lat: float, lng: float, field: str) -> None:
    if not (math.isfinite(lat) and math.isfinite(lng)) or not (-90 <= lat <= 90 and -180 <= lng <= 180):
        raise PayloadError(field, "coordinates out of range")


def destination_from_point(
    lat: float,
    lng: float,
    *,
    field: str,
    address: str = "",
    province: str | None = None,
    city: str | None = None,
    district: str | None = None,
    wgs84: bool = False,
) -> Destination:
    """Destination from the buyer's own point; converts WGS-84 to GCJ-02 when asked. Region names
    the channel left out are read from the address text."""
    _check_point(lat, lng, field)
    if not (province or city or district) and address:
        province, city, district = region_from_text(address)
    if wgs84:
        lat, lng = wgs84_to_gcj02(lat, lng)
    return Destination(
        lat=lat, lng=lng, address=address, approximate=False, province=province, city=city, district=district
    )


def destination_from_region(
    province: str | None,
    city: str | None,
    district: str | None,
    *,
    field: str,
    address: str = "",
) -> Destination:
    """Destination at the district's centre (marked approximate); PayloadError when unknown. When
    the channel gave only the address text, the region is read from it."""
    if not (province or city or district) and address:
        province, city, district = region_from_text(address)
    place = locate_region(province, city, district)
    if place is None or place.lat is None or place.lng is None:
        raise PayloadError(field, "no coordinates and the region is not in the gazetteer")
    return Destination(
        lat=place.lat,
        lng=place.lng,
        address=address,
        approximate=True,
        province=province or None,
        city=city or None,
        district=district or None,
    )


def parse_coordinate(value: object, field: str) -> float | None:
    """A coordinate sent as a decimal string or number; "", None and "0" mean 'not given'."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise PayloadError(field, "coordinate is not a number") from None
    else:
        raise PayloadError(field, "coordinate is not a number")
    if not math.isfinite(number):
        raise PayloadError(field, "coordinate is not a number")
    return None if number == 0 else number
