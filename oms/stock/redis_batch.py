"""Redis commands of concurrent requests, sent together: one pipeline per turn of the event loop.

Under a stampede every order wants a claim, a few availability reads and a reservation. Sent
one request at a time, each of those is a round trip whose client-side cost (packing, a pool
checkout, a timeout, parsing) is far larger than Redis's work. The batcher queues what the
requests of one loop turn ask for and sends it as one pipeline while the next turn's requests
queue behind it; availability reads for the same node are merged into one HMGET. It uses
redis-py's connection pool and reply parser, and packs commands with hiredis.

Nothing changes in meaning: every command is still a single atomic Redis command or Lua script,
replies go back to exactly the caller that asked, and a command's error is raised in its caller.

Redis Cluster: `OMS_REDIS_URL=redis+cluster://host:port[,host:port...]` (`rediss+cluster://` for
TLS; `client()` below builds the client) names seed nodes of a cluster, which redis-py's asyncio
RedisCluster discovers from. Given a RedisCluster the batcher splits each turn's batch by key
slot into one pipeline per primary, sent concurrently (never MULTI/EXEC). Every key is hash
tagged (`inv:{node}:...`, `claim:{channel:id}`) so each script touches one slot. A reply of
MOVED updates the slot map and resends that command alone; ASK resends it after ASKING to the
node named; CLUSTERDOWN / TRYAGAIN wait briefly, refresh the map and resend; NOSCRIPT for a
script known to the batcher (`script()`) loads it on that node and resends; after a bounded
number of rounds the last error goes to its caller. A node that cannot be reached fails only the
callers whose keys it holds, and the next batch refreshes the slot map first (at most twice a
second), so after a failover or restart they are served again. Without a cluster none of this
runs: the batch is one pipeline on one connection, as before.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import (AskError, ClusterDownError, DataError, MovedError, NoScriptError, RedisClusterException,
                              RedisError, ResponseError, TryAgainError)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def is_cluster_url(url: str) -> bool:
    """True for `redis+cluster://` / `rediss+cluster://` URLs (a Redis Cluster's seed nodes)."""
    return url.startswith(CLUSTER_SCHEMES)


def client(url: str, *, max_connections: int = 64, timeout: float = 10) -> aioredis.Redis | RedisCluster:
    """The client for OMS_REDIS_URL: a RedisCluster for `redis+cluster://h:p[,h:p...]`, else a
    Redis on a blocking pool (a burst waits up to `timeout` s for a connection, not fails)."""
    if not is_cluster_url(url):
        return aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout))
    scheme, rest = url.split("+cluster://", 1)
    netloc, sep, tail = rest.partition("/")
    if "@" in netloc:
        auth, _, netloc = netloc.rpartition("@")
        auth += "@"
    else:
        auth = ""
    seeds = [h for h in netloc.split(",") if h]
    if not seeds:
        raise ValueError(f"no seed node in Redis Cluster URL {url!r}")
    query = tail.partition("?")[2]
    first = f"{scheme}://{auth}{seeds[0]}" + (f"?{query}" if query else "")
    others = []
    for seed in seeds[1:]:
        host, _, port = seed.rpartition(":")
        others.append(ClusterNode(host, int(port)))
    # a master down must not stop the others serving their slots: no full-coverage requirement
    return WaitingCluster.from_url(first, startup_nodes=others or None, max_connections=max_connections,
                                   require_full_coverage=False)


#: connections of each cluster node's pool left to the batcher's pipelines
_KEPT_FOR_PIPELINES = 16
_gated: contextvars.ContextVar[bool] = contextvars.ContextVar("oms_cluster_gated", default=False)


