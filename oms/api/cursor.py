"""Opaque page cursors: URL-safe base64 of the position, so they paste into a URL unescaped."""

from __future__ import annotations

import base64
import binascii

import msgspec

from oms.errors import InvalidInput


def encode(*position: str) -> str:
    raw = msgspec.json.encode(list(position))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str, parts: int, field: str) -> list[str]:
    """The position a cursor of this API holds; 400 naming `field` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        position = msgspec.json.decode(raw, type=list[str])
    except (binascii.Error, ValueError, msgspec.DecodeError):
        position = None
    if position is None or len(position) != parts:
        raise InvalidInput(f"{field} is not a cursor this API returned", field=field)
    return position
