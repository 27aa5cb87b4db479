"""The storage base: one SQLAlchemy MetaData and the helpers every store mixin shares.

State sits behind one narrow repository (server.storage.Repository), composed of a mixin per
area (fleet, IAM, audit, commands), each owning its tables. SQLAlchemy Core (async) lets the
same queries run on SQLite (default) and PostgreSQL. Times are float seconds since the epoch.
"""

from __future__ import annotations

import hashlib
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

metadata = sa.MetaData()


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class StoreBase:
    engine: AsyncEngine

    async def _all(self, stmt: Any) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(stmt)]

    async def _one(self, stmt: Any) -> dict[str, Any] | None:
        rows = await self._all(stmt)
        return rows[0] if rows else None
