"""The whole service on a Redis Cluster of a test module's own (for tests that kill its masters)."""

from __future__ import annotations

from contextlib import asynccontextmanager

import httpx
from dbkit import fresh_database

from oms.config import Settings
from oms.infra.redis_cluster_local import start_cluster


@asynccontextmanager
async def service_on_own_cluster(settings, directory, dbname_prefix: str):
    """A cluster and a database of the caller's own (a test may kill a master), the service on
    them, and an admin client: yields (cluster, services, client)."""
    from oms.app import create_app
    from oms.wiring import Services

    cluster = start_cluster(directory, masters=3)
    try:
        async with fresh_database(settings, dbname_prefix) as url:
            s = Settings(database_url=url, redis_url=cluster.url, data_dir=settings.data_dir,
                         admin_token=settings.admin_token, write_batch_max=256, pg_pool_size=10)
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
    finally:
        cluster.stop()
