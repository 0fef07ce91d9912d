"""Real HTTP calls to the platforms' order APIs, built and parsed by the adapters.

The adapters describe each signed request (`HttpRequest`) and read each answer; this module only
sends it with httpx to the configured base URL. A transport failure or a non-2xx answer raises
`FetchError` (temporary: the caller answers 503 / does not confirm, so the platform retries);
an error envelope from the platform raises the adapter's `UpstreamError`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime

import httpx

from adapters import douyin, jd, tmall
from adapters.common import HttpRequest
from adapters.normalized import ChannelEvent, NormalizedOrder
from oms.channels.config import DouyinConfig, JdConfig, TmallConfig

log = logging.getLogger("oms.channels.fetch")

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)


class FetchError(Exception):
    """The platform could not be reached or answered non-2xx: try again later."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


async def send(client: httpx.AsyncClient, request: HttpRequest) -> bytes:
    """Send one adapter-built request; return the body bytes of a 2xx answer."""
    try:
        response = await client.request(
            request.method,
            request.url,
            params=request.params or None,
            data=request.form or None,
            content=request.body or None,
            headers=request.headers or None,
            timeout=DEFAULT_TIMEOUT,
        )
    except httpx.HTTPError as exc:
        # the URL may carry a token in its query: log the host only
        log.warning("platform call failed: %s %s", type(exc).__name__, httpx.URL(request.url).host)
        raise FetchError(f"{type(exc).__name__} calling {httpx.URL(request.url).host}") from exc
    if response.status_code // 100 != 2:
        raise FetchError(f"platform answered HTTP {response.status_code}", status=response.status_code)
    return response.content


async def fetch_douyin_order(
    client: httpx.AsyncClient, shop_order_id: str, config: DouyinConfig, *, sku_map: Mapping[str, str]
) -> NormalizedOrder:
    """order.orderDetail for one Douyin shop order."""
    request = douyin.build_order_detail_request(shop_order_id, config.credentials, base_url=config.api_url)
    return douyin.parse_order_detail_response(await send(client, request), sku_map=sku_map)


async def fetch_tmall_trade(
    client: httpx.AsyncClient, tid: str, config: TmallConfig, *, sku_map: Mapping[str, str]
) -> NormalizedOrder:
    """taobao.trade.fullinfo.get for one Taobao/Tmall trade."""
    request = tmall.build_fullinfo_request(tid, config.credentials, base_url=config.top_url)
    return tmall.parse_fullinfo_response(await send(client, request), sku_map=sku_map)


async def fetch_jd_order(
    client: httpx.AsyncClient, order_id: str, config: JdConfig, *, sku_map: Mapping[str, str]
) -> ChannelEvent:
    """jingdong.pop.order.get for one JD order, as a full ChannelEvent (kind from its state)."""
    request = jd.build_order_get_request(order_id, config.credentials, base_url=config.api_url)
    return jd.parse_order_get_response(await send(client, request), sku_map=sku_map)


async def search_jd_orders(
    client: httpx.AsyncClient,
    config: JdConfig,
    *,
    start: datetime,
    end: datetime,
    page: int,
    page_size: int,
    sku_map: Mapping[str, str],
) -> jd.SearchPage:
    """One page of jingdong.pop.order.search by modified time."""
    request = jd.build_search_request(
        config.credentials, start=start, end=end, page=page, page_size=page_size, base_url=config.api_url
    )
    return jd.parse_search_response(await send(client, request), sku_map=sku_map)
