"""A newcomer's small expectations: GET /skus, URL-safe order cursors, the admin token on the store
API, /metrics behind the admin token, product names on pick lists, regions read from address text."""

from __future__ import annotations

import msgspec
import pytest

from oms.config import Settings


async def test_metrics_need_the_admin_token_unless_made_public(client, services, monkeypatch):
    assert (await client.get("/metrics", headers={"Authorization": ""})).status_code == 401
    wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["field"] == "authorization"
    assert (await client.get("/metrics")).status_code == 200
    monkeypatch.setattr(services, "settings", msgspec.structs.replace(services.settings, metrics_public=True))
    assert (await client.get("/metrics", headers={"Authorization": ""})).status_code == 200


def test_metrics_public_is_read_from_the_environment():
    assert Settings.from_env({"OMS_METRICS_PUBLIC": "1", "OMS_ADMIN_TOKEN": "t"}).metrics_public is True
    assert Settings.from_env({"OMS_ADMIN_TOKEN": "t"}).metrics_public is False
