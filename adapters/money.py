"""Money: platform amounts become integer fen exactly, never through float.

Taobao and JD send yuan as decimal strings ("12.90"); Douyin and WeChat Pay send integer fen.
Parsing is done on the text itself (a regular expression and `int`), so "0.1 + 0.2" style
binary rounding can never creep in, and anything that is not plainly an amount is refused
with a `PayloadError` naming the field.
"""

from __future__ import annotations

import re

from adapters.errors import PayloadError

#: 10^13 fen = 100 billion yuan: far above any order, far below PostgreSQL bigint; a bound so a
#: mangled payload cannot smuggle a 5,000-digit integer into the database.
MAX_FEN = 10**13

# digits, optionally a dot and at least one digit; no sign, exponent, spaces or separators
_YUAN = re.compile(r"(?P<whole>[0-9]{1,12})(?:\.(?P<frac>[0-9]{1,8}))?")


def yuan_to_fen(value: object, field: str) -> int:
    """Convert a yuan amount ("12.90", "12.9", "12", or an int of whole yuan) to fen exactly.

    Refused: floats (already rounded by the sender's JSON), negatives, exponents, empty text,
    "12.", ".5", thousands separators, and amounts finer than one fen ("0.005").
    """
    if isinstance(value, bool) or value is None:
        raise PayloadError(field, "amount is missing or not a number")
    if isinstance(value, int):
        return fen(value * 100, field)
    if isinstance(value, float):
        # a JSON float has already lost exactness; the platforms we read send strings
        raise PayloadError(field, "amount must be a decimal string, not a float")
    if not isinstance(value, str):
        raise PayloadError(field, "amount must be a decimal string")
    match = _YUAN.fullmatch(value)
    if match is None:
        raise PayloadError(field, "amount is not a plain decimal yuan value like 12.90")
    frac = (match.group("frac") or "").rstrip("0")
    if len(frac) > 2:
        raise PayloadError(field, "amount is finer than one fen")
    return fen(int(match.group("whole")) * 100 + int(frac.ljust(2, "0")), field)


def fen(value: object, field: str) -> int:
    """Validate an amount that is already integer fen (Douyin, WeChat Pay)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(field, "amount must be an integer number of fen")
    if value < 0:
        raise PayloadError(field, "amount must not be negative")
    if value > MAX_FEN:
        raise PayloadError(field, "amount is implausibly large")
    return value


def fen_to_yuan(amount: int) -> str:
    """Format fen as a yuan string ("1290" -> "12.90"), for requests to yuan-based platforms."""
    if amount < 0:
        raise ValueError("negative amount")
    return f"{amount // 100}.{amount % 100:02d}"
