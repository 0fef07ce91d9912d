"""The Redis batcher against a real three-master Redis Cluster: one pipeline per node per turn,
replies and errors to the right caller, redirections followed, a dead master failing only its
own callers."""

from __future__ import annotations

import asyncio
import secrets
import time

from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from oms.stock import inventory
from oms.stock.inventory import Inventory
from oms.stock.redis_batch import RedisBatcher, client, is_cluster_url


def _port_of(r, key: str) -> int:
    return r.nodes_manager.get_node_from_slot(key_slot(key.encode())).port


def _tags_per_master(r, cluster, prefix: str, per: int = 1) -> dict[int, list[str]]:
    """For each master's port, `per` hash-tag values whose keys live on that master."""
    out: dict[int, list[str]] = {m.port: [] for m in cluster.masters}
    i = 0
    while any(len(v) < per for v in out.values()):
        tag = f"{prefix}-{i}"
        port = _port_of(r, f"{{{tag}}}")
        if len(out[port]) < per:
            out[port].append(tag)
        i += 1
    return out


def _spy(batcher: RedisBatcher) -> list[tuple[int, int]]:
    """Record (node port, commands) for every pipeline the batcher sends to a node."""
    sent: list[tuple[int, int]] = []
    real = batcher._node_exchange

    async def spy(node, wire):
        sent.append((node.port, len(wire)))
        return await real(node, wire)

    batcher._node_exchange = spy
    return sent


