"""The HTTP protocol `oms serve` runs: uvicorn's httptools protocol, a response sent in one write.

uvicorn writes a response's status line and headers when the app starts the response, and the
body when the app sends it: two `send()` system calls, and with TCP_NODELAY two packets, for
every small JSON answer. On loopback each of them also wakes the reader. Here the connection's
writes of one event-loop turn are joined and sent together at the end of the turn, so head and
body leave as one. Nothing else changes: order, flow control and closing are the transport's.
"""

from __future__ import annotations

import asyncio
from typing import Any

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # no httptools on this platform: uvicorn's default protocol, unchanged
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


class JoinedWrites:
    """A transport whose writes of one loop turn go out as one `write` (everything else is the
    wrapped transport's own)."""

    __slots__ = ("_transport", "_loop", "_pending")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Send what this turn wrote (a no-op when already sent or the connection is closing)."""
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending = []
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()  # a `Connection: close` answer goes out before the connection does
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(d) for d in self._pending)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


if HttpToolsProtocol is not None:
    class JoinedWritesHttpProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol writing through JoinedWrites."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(JoinedWrites(transport, self.loop))  # type: ignore[arg-type]

    PROTOCOL: type[asyncio.Protocol] | str = JoinedWritesHttpProtocol
else:
    PROTOCOL = "auto"
