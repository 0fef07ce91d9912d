"""A PostgreSQL database of a test's own, migrated up to a version: for tests of a migration itself
or of what must not touch the session's shared database."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from oms.infra import db


@asynccontextmanager
async def fresh_database(settings, prefix: str) -> AsyncIterator[str]:
    """An empty database of the caller's own on the session's PostgreSQL: yields its URL; dropped
    afterwards (with whatever still holds a connection to it)."""
    parts = urlsplit(settings.database_url)
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    dbname = prefix + secrets.token_hex(4)
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'create database "{dbname}"')
    await admin.close()
    try:
        yield urlunsplit(parts._replace(path="/" + dbname))
    finally:
        admin = await asyncpg.connect(admin_url)
        await admin.execute(f'drop database if exists "{dbname}" with (force)')
        await admin.close()


@asynccontextmanager
async def own_database(settings, *, upto: int | None, prefix: str = "oms_own_") -> AsyncIterator[asyncpg.Connection]:
    """A connection to a new database migrated up to (not including) `upto`, or all the way;
    dropped afterwards."""
    async with fresh_database(settings, prefix) as url:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("create table schema_migrations (version integer primary key, name text not null,"
                               " applied_at timestamptz not null default now())")
            for path in sorted((db.SQL_DIR / "migrations").glob("*.sql")):
                version = int(path.name.split("_", 1)[0])
                if upto is not None and version >= upto:
                    break
                await conn.execute(path.read_text())
                await conn.execute("insert into schema_migrations (version, name) values ($1, $2)", version, path.name)
            yield conn
        finally:
            await conn.close()
