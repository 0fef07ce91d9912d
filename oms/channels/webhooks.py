"""Webhook handlers, free of any web framework: raw bytes + headers in, `WebhookReply` out.

The Litestar routes only read the body and headers, call one of these, and answer
`Response(reply.body, status_code=reply.status, media_type=reply.content_type)`:

    POST /webhooks/douyin       handle_douyin(raw, headers, ...)
    POST /webhooks/tmall        handle_tmall_relay(raw, query, ...)
    POST /webhooks/jd           handle_jd_relay(raw, ...)
    POST /webhooks/miniprogram  handle_miniprogram(raw, headers, ...)   (order push or WeChat Pay)

Answers follow each platform's rules, all built from one table (oms/channels/replies.py): 2xx
only when every message was recorded; a wrong signature 401 with nothing stored; bad input 400
naming the field; a temporary failure (platform API down, core unavailable) 503 so the platform
retries — safe because intake is idempotent.
Every rejected push is logged with the channel, the reason and the message id, never buyer data.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache

import httpx
import msgspec

from adapters import douyin, jd, miniprogram, tmall
from adapters.common import WebhookReply
from adapters.errors import AdapterError
from adapters.normalized import Channel, ChannelEvent, ChannelEventKind
from oms.channels import replies
from oms.channels.config import DouyinConfig, JdConfig, MiniprogramConfig, TmallConfig
from oms.channels.fetch import FetchError, fetch_douyin_order, fetch_jd_order, fetch_tmall_trade
from oms.channels.ports import Intake, IntakeError, SkuMapSource, StaticSkuMap
from oms.channels.rejections import log_rejection
from oms.channels.replies import Platform

log = logging.getLogger("oms.channels.webhooks")

_NO_SKU_MAP = StaticSkuMap()


class _Outcome:
    """Collects per-message results of one push: refusals, and whether a retry is needed."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.errors: list[dict[str, str]] = []
        self.retry = False
        self._status = 0

    @property
    def status(self) -> int:
        """The HTTP status for the refusals: the highest 4xx seen (400 by default)."""
        return self._status or 400

    def refuse(self, error: AdapterError) -> None:
        log_rejection(self.channel, error.message, error.message_id, error.field)
        self._count(replies.status_of(error), error.describe())

    def _count(self, status: int, description: dict[str, str]) -> None:
        if status >= 500:
            self.retry = True
        else:
            self._status = max(self._status, status)
            self.errors.append(description)

    async def deliver(self, intake: Intake, event: ChannelEvent) -> None:
        """Hand one event to the core, sorting failures into 'refused' and 'retry later'."""
        try:
            await intake.handle(event)
        except IntakeError as exc:
            log_rejection(self.channel, exc.reason, event.message_id, exc.field)
            self._count(replies.status_of(exc),
                        {"error": "IntakeError", "message": exc.reason, "message_id": event.message_id})
        except AdapterError as exc:
            self.refuse(exc.with_message_id(event.message_id))
        except Exception:  # noqa: BLE001 - the core failed: the platform must retry, not get a 500
            log.exception("%s message %s: intake failed, asking for a retry", self.channel.value, event.message_id)
            self.retry = True

    def reply(self, platform: Platform) -> WebhookReply:
        """Retry when anything must come back, else name the refused, else all recorded."""
        if self.retry:
            return replies.retry(platform, self.errors)
        if self.errors:
            return replies.refused(platform, self.status, self.errors)
        return replies.ok(platform)


def _fetch_failed(outcome: _Outcome, event: ChannelEvent, exc: Exception) -> None:
    """The full order could not be read now (platform down, mapping table unavailable): retry."""
    if isinstance(exc, FetchError):
        log.warning("%s message %s: order fetch failed (%s), asking for a retry",
                    outcome.channel.value, event.message_id, exc)
    else:
        log.exception("%s message %s: could not prepare the order, asking for a retry",
                      outcome.channel.value, event.message_id)
    outcome.retry = True


