"""Helpers shared by the outbound adapter tests: independent signature checks, fuzz settings."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timedelta, timezone

from hypothesis import HealthCheck, settings

BJ = timezone(timedelta(hours=8))
NOW = datetime(2024, 6, 18, 10, 0, 0, 123000, tzinfo=BJ)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def md5_wrapped(secret: str, params: dict[str, str]) -> str:
    """UPPER(md5(secret + sorted key+value + secret)), written here without the adapters."""
    concat = "".join(k + v for k, v in sorted(params.items()) if k != "sign" and v != "")
    return hashlib.md5((secret + concat + secret).encode()).hexdigest().upper()


def douyin_sign(app_key: str, secret: str, method: str, param_json: str, timestamp: str) -> str:
    pattern = f"{secret}app_key{app_key}method{method}param_json{param_json}timestamp{timestamp}v2{secret}"
    return hmac.new(secret.encode(), pattern.encode(), hashlib.sha256).hexdigest()
