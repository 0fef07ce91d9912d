"""Time: every platform time becomes a timezone-aware datetime.

Taobao, JD and Douyin speak Beijing time (UTC+08:00) without saying so, either as
"yyyy-MM-dd HH:mm:ss" text or as Unix seconds; WeChat Pay uses RFC 3339 with an offset.
China has had no daylight saving since 1991, so a fixed +08:00 offset is exact and needs
no tz database.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from adapters.errors import PayloadError

BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")

# "2024-06-18 10:00:00", optionally ".683" and an offset "+0800"/"+08:00" (JD's own timestamp)
_PLATFORM_TIME = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[ T](?P<time>\d{2}:\d{2}:\d{2})(?P<frac>\.\d{1,6})?"
    r"(?P<offset>Z|[+-]\d{2}:?\d{2})?",
    re.ASCII,  # \d must mean 0-9 only, not every Unicode digit
)

# Unix seconds beyond this are not timestamps from these platforms (year 2100)
_MAX_EPOCH = 4_102_444_800


def now_beijing() -> datetime:
    """The current time as an aware datetime at +08:00."""
    return datetime.now(BEIJING)


def parse_platform_time(value: object, field: str) -> datetime:
    """Parse "yyyy-MM-dd HH:mm:ss" (Beijing time unless an offset is given) to an aware datetime."""
    if not isinstance(value, str):
        raise PayloadError(field, "time must be text like 2024-06-18 10:00:00")
    match = _PLATFORM_TIME.fullmatch(value.strip())
    if match is None:
        raise PayloadError(field, "time is not in yyyy-MM-dd HH:mm:ss form")
    try:
        naive = datetime.fromisoformat(f"{match.group('date')}T{match.group('time')}")
        if match.group("frac"):
            micros = int(match.group("frac")[1:].ljust(6, "0"))
            naive = naive.replace(microsecond=micros)
    except ValueError:
        raise PayloadError(field, "time is not a valid calendar date") from None
    offset = match.group("offset")
    if offset is None:
        return naive.replace(tzinfo=BEIJING)
    if offset == "Z":
        return naive.replace(tzinfo=timezone.utc)
    sign = 1 if offset[0] == "+" else -1
    digits = offset[1:].replace(":", "")
    delta = timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    if delta >= timedelta(hours=24):
        raise PayloadError(field, "time offset out of range")
    return naive.replace(tzinfo=timezone(sign * delta))


def parse_optional_platform_time(value: object, field: str) -> datetime | None:
    """Like parse_platform_time, but None/"" (platforms send "" for 'not yet') give None."""
    if value is None or value == "":
        return None
    return parse_platform_time(value, field)


def from_epoch_seconds(value: object, field: str) -> datetime | None:
    """Unix seconds (Douyin) to an aware datetime at +08:00; 0 or None mean 'not set'."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(field, "time must be integer Unix seconds")
    if value == 0:
        return None
    if value < 0 or value > _MAX_EPOCH:
        raise PayloadError(field, "time is out of range")
    return datetime.fromtimestamp(value, BEIJING)


def parse_rfc3339(value: object, field: str) -> datetime:
    """RFC 3339 with an offset (WeChat Pay "2018-06-08T10:34:56+08:00") to an aware datetime."""
    if not isinstance(value, str):
        raise PayloadError(field, "time must be RFC 3339 text")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise PayloadError(field, "time is not RFC 3339") from None
    if parsed.tzinfo is None:
        raise PayloadError(field, "time has no offset")
    return parsed


def parse_aware(value: object, field: str) -> datetime:
    """ISO-8601 text that must carry an offset (our own mini-program JSON)."""
    return parse_rfc3339(value, field)


def format_top_timestamp(moment: datetime) -> str:
    """TOP / JOS request timestamp: "yyyy-MM-dd HH:mm:ss" in Beijing time."""
    return moment.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")


def format_jos_timestamp(moment: datetime) -> str:
    """JOS request timestamp with millis and offset, as in JD's signing example."""
    local = moment.astimezone(BEIJING)
    return local.strftime("%Y-%m-%d %H:%M:%S.") + f"{local.microsecond // 1000:03d}+0800"
