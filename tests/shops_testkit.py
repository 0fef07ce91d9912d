"""Shared helpers for the shop / outbox / dispatcher tests: shops pointed at the fake platforms
of tests/fakes/platforms.py, and a dispatcher run until the outbox is quiet."""

from __future__ import annotations

import asyncio
import time

from oms.channels.config import ChannelsConfig
from oms.channels.dispatcher import Dispatcher, DispatcherSettings

FAST = DispatcherSettings(lease_s=2.0, backoff_initial_s=0.05, backoff_max_s=0.3, idle_s=0.05, resync_every_s=0,
                          max_attempts=4)


def creds_of(channel: str, fake) -> dict:  # noqa: ANN001 - a tests.fakes.platforms fake
    if channel == "tmall":
        return {"app_key": fake.creds.app_key, "app_secret": fake.creds.app_secret, "session": fake.creds.session}
    if channel in ("jd", "douyin"):
        return {"app_key": fake.creds.app_key, "app_secret": fake.creds.app_secret,
                "access_token": fake.creds.access_token}
    return {"access_token": fake.access_token, "mchid": "1900000001"}


async def make_shop(client, shop_id: str, channel: str, fake=None, *, share: dict | None = None,  # noqa: ANN001
                    serves: dict | None = None, **extra) -> dict:
    body = {"channel": channel, "name": shop_id, "share": share or {"kind": "all"},
            "serves": serves or {"modes": ["ship"]}, **extra}
    if fake is not None:
        body["credentials"] = creds_of(channel, fake)
        body["api_url"] = fake.url
    r = await client.put(f"/shops/{shop_id}", json=body)
    assert r.status_code in (200, 201), r.text
    return r.json()


async def list_sku(client, shop_id: str, sku: str, platform_sku_id: str, item: str = "",  # noqa: ANN001
                   store: str | None = None) -> None:
    body = {"platform_sku_id": platform_sku_id, "platform_item_id": item}
    if store:
        body["platform_store_id"] = store
    r = await client.put(f"/shops/{shop_id}/listings/{sku}", json=body)
    assert r.status_code == 200, r.text


def dispatcher(services, settings: DispatcherSettings = FAST) -> Dispatcher:  # noqa: ANN001
    return Dispatcher(services, ChannelsConfig(), settings)


async def drain(d: Dispatcher, *, quiet_passes: int = 2, timeout: float = 20.0) -> None:
    """Run passes until `quiet_passes` in a row do nothing (leases and backoffs waited out)."""
    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < quiet_passes:
        assert time.monotonic() < deadline, "the dispatcher did not settle"
        if await d.run_once():
            quiet = 0
        else:
            quiet += 1
            await asyncio.sleep(0.06)


async def sellable(client, shop_id: str, sku: str) -> dict:  # noqa: ANN001
    r = await client.get(f"/shops/{shop_id}/sellable", params={"sku": sku})
    assert r.status_code == 200, r.text
    return r.json()
