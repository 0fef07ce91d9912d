"""Fault injection on real servers: a PostgreSQL wire proxy that cuts a connection at a chosen
moment, servers of one's own to stop and start, `oms serve` as a subprocess.

Used by tests/test_faults_*.py and loadtests/faults.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent


class PgProxy:
    """Forwards 127.0.0.1:<port> to PostgreSQL, reading the server's messages as it goes.

    arm("after_commit"): the next statement that completes is let through to the server and
    committed there, but the client gets its CommandComplete and then a dead connection instead
    of ReadyForQuery — the reply to a COMMIT lost on the way (the write was kept).
    arm("before_execute"): the next statement the client sends is dropped and the connection cut —
    lost on the way in (the write was not kept). Either way the client cannot tell which.
    """

    def __init__(self, database_url: str, only_app: str | None = None) -> None:
        #: cut only connections whose StartupMessage names this application_name (e.g. the writer's)
        self.only_app = only_app
        parts = urlsplit(database_url)
        q = parse_qs(parts.query)
        self.unix = None
        if "host" in q and q["host"][0].startswith("/"):
            self.unix = f"{q['host'][0]}/.s.PGSQL.{parts.port or q.get('port', ['5432'])[0]}"
        self.target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self.dbname = parts.path.lstrip("/") or "postgres"
        self.user = parts.username or "postgres"
        self.password = parts.password or ""
        self.mode: str | None = None
        self.times = 0
        self.cuts = 0
        self.cut = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        port = self._server.sockets[0].getsockname()[1]
        auth = self.user + (f":{self.password}" if self.password else "")
        return f"postgresql://{auth}@127.0.0.1:{port}/{self.dbname}?sslmode=disable"

    def arm(self, mode: str, times: int = 1) -> None:
        """Cut the next `times` statements this way (the writer retries a failed batch once)."""
        assert mode in ("after_commit", "before_execute")
        self.mode = mode
        self.times = times
        self.cut.clear()

    async def start(self) -> "PgProxy":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._conns):
            w.close()

    async def _open(self):  # noqa: ANN202
        if self.unix:
            return await asyncio.open_unix_connection(self.unix)
        return await asyncio.open_connection(*self.target)

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        try:
            sreader, swriter = await self._open()
        except OSError:  # PostgreSQL is down: so is this connection
            cwriter.close()
            return
        self._conns.update((cwriter, swriter))

        def cut() -> None:
            self.times -= 1
            if self.times <= 0:
                self.mode = None
            self.cuts += 1
            self.cut.set()
            for w in (cwriter, swriter):
                w.transport.abort()

        target = [self.only_app is None]

        async def client_to_server() -> None:
            started = False
            while True:
                if not started:  # StartupMessage: length-prefixed, no type byte
                    head = await creader.readexactly(4)
                    body = await creader.readexactly(struct.unpack("!I", head)[0] - 4)
                    if self.only_app is not None:
                        params = body[4:].split(b"\x00")
                        named = dict(zip(params[0::2], params[1::2]))
                        target[0] = named.get(b"application_name") == self.only_app.encode()
                    swriter.write(head + body)
                    started = True
                    continue
                kind = await creader.readexactly(1)
                head = await creader.readexactly(4)
                body = await creader.readexactly(struct.unpack("!I", head)[0] - 4)
                if self.mode == "before_execute" and target[0] and kind in (b"B", b"Q"):
                    cut()
                    return
                swriter.write(kind + head + body)
                await swriter.drain()

        async def server_to_client() -> None:
            completed = False
            while True:
                kind = await sreader.readexactly(1)
                head = await sreader.readexactly(4)
                body = await sreader.readexactly(struct.unpack("!I", head)[0] - 4)
                if self.mode == "after_commit" and target[0]:
                    if kind == b"C":
                        completed = True
                    elif kind == b"Z" and completed:  # the server committed; the client never hears it
                        await cwriter.drain()
                        cut()
                        return
                cwriter.write(kind + head + body)
                await cwriter.drain()

        tasks = [asyncio.ensure_future(client_to_server()), asyncio.ensure_future(server_to_client())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            for w in (cwriter, swriter):
                w.close()
                self._conns.discard(w)


def with_db(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    """`oms serve` as a subprocess on a free 127.0.0.1 port, in its own process group."""

    def __init__(self, env: dict[str, str], log_path: Path, workers: int = 2) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.log = open(log_path, "wb")
        full = {k: v for k, v in os.environ.items()
                if k not in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir", "OMS_PREPARED")}
        full.update(env, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "oms.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", str(workers), "--keep-embedded"],
            cwd=ROOT, env=full, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"oms serve exited ({self.proc.returncode}):\n{self.output()}")
                try:
                    if (await c.get(self.url + "/healthz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        raise AssertionError(f"oms serve did not answer /healthz in {timeout}s:\n{self.output()}")

    def workers(self) -> list[int]:
        """Pids of the worker processes (children of the serving process)."""
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        pids = []
        for pid in sorted(int(p) for p in out.split()):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"resource_tracker" not in cmd:  # multiprocessing's helper, not a worker
                pids.append(pid)
        return pids

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()
