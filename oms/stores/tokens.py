"""Store tokens: issued by an admin per store, kept only as a sha256, revocable."""

from __future__ import annotations

import hashlib
import secrets
from typing import TYPE_CHECKING

import asyncpg

from oms.errors import NotFound
from oms.infra.db import Q
from oms.infra.ids import new_id
from oms.stores.model import (
    IssuedToken,
    TOKEN_PREFIX,
    TokenInfo,
)

if TYPE_CHECKING:
    pass


# ---- tokens --------------------------------------------------------------------------------
def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def issue_token(pool: asyncpg.Pool, node_id: str, label: str = "") -> IssuedToken:
    """A new bearer token for one node; only its hash is stored, so this is the one time it is shown."""
    if await pool.fetchrow(Q["node_get"], node_id) is None:
        raise NotFound(f"no node with id '{node_id}'", field="node_id")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = await pool.fetchrow(Q["store_token_insert"], new_id("tok"), node_id, hash_token(token), label)
    return IssuedToken(token=token, id=row["id"], node_id=row["node_id"], label=row["label"],
                       created_at=row["created_at"])


async def list_tokens(pool: asyncpg.Pool, node_id: str) -> list[TokenInfo]:
    return [TokenInfo(**dict(r)) for r in await pool.fetch(Q["store_tokens_by_node"], node_id)]


async def revoke_token(pool: asyncpg.Pool, node_id: str, token_id: str) -> TokenInfo:
    row = await pool.fetchrow(Q["store_token_revoke"], node_id, token_id)
    if row is None:
        raise NotFound(f"node '{node_id}' has no token '{token_id}'", field="token_id")
    return TokenInfo(**dict(row))


async def token_owner(pool: asyncpg.Pool, token: str) -> str | None:
    """The node a live token acts for, or None (unknown or revoked)."""
    return await pool.fetchval(Q["store_token_owner"], hash_token(token))
