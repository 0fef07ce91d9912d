"""The whole service on a Redis Cluster of a test module's own (for tests that kill its masters)."""

from __future__ import annotations

import secrets
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from oms.config import Settings
from oms.infra.redis_cluster_local import start_cluster


@asynccontextmanager
async def service_on_own_cluster(settings, directory, dbname_prefix: str):
    """A cluster and a database of the caller's own (a test may kill a master), the service on
    them, and an admin client: yields (cluster, services, client)."""
    from oms.app import create_app
    from oms.wiring import Services

    cluster = start_cluster(directory, masters=3)
    parts = urlsplit(settings.database_url)
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    dbname = dbname_prefix + secrets.token_hex(4)
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'create database "{dbname}"')
    await admin.close()
    s = Settings(database_url=urlunsplit(parts._replace(path="/" + dbname)), redis_url=cluster.url,
                 data_dir=settings.data_dir, admin_token=settings.admin_token, write_batch_max=256, pg_pool_size=10)
    services = await Services.start(s)
    app = create_app(s)
    app.state.services = services
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://oms.test", timeout=120,
                               headers={"Authorization": f"Bearer {settings.admin_token}"})
    try:
        yield cluster, services, client
    finally:
        await client.aclose()
        await services.close()
        cluster.stop()
        admin = await asyncpg.connect(admin_url)
        await admin.execute(f'drop database if exists "{dbname}" with (force)')
        await admin.close()