async def _with_order(event: ChannelEvent, fetched) -> ChannelEvent:  # noqa: ANN001
    order = await fetched
    # the fetched order is the freshest truth about its status (a 'created' push may arrive
    # after the buyer already paid)
    return msgspec.structs.replace(event, order=order, status=order.status)


# ---------------------------------------------------------------------------- Douyin


async def handle_douyin(
    raw: bytes,
    headers: Mapping[str, str],
    *,
    config: DouyinConfig | None,
    intake: Intake,
    client: httpx.AsyncClient,
    sku_maps: SkuMapSource = _NO_SKU_MAP,
) -> WebhookReply:
    """A Douyin batch: each message verified/parsed on its own; good ones recorded even when
    another is refused (answer 400 listing the refused), {"code":0,"msg":"success"} when all
    are recorded, 503 when something must be retried."""
    if config is None:
        return replies.not_configured(Platform.DOUYIN, "douyin channel")
    try:
        items = douyin.parse_push(raw, headers, config.credentials)
    except AdapterError as exc:
        log_rejection(Channel.DOUYIN, exc.message, None, exc.field)
        return replies.rejected(Platform.DOUYIN, exc)
    outcome = _Outcome(Channel.DOUYIN)
    sku_map = None
    for item in items:
        if item.error is not None:
            outcome.refuse(item.error)
            continue
        event = item.event
        assert event is not None
        if event.kind is ChannelEventKind.UPSERT:
            try:
                if sku_map is None:
                    sku_map = await sku_maps.sku_map(Channel.DOUYIN)
                event = await _with_order(
                    event, fetch_douyin_order(client, event.external_id, config, sku_map=sku_map)
                )
            except AdapterError as exc:
                outcome.refuse(exc.with_message_id(event.message_id))
                continue
            except Exception as exc:  # noqa: BLE001 - platform API or mapping table unavailable
                _fetch_failed(outcome, event, exc)
                continue
        await outcome.deliver(intake, event)
    return outcome.reply(Platform.DOUYIN)


# ---------------------------------------------------------------------------- Tmall relay


async def handle_tmall_relay(
    raw: bytes,
    query: Mapping[str, str],
    *,
    config: TmallConfig | None,
    intake: Intake,
    client: httpx.AsyncClient,
    sku_maps: SkuMapSource = _NO_SKU_MAP,
    now: datetime | None = None,
) -> WebhookReply:
    """A TMC message relayed by a push gateway, TOP-signed over the query and the body."""
    if config is None:
        return replies.not_configured(Platform.TMALL_RELAY, "tmall channel")
    try:
        event = tmall.parse_relay(raw, query, config.credentials, now=now)
    except AdapterError as exc:
        log_rejection(Channel.TMALL, exc.message, exc.message_id, exc.field)
        return replies.rejected(Platform.TMALL_RELAY, exc)
    outcome = _Outcome(Channel.TMALL)
    if event.kind is ChannelEventKind.UPSERT:
        try:
            sku_map = await sku_maps.sku_map(Channel.TMALL)
            event = await _with_order(event, fetch_tmall_trade(client, event.external_id, config, sku_map=sku_map))
        except AdapterError as exc:
            outcome.refuse(exc.with_message_id(event.message_id))
        except Exception as exc:  # noqa: BLE001
            _fetch_failed(outcome, event, exc)
    if not outcome.errors and not outcome.retry:
        await outcome.deliver(intake, event)
    return outcome.reply(Platform.TMALL_RELAY)


# ---------------------------------------------------------------------------- JD relay