def test_cluster_urls_are_told_apart():
    assert is_cluster_url("redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
    assert is_cluster_url("rediss+cluster://h:1")
    assert not is_cluster_url("redis://127.0.0.1:6379/0") and not is_cluster_url("unix://redis.sock")


async def test_the_url_names_several_seeds(redis_cluster, redis_cluster_url):
    r = client(redis_cluster_url)
    try:
        assert {n.port for n in r.nodes_manager.startup_nodes.values()} == {m.port for m in redis_cluster.masters}
        await r.initialize()
        assert {n.port for n in r.get_primaries()} == {m.port for m in redis_cluster.masters}
    finally:
        await r.aclose()


async def test_commands_on_every_shard_share_one_pipeline_per_node_and_each_gets_its_reply(cluster_redis, redis_cluster):
    uid = secrets.token_hex(3)
    tags = _tags_per_master(cluster_redis, redis_cluster, uid, per=4)
    batcher = RedisBatcher(cluster_redis, inventory.avail_key)
    sent = _spy(batcher)
    keys = [f"test:{{{t}}}:list" for ts in tags.values() for t in ts]

    replies = await asyncio.gather(*(batcher.command("RPUSH", k, n) for n in range(10) for k in keys))

    assert replies == [n + 1 for n in range(10) for _ in keys]  # each caller saw its own push
    for k in keys:
        assert [int(v) for v in await cluster_redis.lrange(k, 0, -1)] == list(range(10))
    assert {port for port, _ in sent} == set(tags)  # every shard took part
    assert len(sent) <= 2 * len(tags)  # one pipeline per node for the turn, at most one more
    assert sum(n for _, n in sent) == 10 * len(keys)
    await cluster_redis.delete(*keys)


async def test_reads_merge_per_node_across_shards(cluster_redis, redis_cluster):
    uid = secrets.token_hex(3)
    nodes = [ts[0] for ts in _tags_per_master(cluster_redis, redis_cluster, f"n{uid}").values()]
    for i, node in enumerate(nodes):
        await cluster_redis.hset(inventory.avail_key(node), mapping={"a": i + 1, "b": 10 * (i + 1)})
    batcher = RedisBatcher(cluster_redis, inventory.avail_key)

    first, second = await asyncio.gather(batcher.read_available(nodes, ["a"]), batcher.read_available(nodes[1:], ["b", "c"]))

    assert first == {n: {"a": i + 1} for i, n in enumerate(nodes)}
    assert second == {n: {"b": 10 * (i + 2), "c": 0} for i, n in enumerate(nodes[1:])}
    await asyncio.gather(*(cluster_redis.delete(inventory.avail_key(n)) for n in nodes))


async def marked(redis, nodes) -> None:
    """Give nodes their generation marker, as a rebuild from PostgreSQL does (oms/stock/fence.py):
    the scripts refuse to set or reserve stock on a node Redis has not been given."""
    await inventory.install(redis, {n: inventory.NodeStock() for n in nodes}, inventory.new_generation())


async def test_a_pass_over_more_nodes_than_a_connection_pool_holds_runs_every_script(cluster_redis, redis_cluster):
    # redis-py's cluster client fails a call at once when its node's pool (64) is taken: the
    # reconciler's full pass over hundreds of stores must not start every script at once
    uid = secrets.token_hex(3)
    nodes = [t for ts in _tags_per_master(cluster_redis, redis_cluster, f"p{uid}", per=100).values() for t in ts]
    calls = [([inventory.avail_key(n)], ["x", i]) for i, n in enumerate(nodes)]
    got = await inventory.run_scripts(cluster_redis, "return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])", calls)
    assert got == [1] * len(nodes)
    assert [int(await cluster_redis.hget(inventory.avail_key(n), "x")) for n in nodes] == list(range(len(nodes)))
    await asyncio.gather(*(cluster_redis.delete(inventory.avail_key(n)) for n in nodes))


async def test_a_burst_of_direct_commands_waits_for_connections_instead_of_failing(cluster_redis):
    # 500 duplicate pushes polling one claim at once: 500 GETs on one node, whose pool holds 64
    key = f"claim:{{burst-{secrets.token_hex(3)}}}"
    await cluster_redis.set(key, "o1", ex=60)
    assert await asyncio.gather(*(cluster_redis.get(key) for _ in range(500))) == [b"o1"] * 500


async def test_reservations_on_every_shard_in_one_turn(cluster_redis, redis_cluster):
    uid = secrets.token_hex(3)
    nodes = [ts[0] for ts in _tags_per_master(cluster_redis, redis_cluster, f"r{uid}").values()]
    inv = Inventory(cluster_redis)
    await marked(cluster_redis, nodes)
    for node in nodes:
        await inv.set_on_hand(node, "sku", 5)
    # a fresh cluster node knows no script: the batcher loads it there and resends
    await asyncio.gather(*(cluster_redis.execute_command("SCRIPT FLUSH", target_nodes=n) for n in cluster_redis.get_primaries()))

    results = await asyncio.gather(*(inv.reserve(node, f"f{i}", [("sku", 2)]) for node in nodes for i in range(3)))

    assert [r.ok for r in results] == [True, True, False] * len(nodes)  # 2 + 2 fit in 5, the third does not
    assert all(r.short_sku == "sku" and r.short_available == 1 for r in results[2::3])
    assert await inv.available(nodes, ["sku"]) == {n: {"sku": 1} for n in nodes}
    assert (await inv.reserve(nodes[0], "f0", [("sku", 2)])).already
    assert await inv.release(nodes[0], "f0") == 2
    assert await inv.commit(nodes[1], "f1") == 2
    assert await inv.snapshot(nodes) == {(nodes[0], "sku"): (5, 2), (nodes[1], "sku"): (3, 2), (nodes[2], "sku"): (5, 4)}


async def test_a_script_spanning_slots_fails_only_its_caller(cluster_redis, redis_cluster):
    uid = secrets.token_hex(3)
    a, b = [ts[0] for ts in _tags_per_master(cluster_redis, redis_cluster, f"x{uid}").values()][:2]
    batcher = RedisBatcher(cluster_redis, inventory.avail_key)
    results = await asyncio.gather(
        batcher.command("EVAL", "return redis.call('GET', KEYS[2])", 2, f"k:{{{a}}}", f"k:{{{b}}}"),
        batcher.command("SET", f"k:{{{a}}}", "v"),
        return_exceptions=True)
    assert isinstance(results[0], ResponseError) and "CROSSSLOT" in str(results[0]) or "slot" in str(results[0])
    assert results[1] == b"OK"
    await cluster_redis.delete(f"k:{{{a}}}")


async def test_a_slot_moved_under_the_batcher_is_followed(cluster_redis, redis_cluster):
    """A live resharding of one slot: ASK while it migrates, MOVED after; callers never notice."""
    uid = secrets.token_hex(3)
    tags = _tags_per_master(cluster_redis, redis_cluster, f"m{uid}")
    (src_port, (tag,)), (dst_port, (other,)) = list(tags.items())[:2]
    key, slot = f"k:{{{tag}}}", key_slot(tag.encode())
    nodes = {m.port: m.client() for m in redis_cluster.masters}
    ids = {p: c.execute_command("CLUSTER", "MYID").decode() for p, c in nodes.items()}
    batcher = RedisBatcher(cluster_redis, inventory.avail_key)
    sent = _spy(batcher)
    try:
        # migrating, key not yet on the source: the source answers ASK for it
        nodes[dst_port].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[src_port])
        nodes[src_port].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[dst_port])
        assert await asyncio.gather(batcher.command("SET", key, "asked"), batcher.command("SET", f"k:{{{other}}}", "x")) == [b"OK", b"OK"]
        asking = nodes[dst_port].pipeline(transaction=False)
        asking.execute_command("ASKING")
        asking.get(key)
        assert asking.execute()[1] == b"asked"  # it went to the importing node
        assert [p for p, _ in sent].count(dst_port) == 2  # its own batch, then the ASKING resend
        # the slot now belongs to the destination: the client's map is stale, the source says MOVED
        for c in nodes.values():
            c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[dst_port])
        assert _port_of(cluster_redis, key) == src_port
        assert await batcher.command("GET", key) == b"asked"
        assert _port_of(cluster_redis, key) == dst_port  # the map learnt it
    finally:  # give the slot back (empty it first)
        for c in nodes.values():
            c.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
            c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[dst_port])
        nodes[dst_port].delete(key)
        nodes[dst_port].delete(f"k:{{{other}}}")
        for c in nodes.values():
            c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[src_port])
        for c in nodes.values():
            c.close()


