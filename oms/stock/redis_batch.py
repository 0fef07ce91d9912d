"""Redis commands of concurrent requests, sent together: one pipeline per turn of the event loop.

Under a stampede every order wants a claim, a few availability reads and a reservation. Sent
one request at a time, each of those is a round trip whose client-side cost (packing, a pool
checkout, a timeout, parsing) is far larger than Redis's work. The batcher queues what the
requests of one loop turn ask for and sends it as one pipeline while the next turn's requests
queue behind it; availability reads for the same node are merged into one HMGET. It uses
redis-py's connection pool and reply parser, and packs commands with hiredis.

Nothing changes in meaning: every command is still a single atomic Redis command or Lua script,
replies go back to exactly the caller that asked, and a command's error is raised in its caller.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import DataError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

#: node id -> the hash key holding its available units per SKU
AvailKey = Callable[[str], str]


class _Read:
    __slots__ = ("nodes", "skus", "future")

    def __init__(self, nodes: Sequence[str], skus: Sequence[str], future: asyncio.Future) -> None:
        self.nodes, self.skus, self.future = nodes, skus, future


class _Command:
    __slots__ = ("args", "future")

    def __init__(self, args: tuple, future: asyncio.Future) -> None:
        self.args, self.future = args, future


class RedisBatcher:
    """Coalesces commands and availability reads from concurrent coroutines of one process."""

    def __init__(self, redis: aioredis.Redis, avail_key: AvailKey) -> None:
        self.redis = redis
        self.avail_key = avail_key
        self._commands: list[_Command] = []
        self._reads: list[_Read] = []
        self._running = False

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

    async def _send(self, commands: list[_Command], reads: list[_Read]) -> None:
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
        commands = sendable
        packed += [hiredis.pack_command(("HMGET", self.avail_key(node), *skus)) for node, skus in by_node.items()]
        replies = await self._pipeline(packed)

        for c, reply in zip(commands, replies):
            if not c.future.done():
                if isinstance(reply, Exception):
                    c.future.set_exception(reply)
                else:
                    c.future.set_result(reply)
        levels: dict[str, dict[str, bytes | None]] = {}
        failed: Exception | None = None
        for (node, skus), reply in zip(by_node.items(), replies[len(commands):]):
            if isinstance(reply, Exception):
                failed = reply
                continue
            levels[node] = dict(zip(skus, reply))
        for r in reads:
            if r.future.done():
                continue
            if failed is not None and any(n not in levels for n in r.nodes):
                r.future.set_exception(failed)
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
        finally:
            await pool.release(conn)
        return replies