class WaitingCluster(RedisCluster):
    """A RedisCluster whose commands wait for a connection instead of failing.

    redis-py's cluster pool raises MaxConnectionsError at once when a node's `max_connections`
    are all in use (a single Redis's BlockingConnectionPool waits). A burst of direct commands
    (duplicate pushes polling a claim, a pass over hundreds of nodes) would fail requests that a
    moment later would be served. Direct commands are therefore gated to the pool size less what
    the batcher's pipelines need; a command issued inside a gated one (redis-py's own fan-out to
    several nodes) is not gated again."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gate = asyncio.Semaphore(max(1, kwargs.get("max_connections", 64) - _KEPT_FOR_PIPELINES))

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if _gated.get():
            return await super().execute_command(*args, **kwargs)
        async with self._gate:
            token = _gated.set(True)
            try:
                return await super().execute_command(*args, **kwargs)
            finally:
                _gated.reset(token)

#: node id -> the hash key holding its available units per SKU
AvailKey = Callable[[str], str]


#: commands whose first argument is their only key (the cluster batcher routes these without asking
#: redis-py's command parser); EVAL/EVALSHA/FCALL route by their first key
_FIRST_ARG_KEY = frozenset(
    name.encode() for name in (
        "GET", "SET", "SETEX", "PSETEX", "GETSET", "GETDEL", "GETEX", "INCR", "INCRBY", "DECR", "DECRBY",
        "APPEND", "STRLEN", "EXPIRE", "PEXPIRE", "EXPIREAT", "PEXPIREAT", "TTL", "PTTL", "PERSIST", "TYPE",
        "HGET", "HSET", "HSETNX", "HMGET", "HMSET", "HGETALL", "HDEL", "HINCRBY", "HEXISTS", "HLEN", "HKEYS",
        "HVALS", "LPUSH", "RPUSH", "LPOP", "RPOP", "LRANGE", "LTRIM", "LLEN", "LINDEX", "SADD", "SREM",
        "SMEMBERS", "SISMEMBER", "SCARD", "ZADD", "ZREM", "ZRANGE", "ZSCORE", "ZINCRBY", "ZCARD",
        "XADD", "XLEN",
    )
)
_SCRIPT_CALLS = frozenset((b"EVALSHA", b"EVAL", b"FCALL", b"FCALL_RO"))
_ASKING = hiredis.pack_command(("ASKING",))
#: rounds a command may be resent after MOVED / ASK / CLUSTERDOWN / TRYAGAIN / NOSCRIPT
CLUSTER_ATTEMPTS = 5
#: the slot map is refreshed at most this often while nodes fail
_REFRESH_EVERY_S = 0.5


class _Read:
    __slots__ = ("nodes", "skus", "future", "raw")

    def __init__(self, nodes: Sequence[str], skus: Sequence[str], future: asyncio.Future, raw: bool = False) -> None:
        self.nodes, self.skus, self.future, self.raw = nodes, skus, future, raw


class _Command:
    __slots__ = ("args", "future")

    def __init__(self, args: tuple, future: asyncio.Future) -> None:
        self.args, self.future = args, future


class RedisBatcher:
    """Coalesces commands and availability reads from concurrent coroutines of one process."""

    def __init__(self, redis: aioredis.Redis | RedisCluster, avail_key: AvailKey) -> None:
        self.redis = redis
        self.avail_key = avail_key
        self._commands: list[_Command] = []
        self._reads: list[_Read] = []
        self._running = False
        self.cluster = isinstance(redis, RedisCluster)
        self._scripts: dict[bytes, str | bytes] = {}  # sha -> source, for NOSCRIPT on a cluster node
        self._stale = False  # a node failed: refresh the slot map before the next batch
        self._next_refresh = 0.0
        if self.cluster:
            self._send = self._send_cluster  # type: ignore[method-assign]

    def script(self, source: str | bytes) -> str:
        """Remember a Lua script (so a cluster node that lacks it gets it); returns its SHA1."""
        sha = hashlib.sha1(source.encode() if isinstance(source, str) else source).hexdigest()
        self._scripts[sha.encode()] = source
        return sha

    async def load_scripts(self) -> None:
        """SCRIPT LOAD every remembered script on every primary (or the one Redis)."""
        if not self._scripts:
            return
        if not self.cluster:
            for source in self._scripts.values():
                await self.redis.script_load(source)
            return
        await self._ready()
        nodes = self.redis.get_primaries()
        wire = [hiredis.pack_command(("SCRIPT", "LOAD", src)) for src in self._scripts.values()]
        for out in await asyncio.gather(*(self._node_pipeline(n, wire, ()) for n in nodes), return_exceptions=True):
            if isinstance(out, BaseException):
                raise out
            bad = next((r for r in out if isinstance(r, Exception)), None)
            if bad is not None:
                raise bad

    def command(self, *args: Any) -> asyncio.Future:
        """Queue one command; the future holds its raw reply (or its error)."""
        fut = asyncio.get_running_loop().create_future()
        self._commands.append(_Command(args, fut))
        self._kick()
        return fut

    def read_available(self, nodes: Sequence[str], skus: Sequence[str]) -> asyncio.Future:
        """Queue a read of available units; the future holds node -> sku -> units (these only)."""
        fut = asyncio.get_running_loop().create_future()
        if not nodes or not skus:
            fut.set_result({})
            return fut
        self._reads.append(_Read(nodes, skus, fut))
        self._kick()
        return fut

    def read_fields(self, node: str, fields: Sequence[str]) -> asyncio.Future:
        """Queue a read of raw fields of one node's availability hash (merged into that node's
        HMGET of this turn); the future holds field -> bytes or None."""
        fut = asyncio.get_running_loop().create_future()
        self._reads.append(_Read((node,), fields, fut, raw=True))
        self._kick()
        return fut

    def _kick(self) -> None:
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            await asyncio.sleep(0)  # let the rest of this turn's requests queue up too
            while self._commands or self._reads:
                commands, self._commands = self._commands, []
                reads, self._reads = self._reads, []
                try:
                    await self._send(commands, reads)
                except Exception as exc:  # the connection failed: every caller of the batch hears it
                    for op in (*commands, *reads):
                        if not op.future.done():
                            op.future.set_exception(exc)
                except BaseException:  # cancelled (shutdown): so are the callers' waits
                    for op in (*commands, *reads):
                        op.future.cancel()
                    raise
        finally:
            self._running = False

    def _pack(self, commands: list[_Command], reads: list[_Read]) -> tuple[list[bytes], list[_Command], dict[str, list[str]]]:
        """The wire form of a batch: the commands that could be packed, then one HMGET per node."""
        wanted: dict[str, set[str]] = {}
        for r in reads:
            for node in r.nodes:
                wanted.setdefault(node, set()).update(r.skus)
        by_node = {node: sorted(skus) for node, skus in wanted.items()}
        packed: list[bytes] = []
        sendable: list[_Command] = []
        for c in commands:
            try:
                packed.append(hiredis.pack_command(c.args))
            except TypeError as exc:  # an argument Redis cannot take: that caller's error alone
                c.future.set_exception(DataError(f"cannot send {c.args[0]} to Redis: {exc}"))
            else:
                sendable.append(c)
        packed += [hiredis.pack_command(("HMGET", self.avail_key(node), *skus)) for node, skus in by_node.items()]
        return packed, sendable, by_node

    async def _send(self, commands: list[_Command], reads: list[_Read]) -> None:
        packed, commands, by_node = self._pack(commands, reads)
        self._deliver(commands, reads, by_node, await self._pipeline(packed))

    @staticmethod
    def _deliver(commands: list[_Command], reads: list[_Read], by_node: dict[str, list[str]], replies: list[Any]) -> None:
        for c, reply in zip(commands, replies):
            if not c.future.done():
                if isinstance(reply, Exception):
                    c.future.set_exception(reply)
                else:
                    c.future.set_result(reply)
        levels: dict[str, dict[str, bytes | None]] = {}
        failed: dict[str, Exception] = {}
        for (node, skus), reply in zip(by_node.items(), replies[len(commands):]):
            if isinstance(reply, Exception):
                failed[node] = reply
                continue
            levels[node] = dict(zip(skus, reply))
        for r in reads:
            if r.future.done():
                continue
            missing = next((n for n in r.nodes if n not in levels), None) if failed else None
            if missing is not None:  # one of its nodes failed: this read fails with that error
                r.future.set_exception(failed[missing])
            elif r.raw:
                got = levels[r.nodes[0]]
                r.future.set_result({s: got[s] for s in r.skus})
            else:  # each caller gets its own dicts, holding just the SKUs it asked for
                r.future.set_result({n: {s: int(levels[n][s] or 0) for s in r.skus} for n in r.nodes})

    async def _pipeline(self, wire: list[bytes]) -> list[Any]:
        """Send packed commands in one write and read their raw replies (an error as a value).

        redis-py's own pipeline packs each argument in Python and runs reply callbacks; on the
        hot path hiredis packs the whole batch in C and replies stay raw (what our callers want).
        """
        if not wire:
            return []
        pool = self.redis.connection_pool
        conn = await pool.get_connection()
        try:
            return await _exchange(conn, wire)
        finally:
            await pool.release(conn)

    # --- Redis Cluster -------------------------------------------------------------------------

    async def _send_cluster(self, commands: list[_Command], reads: list[_Read]) -> None:
        packed, commands, by_node = self._pack(commands, reads)
        slots: list[int | None | Exception] = []
        for c in commands:
            try:
                slots.append(await self._slot(c.args))
            except (RedisError, RedisClusterException) as exc:  # no key to route by, or keys in several slots
                slots.append(exc)
            except (ValueError, TypeError, IndexError) as exc:  # e.g. EVALSHA without a key count
                slots.append(DataError(f"cannot route {c.args[0]} in a Redis Cluster: {exc!r}"))
        slots += [key_slot(self.avail_key(node).encode()) for node in by_node]
        self._deliver(commands, reads, by_node, await self._cluster_pipelines(packed, slots))

    async def _slot(self, args: tuple) -> int | None:
        """The slot of a command's keys (None: keyless, any node will do)."""
        name = args[0].upper().encode() if isinstance(args[0], str) else bytes(args[0]).upper()
        if name in _SCRIPT_CALLS:
            if int(args[2]) == 0:
                return None
            key = args[3]
        elif name in _FIRST_ARG_KEY:
            key = args[1]
        elif len(args) == 1:
            return None
        else:
            return await self.redis._determine_slot(*args)
        if isinstance(key, str):
            return key_slot(key.encode())
        return key_slot(bytes(key) if isinstance(key, (bytes, bytearray, memoryview)) else str(key).encode())

    async def _ready(self) -> None:
        if self.redis._initialize:
            await self.redis.initialize()
        if self._stale and time.monotonic() >= self._next_refresh:
            self._stale = False
            self._next_refresh = time.monotonic() + _REFRESH_EVERY_S
            try:
                await self.redis.nodes_manager.initialize()
            except (RedisError, RedisClusterException, OSError):  # no node answered: keep the map, try later
                self._stale = True

    async def _cluster_pipelines(self, wire: list[bytes], slots: list[int | None | Exception]) -> list[Any]:
        """Send each command to the primary of its slot, one pipeline per node, nodes at once."""
        replies: list[Any] = [None] * len(wire)
        if not wire:
            return replies
        await self._ready()
        manager = self.redis.nodes_manager
        todo = []
        for i, slot in enumerate(slots):
            if isinstance(slot, Exception):
                replies[i] = slot
            else:
                todo.append(i)
        asking: dict[int, ClusterNode] = {}
        for attempt in range(CLUSTER_ATTEMPTS):
            groups: dict[ClusterNode, list[int]] = {}
            for i in todo:
                node = asking.get(i)
                if node is None:
                    slot = slots[i]
                    try:
                        node = manager.default_node if slot is None else manager.get_node_from_slot(slot)
                    except RedisClusterException as exc:  # slot not covered (yet): its caller hears it
                        replies[i] = exc
                        self._stale = True
                        continue
                groups.setdefault(node, []).append(i)
            outcomes = await asyncio.gather(
                *(self._node_pipeline(node, [wire[i] for i in idx], [i in asking for i in idx])
                  for node, idx in groups.items()),
                return_exceptions=True)
            asking.clear()
            again: list[int] = []
            pause = False
            loads: dict[ClusterNode, set[bytes]] = {}
            for (node, idx), out in zip(groups.items(), outcomes):
                if isinstance(out, BaseException):
                    if not isinstance(out, Exception):
                        raise out  # cancelled
                    # the node is down or unreachable: its callers hear it, nobody else does
                    self._stale = True
                    for i in idx:
                        replies[i] = out
                    continue
                for i, reply in zip(idx, out):
                    replies[i] = reply  # the last answer stands when the rounds run out
                    if not isinstance(reply, ResponseError):
                        continue
                    if isinstance(reply, MovedError):
                        try:
                            await manager.move_slot(reply)
                        except KeyError:  # a slot the map did not have: read the whole map again
                            self._stale, self._next_refresh = True, 0.0
                        again.append(i)
                    elif isinstance(reply, AskError):
                        target = manager.get_node(host=reply.host, port=reply.port)
                        if target is None:
                            target = ClusterNode(reply.host, reply.port, **manager.connection_kwargs)
                            manager.set_nodes(manager.nodes_cache, {target.name: target})
                        asking[i] = target
                        again.append(i)
                    elif isinstance(reply, (ClusterDownError, TryAgainError)):
                        self._stale = self._stale or isinstance(reply, ClusterDownError)
                        pause = True
                        again.append(i)
                    elif isinstance(reply, NoScriptError):
                        sha = _script_sha(wire[i])
                        if sha in self._scripts:
                            loads.setdefault(node, set()).add(sha)
                            again.append(i)
            if not again or attempt == CLUSTER_ATTEMPTS - 1:
                break
            if loads:
                await asyncio.gather(*(
                    self._node_pipeline(node, [hiredis.pack_command(("SCRIPT", "LOAD", self._scripts[sha])) for sha in shas], ())
                    for node, shas in loads.items()), return_exceptions=True)
            if pause:
                await asyncio.sleep(0.05 * (attempt + 1))
                self._next_refresh = 0.0
            await self._ready()
            todo = again
        return replies

    async def _node_pipeline(self, node: ClusterNode, wire: list[bytes], asking: Sequence[bool]) -> list[Any]:
        """One pipeline on one of the node's connections; ASKING goes right before a flagged command."""
        if any(asking):
            sent: list[bytes] = []
            for w, ask in zip(wire, asking):
                if ask:
                    sent.append(_ASKING)
                sent.append(w)
            replies = await self._node_exchange(node, sent)
            out, k = [], 0
            for ask in asking:
                k += ask  # skip ASKING's +OK
                out.append(replies[k])
                k += 1
            return out
        return await self._node_exchange(node, wire)

    @staticmethod
    async def _node_exchange(node: ClusterNode, wire: list[bytes]) -> list[Any]:
        conn = node.acquire_connection()
        try:
            await node.disconnect_if_needed(conn)
            return await _exchange(conn, wire)
        except (RedisConnectionError, RedisTimeoutError, OSError):
            # the other idle connections to it are likely dead too: reconnect them on next use
            await node.disconnect_free_connections()
            raise
        finally:
            node.release(conn)


async def _exchange(conn: Any, wire: list[bytes]) -> list[Any]:
    """Write packed commands at once and read their raw replies (an error reply as a value)."""
    try:
        await conn.send_packed_command(wire, check_health=False)
        replies: list[Any] = []
        # one deadline for the whole batch rather than one timer per reply
        async with asyncio.timeout(conn.socket_timeout):
            for _ in wire:
                try:
                    replies.append(await conn.read_response(timeout=math.inf))
                except ResponseError as exc:
                    replies.append(exc)
    except BaseException as exc:
        try:  # replies may be left unread: the connection must not be reused as is
            await conn.disconnect()
        except Exception:  # already broken; the pool reconnects it on next use
            pass
        if isinstance(exc, TimeoutError):
            raise RedisTimeoutError(f"Redis did not answer {len(wire)} commands within {conn.socket_timeout} s") from exc
        raise
    return replies


def _script_sha(packed: bytes) -> bytes:
    """The SHA1 argument of a packed EVALSHA (b"" for anything else)."""
    parts = packed.split(b"\r\n", 5)
    return parts[4] if len(parts) > 4 and parts[2].upper() == b"EVALSHA" else b""