async def test_a_dead_master_fails_only_its_callers_and_serves_again_after_restart(cluster_redis, redis_cluster):
    uid = secrets.token_hex(3)
    tags = _tags_per_master(cluster_redis, redis_cluster, f"d{uid}", per=2)
    victim = redis_cluster.masters[1]
    inv = Inventory(cluster_redis)
    nodes = {port: ts for port, ts in tags.items()}
    all_nodes = [n for ts in nodes.values() for n in ts]
    await marked(cluster_redis, all_nodes)
    for node in all_nodes:
        await inv.set_on_hand(node, "sku", 10)

    redis_cluster.kill(victim)
    try:
        for _round in range(3):  # again and again while it is down: still only its callers
            results = await asyncio.gather(*(inv.reserve(n, f"f{_round}", [("sku", 1)]) for n in all_nodes),
                                           *(inv.available([n], ["sku"]) for n in all_nodes), return_exceptions=True)
            for n, res, avail in zip(all_nodes, results[: len(all_nodes)], results[len(all_nodes):]):
                if n in nodes[victim.port]:
                    assert isinstance(res, RedisConnectionError) and isinstance(avail, RedisConnectionError), (res, avail)
                else:
                    assert res.ok and avail == {n: {"sku": 10 - _round - 1}}
    finally:
        redis_cluster.restart(victim)

    # back (empty: no persistence, and no scripts): the same client serves it again, once the
    # nodes it lost are given back (the fence rebuilds them from PostgreSQL in the service)
    await marked(cluster_redis, nodes[victim.port])
    for node in nodes[victim.port]:
        await inv.set_on_hand(node, "sku", 10)
    results = await asyncio.gather(*(inv.reserve(n, "after", [("sku", 1)]) for n in all_nodes))
    assert all(r.ok for r in results)
    assert await inv.available(nodes[victim.port], ["sku"]) == {n: {"sku": 9} for n in nodes[victim.port]}


async def test_failover_to_a_replica(tmp_path):
    """Kill a master that has a replica: its callers fail until the replica takes over, then the
    batcher finds the new primary by itself."""
    from oms.infra.redis_cluster_local import start_cluster

    with start_cluster(tmp_path / "rc", masters=3, replicas=1) as cluster:
        r = client(cluster.url)
        try:
            await r.initialize()
            tags = _tags_per_master(r, cluster, secrets.token_hex(3))
            victim = cluster.masters[0]
            mine, theirs = tags[victim.port][0], [ts[0] for p, ts in tags.items() if p != victim.port]
            inv = Inventory(r)
            await marked(r, (mine, *theirs))
            for node in (mine, *theirs):
                await inv.set_on_hand(node, "sku", 1000)
            await inv.reserve(mine, "before", [("sku", 1)])
            primary = r.nodes_manager.get_node_from_slot(key_slot(mine.encode()))
            assert await r.execute_command("WAIT", 1, 5000, target_nodes=primary) == 1  # the replica has it
            cluster.kill(victim)
            t0, failed = time.monotonic(), 0
            while True:
                res = await asyncio.gather(inv.reserve(mine, "during", [("sku", 1)]),
                                           *(inv.reserve(n, f"f{failed}", [("sku", 1)]) for n in theirs),
                                           return_exceptions=True)
                assert all(not isinstance(x, Exception) and x.ok for x in res[1:]), res
                if not isinstance(res[0], Exception):
                    break
                failed += 1
                assert time.monotonic() - t0 < 20, f"no failover: {res[0]!r}"
                await asyncio.sleep(0.1)
            assert res[0].ok
            new_primary = r.nodes_manager.get_node_from_slot(key_slot(mine.encode()))
            assert new_primary.port == cluster.replicas[0].port
            # the replica had the master's writes: the reservation before the failover still counts
            assert (await inv.available([mine], ["sku"]))[mine]["sku"] == 998
            print(f"failover: callers of the dead master failed for {time.monotonic() - t0:.2f} s ({failed} rounds)")
        finally:
            await r.aclose()


async def test_a_command_that_cannot_be_routed_fails_only_its_caller(cluster_redis):
    uid = secrets.token_hex(3)
    batcher = RedisBatcher(cluster_redis, inventory.avail_key)
    results = await asyncio.gather(
        batcher.command("EVALSHA", "0" * 40, "not-a-count", "k"),  # no key count to route by
        batcher.command("MGET", f"a:{uid}", f"b:{uid}"),  # keys in two slots: redis-py's parser says so
        batcher.command("PING"),  # keyless: any node
        batcher.command("SET", f"ok:{uid}", "v"),
        return_exceptions=True)
    assert isinstance(results[0], Exception) and isinstance(results[1], Exception), results
    assert results[2] == b"PONG" and results[3] == b"OK"
    await cluster_redis.delete(f"ok:{uid}")


def test_another_process_stops_a_cluster_by_the_pids_it_left(tmp_path):
    from oms.infra.redis_cluster_local import start_cluster, stop_cluster

    cluster = start_cluster(tmp_path / "rc")
    try:
        assert stop_cluster(tmp_path / "rc") == 3
        for n in cluster.nodes:
            n.process.wait(5)  # they exited (SIGTERM by pid from cluster.json)
        assert not (tmp_path / "rc" / "cluster.json").exists()
    finally:
        cluster.stop()
