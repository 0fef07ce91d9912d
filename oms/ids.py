"""Identifiers: short, time-ordered, unguessable enough for URLs."""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def _b36(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 36)
        out.append(_ALPHABET[r])
    return "".join(reversed(out))


def new_id(prefix: str) -> str:
    """`prefix` + milliseconds (base 36, sorts by time) + 50 random bits."""
    return f"{prefix}{_b36(int(time.time() * 1000), 9)}{_b36(secrets.randbits(50), 10)}"


def id_age_s(value: str, prefix_len: int = 1) -> float:
    """Seconds since an id from `new_id` was made (its time part), or 0 when it is not one."""
    stamp = value[prefix_len : prefix_len + 9]
    try:
        ms = int(stamp, 36)
    except ValueError:
        return 0.0
    return max(time.time() - ms / 1000, 0.0)
