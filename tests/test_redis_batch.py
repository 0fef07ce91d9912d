"""The Redis batcher on the real Redis: shared round trips, replies and errors to the right caller."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError

from oms.stock import inventory
from oms.stock.inventory import Inventory
from oms.stock.redis_batch import RedisBatcher


def _unpack(packed: bytes) -> tuple[str, ...]:
    """A RESP-packed command back to its arguments (bulk strings are plain text here)."""
    parts = packed.split(b"\r\n")  # *N, then $len and the argument for each of the N
    n = int(parts[0][1:])
    return tuple(p.decode() for p in parts[2 : 2 + 2 * n : 2])


def _counting(batcher: RedisBatcher) -> list[list[tuple]]:
    """Record every pipeline the batcher sends (it still goes to Redis)."""
    sent: list[list[tuple]] = []
    real = batcher._pipeline

    async def spy(wire):
        sent.append([_unpack(w) for w in wire])
        return await real(wire)

    batcher._pipeline = spy
    return sent


async def test_concurrent_commands_share_round_trips_and_each_gets_its_own_reply(services, uid):
    batcher = RedisBatcher(services.redis, inventory.avail_key)
    sent = _counting(batcher)
    key = f"test:batch:{uid}"
    replies = await asyncio.gather(*(batcher.command("RPUSH", key, i) for i in range(200)))

    assert sorted(replies) == list(range(1, 201))  # every caller saw its own push's reply
    assert [int(v) for v in await services.redis.lrange(key, 0, -1)] == list(range(200))  # in queue order
    assert len(sent) <= 2  # one pipeline for the turn, at most one more for late arrivals
    await services.redis.delete(key)


async def test_reads_of_one_node_merge_into_one_hmget(services, uid):
    node, other = f"bn-{uid}", f"bo-{uid}"
    await services.redis.hset(inventory.avail_key(node), mapping={"a": 3, "b": 5})
    await services.redis.hset(inventory.avail_key(other), mapping={"a": 7})
    batcher = RedisBatcher(services.redis, inventory.avail_key)
    sent = _counting(batcher)

    first, second, third = await asyncio.gather(
        batcher.read_available([node], ["a"]),
        batcher.read_available([node, other], ["b", "c"]),
        batcher.read_available([other], ["a"]),
    )

    # each caller sees exactly the nodes and SKUs it asked for, whatever the others asked
    assert first == {node: {"a": 3}}
    assert second == {node: {"b": 5, "c": 0}, other: {"b": 0, "c": 0}}
    assert third == {other: {"a": 7}}
    hmgets = [cmd for batch in sent for cmd in batch if cmd[0] == "HMGET"]
    assert sorted(h[1] for h in hmgets) == sorted([inventory.avail_key(node), inventory.avail_key(other)])
    mine, theirs = await asyncio.gather(batcher.read_available([node], ["a"]), batcher.read_available([node], ["a"]))
    mine[node]["a"] = 0  # a caller may change what it got: nobody else sees it
    assert theirs[node]["a"] == 3
    await services.redis.delete(inventory.avail_key(node), inventory.avail_key(other))


async def test_a_command_error_reaches_only_its_caller(services, uid):
    key = f"test:batch-str:{uid}"
    await services.redis.set(key, "not a list")
    batcher = RedisBatcher(services.redis, inventory.avail_key)

    results = await asyncio.gather(batcher.command("LPUSH", key, "x"), batcher.command("GET", key),
                                   batcher.command("INCR", f"{key}:n"), return_exceptions=True)

    assert isinstance(results[0], ResponseError) and "WRONGTYPE" in str(results[0])
    assert results[1] == b"not a list" and results[2] == 1
    await services.redis.delete(key, f"{key}:n")


async def test_an_argument_redis_cannot_take_fails_only_its_caller(services, uid):
    batcher = RedisBatcher(services.redis, inventory.avail_key)
    results = await asyncio.gather(batcher.command("SET", f"test:ok:{uid}", "v"),
                                   batcher.command("SET", f"test:bad:{uid}", None), return_exceptions=True)
    assert results[0] == b"OK"
    assert isinstance(results[1], DataError)
    assert await services.redis.exists(f"test:bad:{uid}") == 0
    await services.redis.delete(f"test:ok:{uid}")


async def test_a_lost_connection_fails_its_batch_and_the_next_batch_works(services, uid):
    batcher = RedisBatcher(services.redis, inventory.avail_key)
    # QUIT makes Redis close this connection after replying: the PING behind it never answers
    results = await asyncio.gather(batcher.command("QUIT"), batcher.command("PING"), return_exceptions=True)
    assert isinstance(results[1], RedisConnectionError)

    assert await batcher.command("PING") == b"PONG"  # a fresh connection, nothing left over


async def test_reserve_loads_the_script_again_after_redis_forgot_it(services, uid):
    inv = Inventory(services.redis)
    node, sku = f"ns-{uid}", "s"
    await inventory.install(services.redis, {node: inventory.NodeStock()}, inventory.new_generation())
    await inv.set_on_hand(node, sku, 5)
    await services.redis.script_flush()

    res = await inv.reserve(node, f"f-{uid}", [(sku, 2)])

    assert res.ok and not res.already
    assert (await inv.available([node], [sku]))[node][sku] == 3
    assert (await inv.reserve(node, f"f-{uid}", [(sku, 2)])).already  # still idempotent


@pytest.mark.parametrize("nodes, skus", [([], ["a"]), (["n"], [])])
async def test_an_empty_read_answers_without_redis(services, nodes, skus):
    batcher = RedisBatcher(services.redis, inventory.avail_key)
    sent = _counting(batcher)
    assert await batcher.read_available(nodes, skus) == {}
    assert sent == []
