"""The node directory under a stampede: one reload at a time, and requests never wait for it."""

from __future__ import annotations

import asyncio

from oms.network.directory import NodeDirectory
from oms.infra.db import Q


class CountingPool:
    """The real pool, with a count of the queries sent through it."""

    def __init__(self, pool) -> None:
        self.pool = pool
        self.sent: list[str] = []
        self.open = asyncio.Event()  # queries wait for it: a slow count, as under load
        self.open.set()

    async def fetch(self, query: str, *args):
        self.sent.append(query)
        await self.open.wait()
        return await self.pool.fetch(query, *args)


async def test_the_first_refresh_waits_for_the_nodes(services, world):
    await world.node("dir-first", 31.23, 121.47)
    directory = NodeDirectory(CountingPool(services.pool))
    await directory.refresh()
    assert world.id("dir-first") in directory.nodes


async def test_a_burst_of_requests_on_stale_nodes_runs_one_reload_and_nobody_waits(services, world):
    await world.node("dir-burst", 31.23, 121.47)
    counting = CountingPool(services.pool)
    directory = NodeDirectory(counting)
    await directory.refresh()
    counting.sent.clear()
    directory._loaded_at = directory._loads_at = 1.0  # long ago: both the nodes and the loads are stale
    counting.open.clear()

    # all 100 return while the reload is still held up: they go on with what the directory holds
    await asyncio.wait_for(asyncio.gather(*(directory.refresh() for _ in range(100))), timeout=30)
    assert not directory._task.done()
    counting.open.set()
    await directory._task

    assert counting.sent == [Q["nodes_all"], Q["open_picks_per_node"]]  # once each, not 100 times
    assert world.id("dir-burst") in directory.nodes


class ReadThenHoldPool:
    """The real pool; the first query's answer is held back until `release` (read early, late back)."""

    def __init__(self, pool) -> None:
        self.pool = pool
        self.release = asyncio.Event()
        self.first = True

    async def fetch(self, query: str, *args):
        rows = await self.pool.fetch(query, *args)
        if self.first:
            self.first = False
            await self.release.wait()
        return rows


async def test_a_background_reload_that_read_before_a_node_was_added_does_not_undo_the_forced_one(services, world):
    await world.node("dir-old", 31.23, 121.47)
    pool = ReadThenHoldPool(services.pool)
    directory = NodeDirectory(pool)
    stale = asyncio.get_running_loop().create_task(directory._reload())  # reads the nodes now, answers late
    await asyncio.sleep(0.05)
    await world.node("dir-new", 31.24, 121.48)
    await directory.refresh(force=True)  # what PUT /nodes does: the new node is known at once
    assert world.id("dir-new") in directory.nodes
    pool.release.set()
    await stale
    assert world.id("dir-new") in directory.nodes and world.id("dir-old") in directory.nodes
