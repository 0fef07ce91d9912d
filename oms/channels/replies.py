"""The one table from an outcome to each platform's webhook reply (HTTP's is oms/api/errors.py).

A push ends one of four ways, the same on every channel: recorded (`ok`), refused with a 4xx
naming the messages and fields (`refused`, `rejected`), to be retried (`retry`: 503, safe because
intake is idempotent), or not configured (503). Only the bytes differ per platform, and those come
from its adapter (Douyin `{"code":…}`, WeChat Pay `{"code":"FAIL"}`, the TOP/JOS relays'
`{"success":…}`, our mini-program backend's `{"ok":…}`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import NamedTuple

import msgspec

from adapters import douyin, jd, miniprogram, tmall
from adapters.common import WebhookReply
from adapters.errors import AdapterError
from oms.channels.ports import IntakeError
from oms.errors import OmsError

RETRY = "temporarily unavailable, please retry"


class Platform(enum.StrEnum):
    DOUYIN = "douyin"
    TMALL_RELAY = "tmall"
    JD_RELAY = "jd"
    MINIPROGRAM_PUSH = "miniprogram"
    WECHATPAY = "wechatpay"


class ReplyFormat(NamedTuple):
    ok: Callable[[], WebhookReply]
    #: (status, message, [error descriptions]) -> the platform's failure reply
    fail: Callable[[int, str, list[dict[str, str]]], WebhookReply]


def _miniprogram_fail(status: int, message: str, errors: list[dict[str, str]]) -> WebhookReply:
    # our backend reads one refusal flat ({"ok":false,"error","message","field"}), several as a list
    body: dict = {"ok": False, **(errors[0] if len(errors) == 1 else {"message": message})}
    if len(errors) > 1:
        body["errors"] = errors
    return WebhookReply(status=status, body=msgspec.json.encode(body))


FORMATS: dict[Platform, ReplyFormat] = {
    Platform.DOUYIN: ReplyFormat(douyin.ack_success, lambda s, m, e: douyin.ack_error(s, m, e or None)),
    Platform.TMALL_RELAY: ReplyFormat(tmall.relay_ack_success, lambda s, m, e: tmall.relay_ack_error(s, m, e or None)),
    # the JD relay's contract has no error list: the message alone
    Platform.JD_RELAY: ReplyFormat(jd.relay_ack_success, lambda s, m, e: jd.relay_ack_error(s, m)),
    Platform.MINIPROGRAM_PUSH: ReplyFormat(miniprogram.order_push_ack_success, _miniprogram_fail),
    # WeChat Pay reads only {"code":"FAIL","message"}
    Platform.WECHATPAY: ReplyFormat(miniprogram.wechatpay_ack_success,
                                    lambda s, m, e: miniprogram.wechatpay_ack_error(s, m)),
}


def status_of(exc: BaseException) -> int:
    """The status a typed failure answers a platform with; anything untyped is temporary (503)."""
    if isinstance(exc, AdapterError):
        return exc.status
    if isinstance(exc, IntakeError):
        return exc.status
    if isinstance(exc, OmsError):
        return exc.status_code
    return 503


def ok(platform: Platform) -> WebhookReply:
    return FORMATS[platform].ok()


def retry(platform: Platform, errors: Sequence[dict[str, str]] = ()) -> WebhookReply:
    return FORMATS[platform].fail(503, RETRY, list(errors))


def not_configured(platform: Platform, what: str) -> WebhookReply:
    return FORMATS[platform].fail(503, f"{what} is not configured", [])


def rejected(platform: Platform, exc: AdapterError) -> WebhookReply:
    """The whole push was refused before any message was read (signature, body)."""
    return FORMATS[platform].fail(exc.status, exc.message, [exc.describe()])


def refused(platform: Platform, status: int, errors: Sequence[dict[str, str]]) -> WebhookReply:
    """Some messages were refused (the others, if any, are recorded)."""
    message = errors[0].get("message", "refused") if len(errors) == 1 else "some messages were refused"
    return FORMATS[platform].fail(status, message, list(errors))