async def handle_jd_relay(
    raw: bytes,
    *,
    config: JdConfig | None,
    intake: Intake,
    client: httpx.AsyncClient,
    sku_maps: SkuMapSource = _NO_SKU_MAP,
    now: datetime | None = None,
) -> WebhookReply:
    """A JD order message relayed by a push gateway (JOS-signed form); the order is fetched."""
    if config is None:
        return replies.not_configured(Platform.JD_RELAY, "jd channel")
    try:
        event = jd.parse_relay(raw, config.credentials, now=now)
    except AdapterError as exc:
        log_rejection(Channel.JD, exc.message, exc.message_id, exc.field)
        return replies.rejected(Platform.JD_RELAY, exc)
    outcome = _Outcome(Channel.JD)
    if event.kind is not ChannelEventKind.IGNORE:
        try:
            sku_map = await sku_maps.sku_map(Channel.JD)
            full = await fetch_jd_order(client, event.external_id, config, sku_map=sku_map)
            # keep the relay's message id and bytes (the inbox key), take the rest from the order
            event = msgspec.structs.replace(
                full, message_id=event.message_id, raw=event.raw, topic=event.topic
            )
        except AdapterError as exc:
            outcome.refuse(exc.with_message_id(event.message_id))
        except Exception as exc:  # noqa: BLE001
            _fetch_failed(outcome, event, exc)
    if not outcome.errors and not outcome.retry:
        await outcome.deliver(intake, event)
    return outcome.reply(Platform.JD_RELAY)


# ---------------------------------------------------------------------------- mini-program


@lru_cache(maxsize=4)
def _public_key(pem: str):  # noqa: ANN202 - cryptography key type
    return miniprogram.load_platform_public_key(pem)


async def handle_miniprogram(
    raw: bytes,
    headers: Mapping[str, str],
    *,
    config: MiniprogramConfig | None,
    intake: Intake,
    sku_maps: SkuMapSource = _NO_SKU_MAP,
    now: datetime | None = None,
) -> WebhookReply:
    """Our mini-program's order push, or a WeChat Pay v3 notification (told apart by headers)."""
    clock = now.timestamp() if now is not None else None
    if miniprogram.is_wechatpay_notification(headers):
        return await _wechatpay(raw, headers, config=config, intake=intake, clock=clock)
    if config is None or not config.push_secret:
        return replies.not_configured(Platform.MINIPROGRAM_PUSH, "mini-program push")
    try:
        miniprogram.verify_order_push(raw, headers, config.push_secret, now=clock)
        try:
            sku_map = await sku_maps.sku_map(Channel.MINIPROGRAM)
        except Exception:  # noqa: BLE001 - mapping table unavailable: ask for a retry
            log.exception("mini-program push: SKU mapping table unavailable")
            return replies.retry(Platform.MINIPROGRAM_PUSH)
        event = miniprogram.parse_order_push(raw, headers, config.push_secret, sku_map=sku_map, now=clock)
    except AdapterError as exc:
        log_rejection(Channel.MINIPROGRAM, exc.message, exc.message_id, exc.field)
        return replies.rejected(Platform.MINIPROGRAM_PUSH, exc)
    outcome = _Outcome(Channel.MINIPROGRAM)
    await outcome.deliver(intake, event)
    return outcome.reply(Platform.MINIPROGRAM_PUSH)


async def _wechatpay(
    raw: bytes, headers: Mapping[str, str], *, config: MiniprogramConfig | None, intake: Intake, clock: float | None
) -> WebhookReply:
    if config is None or len(config.apiv3_key) != 32 or not config.platform_public_key_pem:
        return replies.not_configured(Platform.WECHATPAY, "WeChat Pay")
    try:
        event = miniprogram.parse_wechatpay_notification(
            raw,
            headers,
            public_key=_public_key(config.platform_public_key_pem),
            apiv3_key=config.apiv3_key,
            now=clock,
            expected_serial=config.platform_serial,
        )
    except AdapterError as exc:
        log_rejection(Channel.MINIPROGRAM, exc.message, exc.message_id, exc.field)
        return replies.rejected(Platform.WECHATPAY, exc)
    outcome = _Outcome(Channel.MINIPROGRAM)
    await outcome.deliver(intake, event)
    return outcome.reply(Platform.WECHATPAY)
