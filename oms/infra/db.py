"""PostgreSQL plumbing: the pool, numbered migrations and the named queries in sql/."""

from __future__ import annotations

import json
import re
from pathlib import Path

import asyncpg


def _sql_dir() -> Path:
    """Migrations and queries: inside the package when installed from a wheel, else the checkout's sql/."""
    here = Path(__file__).resolve().parent.parent
    packaged = here / "sql"
    return packaged if packaged.is_dir() else here.parent / "sql"


SQL_DIR = _sql_dir()
_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
#: any constant works; it only has to be the same in every process that migrates
_MIGRATION_LOCK = 7_314_159


def connection_lost(exc: BaseException) -> bool:
    """True when `exc` means the connection failed under a statement, so whether the server
    committed it is unknown (an in-doubt write): cut, reset, timed out, server shut down.

    A statement the server refused (constraint, bad data, serialization) is not in doubt: its
    transaction rolled back. Neither is a failure to connect at all (nothing was sent)."""
    if isinstance(exc, (asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                        asyncpg.exceptions.OperatorInterventionError)):
        return True
    return isinstance(exc, (OSError, TimeoutError))


def load_queries(folder: Path = SQL_DIR / "queries") -> dict[str, str]:
    """Every `-- name: x` block of every .sql file in `folder`, by name."""
    queries: dict[str, str] = {}
    for path in sorted(folder.glob("*.sql")):
        text = path.read_text()
        parts = _NAME.split(text)
        for name, body in zip(parts[1::2], parts[2::2]):
            if name in queries:
                raise ValueError(f"query {name!r} is defined twice (second time in {path.name})")
            queries[name] = body.strip()
    return queries


Q = load_queries()


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """No reset on release: for pools whose connections only run single statements."""


async def create_pool(url: str, size: int = 10, server_settings: dict[str, str] | None = None,
                      *, reset_on_release: bool = True) -> asyncpg.Pool:
    """A pool whose connections decode json/jsonb to Python values.

    reset_on_release=False skips asyncpg's reset round trip (unlock, close cursors, RESET ALL)
    each time a connection goes back: only for pools that never leave session state behind.
    """
    return await asyncpg.create_pool(
        url, min_size=min(2, size), max_size=size, init=_init_connection, command_timeout=30,
        server_settings=server_settings, reset=None if reset_on_release else _keep_session,
    )


async def create_replica_pool(url: str, size: int = 10) -> asyncpg.Pool:
    """A pool on a read replica (oms.infra.reads). It opens no connection up front, so the service
    starts while the replica is down, and gives up on one quickly: a read it cannot serve runs on
    the primary instead, so waiting long on the replica only delays the answer."""
    return await asyncpg.create_pool(
        url, min_size=0, max_size=size, init=_init_connection, command_timeout=10, timeout=3,
        server_settings={"application_name": "oms-reads"},
    )


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply the numbered migrations not yet applied; returns their names. Safe to run concurrently."""
    applied: list[str] = []
    await conn.execute("select pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            "create table if not exists schema_migrations ("
            " version integer primary key, name text not null,"
            " applied_at timestamptz not null default now())"
        )
        done = {r["version"] for r in await conn.fetch("select version from schema_migrations")}
        for path in sorted((SQL_DIR / "migrations").glob("*.sql")):
            version = int(path.name.split("_", 1)[0])
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute(
                    "insert into schema_migrations (version, name) values ($1, $2)", version, path.name
                )
            applied.append(path.name)
    finally:
        await conn.execute("select pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied
