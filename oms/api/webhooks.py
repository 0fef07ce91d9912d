"""Channel webhooks: `POST /webhooks/{douyin|tmall|jd|miniprogram}` (no admin token: the platforms sign).

Each route reads the exact raw body (signatures are over the bytes received), calls the
framework-free handler in oms/channels/webhooks.py and answers exactly its `WebhookReply`
(status, bytes, content type) — the acknowledgement each platform expects.

Per app, created on first use (`runtime(app)`): the channel configuration read from the OMS_*
environment (oms/channels/config.py), one shared httpx.AsyncClient for the order fetches, the
core's `ServiceIntake`, and the SKU mapping table source. `configure(app, config)` replaces the
configuration (tests; a reload after the environment changed); `aclose(app)` closes the client.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qs

from litestar import Litestar, Request, Response, post

from adapters.common import WebhookReply
from oms.ops import metrics
from oms.channels.inbox import PgSkuMapSource, ServiceIntake
from adapters.normalized import Channel
from oms.channels.config import ChannelsConfig, load_config
from oms.channels.shops import ShopIntake, ShopResolver, ensure_default_shops, shop_for_push
from oms.channels.webhooks import handle_douyin, handle_jd_relay, handle_miniprogram, handle_tmall_relay

_STATE_KEY = "channel_runtime"


class ChannelRuntime:
    """What the webhook routes of one app share: config, HTTP client, intake, SKU mapping."""

    def __init__(self, services, config: ChannelsConfig) -> None:  # noqa: ANN001 - oms.services.Services
        import httpx

        self.services = services
        self.config = config
        self.intake = ServiceIntake(services)
        self.sku_maps = PgSkuMapSource(services.pool)
        self.shops = ShopResolver(services.pool)
        self._defaults_ready = False
        self._httpx = httpx
        self._client = None

    @property
    def client(self):  # noqa: ANN201 - httpx.AsyncClient
        if self._client is None or self._client.is_closed:
            self._client = self._httpx.AsyncClient(
                limits=self._httpx.Limits(max_connections=100, max_keepalive_connections=20),
                headers={"User-Agent": "oms-channels"},
            )
        return self._client

    async def for_push(self, channel: Channel, app_key: str | None) -> tuple[object, ShopIntake]:
        """The shop a message is for (by its app key): its configuration, and an intake stamping it."""
        if not self._defaults_ready:
            await ensure_default_shops(self.services.pool, self.config)
            self._defaults_ready = True
        config, shop_id = await shop_for_push(self.shops, channel, app_key, self.config)
        return config, ShopIntake(self.intake, shop_id)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def runtime(app: Litestar) -> ChannelRuntime:
    """The app's channel runtime, created at the first webhook from the environment."""
    rt = app.state.get(_STATE_KEY)
    services = app.state.services
    if rt is None or rt.services is not services:
        rt = ChannelRuntime(services, load_config())
        app.state[_STATE_KEY] = rt
    return rt


def configure(app: Litestar, config: ChannelsConfig | None = None) -> ChannelRuntime:
    """Set the channels' configuration (None: read the OMS_* environment again)."""
    rt = runtime(app)
    rt.config = config if config is not None else load_config()
    rt._defaults_ready = False
    return rt


async def aclose(app: Litestar) -> None:
    rt = app.state.get(_STATE_KEY)
    if rt is not None:
        await rt.aclose()


def _answer(reply: WebhookReply, channel: str, started: float) -> Response[bytes]:
    metrics.WEBHOOK_SECONDS.labels(channel).observe(time.perf_counter() - started)
    return Response(content=reply.body, status_code=reply.status, media_type=reply.content_type or None)


def _form_value(raw: bytes, name: str) -> str | None:
    """One field of a form body, without judging the rest (the adapter does that)."""
    try:
        values = parse_qs(raw.decode("utf-8"), keep_blank_values=True).get(name)
    except (UnicodeDecodeError, ValueError):
        return None
    return values[0] if values else None


def _headers(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.headers.items()}


@post("/webhooks/douyin", status_code=200, tags=["webhooks"], summary="Douyin shop message push (event-sign)",
      description="Body: a JSON array of {tag, msg_id, data}. Answer {\"code\":0,\"msg\":\"success\"} when "
                  "every message is recorded; 401 wrong signature (nothing stored); 400 names refused messages; "
                  "503 retry.")
async def douyin_webhook(request: Request) -> Response[bytes]:
    started = time.perf_counter()
    rt = runtime(request.app)
    raw = await request.body()
    headers = _headers(request)
    config, intake = await rt.for_push(Channel.DOUYIN, headers.get("app-id"))
    reply = await handle_douyin(raw, headers, config=config, intake=intake, client=rt.client, sku_maps=rt.sku_maps)
    return _answer(reply, "douyin", started)


@post("/webhooks/tmall", status_code=200, tags=["webhooks"], summary="Taobao TMC message from a push relay (TOP-signed)")
async def tmall_webhook(request: Request) -> Response[bytes]:
    started = time.perf_counter()
    rt = runtime(request.app)
    raw = await request.body()
    query = {k: v for k, v in request.query_params.items()}
    config, intake = await rt.for_push(Channel.TMALL, query.get("app_key"))
    reply = await handle_tmall_relay(raw, query, config=config, intake=intake, client=rt.client,
                                     sku_maps=rt.sku_maps)
    return _answer(reply, "tmall", started)


@post("/webhooks/jd", status_code=200, tags=["webhooks"], summary="JD order message from a push relay (JOS-signed)")
async def jd_webhook(request: Request) -> Response[bytes]:
    started = time.perf_counter()
    rt = runtime(request.app)
    raw = await request.body()
    config, intake = await rt.for_push(Channel.JD, _form_value(raw, "app_key"))
    reply = await handle_jd_relay(raw, config=config, intake=intake, client=rt.client, sku_maps=rt.sku_maps)
    return _answer(reply, "jd", started)


@post("/webhooks/miniprogram", status_code=200, tags=["webhooks"],
      summary="Mini-program order push (HMAC) or WeChat Pay API v3 notification (RSA)",
      description="WeChat Pay: 204 without a body when recorded, 4xx/5xx {\"code\":\"FAIL\",\"message\"} "
                  "otherwise. Order push: 200 {\"ok\":true}.")
async def miniprogram_webhook(request: Request) -> Response[bytes]:
    started = time.perf_counter()
    rt = runtime(request.app)
    raw = await request.body()
    _, intake = await rt.for_push(Channel.MINIPROGRAM, None)
    reply = await handle_miniprogram(raw, _headers(request), config=rt.config.miniprogram, intake=intake,
                                     sku_maps=rt.sku_maps)
    return _answer(reply, "miniprogram", started)


ROUTES = [douyin_webhook, tmall_webhook, jd_webhook, miniprogram_webhook]
