"""Identifiers: short, time-ordered, unguessable enough for URLs."""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


#: every two-digit base-36 string by value: a conversion takes half as many divisions
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]


def _b36(n: int, width: int) -> str:
    """n in base 36, zero-padded to `width` digits (n < 36**width)."""
    out = []
    for _ in range((width + 1) // 2):
        n, r = divmod(n, 1296)
        out.append(_PAIRS[r])
    text = "".join(reversed(out))
    return text[len(text) - width :]


_last_ms = -1
_last_stamp = ""


def new_id(prefix: str) -> str:
    """`prefix` + milliseconds (base 36, sorts by time) + 50 random bits."""
    global _last_ms, _last_stamp
    ms = int(time.time() * 1000)
    if ms != _last_ms:  # ids made within one millisecond share the time part
        _last_ms, _last_stamp = ms, _b36(ms, 9)
    return f"{prefix}{_last_stamp}{_b36(secrets.randbits(50), 10)}"


def id_age_s(value: str, prefix_len: int = 1) -> float:
    """Seconds since an id from `new_id` was made (its time part), or 0 when it is not one."""
    stamp = value[prefix_len : prefix_len + 9]
    try:
        ms = int(stamp, 36)
    except ValueError:
        return 0.0
    return max(time.time() - ms / 1000, 0.0)
