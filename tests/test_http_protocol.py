"""`oms serve`'s HTTP protocol on a real uvicorn server and socket: a response leaves in one write,
keep-alive, streaming and `Connection: close` answers behave as uvicorn's own."""

from __future__ import annotations

import asyncio
import socket

import pytest
import pytest_asyncio
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from oms.infra.http import JoinedWritesHttpProtocol


class _Counting:
    """The real transport, counting the writes that reach it (each one is a send() to the kernel)."""

    writes: list[bytes] = []

    def __init__(self, transport) -> None:
        self._t = transport

    def write(self, data: bytes) -> None:
        _Counting.writes.append(bytes(data))
        self._t.write(data)

    def __getattr__(self, name):
        return getattr(self._t, name)


def _counted(protocol: type) -> type:
    class Counted(protocol):
        def connection_made(self, transport):
            super().connection_made(_Counting(transport))
    return Counted


async def _app(scope, send, seen: asyncio.Event):
    path = scope["path"]
    if path == "/stream":  # two chunks, the second only once the client has the first
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await seen.wait()
        await send({"type": "http.response.body", "body": b"second", "more_body": False})
        return
    headers = [(b"content-type", b"application/json"), (b"content-length", b"11")]
    if path == "/close":
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": 201, "headers": headers})
    await send({"type": "http.response.body", "body": b'{"ok":true}'})


@pytest_asyncio.fixture
async def serve():
    """Start a uvicorn server with the given protocol class on a free port: (port, event the
    streaming answer waits for)."""
    servers = []

    async def start(protocol: type):
        seen = asyncio.Event()

        async def app(scope, receive, send):
            await _app(scope, send, seen)

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(app, http=protocol, log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        servers.append((server, task))
        return sock.getsockname()[1], seen

    yield start
    for server, task in servers:
        server.should_exit = True
        await task


async def _request(reader, writer, path: str) -> bytes:
    writer.write(f"GET {path} HTTP/1.1\r\nhost: t\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")))
    return head + await reader.readexactly(length)


@pytest.mark.parametrize(("protocol", "writes_per_answer"), [(JoinedWritesHttpProtocol, 1), (HttpToolsProtocol, 2)])
async def test_an_answer_leaves_in_one_write_and_keep_alive_holds(serve, protocol, writes_per_answer):
    port, _ = await serve(_counted(protocol))
    _Counting.writes = []
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = [await _request(reader, writer, "/orders") for _ in range(3)]  # one connection, three answers
    writer.close()

    assert all(a.startswith(b"HTTP/1.1 201 Created\r\n") and a.endswith(b'\r\n\r\n{"ok":true}') for a in answers)
    assert len(_Counting.writes) == 3 * writes_per_answer  # uvicorn's own protocol: head, then body
    assert b"".join(_Counting.writes) == b"".join(answers)


async def test_a_connection_close_answer_arrives_whole_before_the_close(serve):
    port, _ = await serve(JoinedWritesHttpProtocol)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = await _request(reader, writer, "/close")
    assert answer.endswith(b'{"ok":true}') and b"connection: close" in answer.lower()
    assert await reader.read() == b""  # then the server closed it
    writer.close()


async def test_a_streamed_answer_sends_each_chunk_in_its_turn(serve):
    port, seen = await serve(JoinedWritesHttpProtocol)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /stream HTTP/1.1\r\nhost: t\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    first = await asyncio.wait_for(reader.readuntil(b"first\r\n"), 5)  # arrives while the app still waits
    assert first.endswith(b"5\r\nfirst\r\n")
    seen.set()
    rest = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
    assert rest == b"6\r\nsecond\r\n0\r\n\r\n"
    writer.close()
