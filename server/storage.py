"""The repository: the one narrow interface to persistent state (see server.db)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from server.db import hash_secret, metadata
from server.store_audit import AuditStore
from server.store_commands import FINAL_STATUSES, CommandStore
from server.store_fleet import ActivationError, FleetStore
from server.store_iam import IamStore

__all__ = ["FINAL_STATUSES", "ActivationError", "Repository", "hash_secret", "metadata"]


class Repository(FleetStore, IamStore, AuditStore, CommandStore):
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @classmethod
    async def open(cls, url: str) -> Repository:
        # Bursts of API calls (fifty sessions opened at once) must queue for a connection
        # rather than fail: a larger pool and a longer wait than SQLAlchemy's defaults.
        engine = create_async_engine(url, pool_size=10, max_overflow=30, pool_timeout=120)
        if engine.dialect.name == "sqlite":
            @sa.event.listens_for(engine.sync_engine, "connect")
            def _pragmas(conn: Any, _record: Any) -> None:
                cur = conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA busy_timeout=10000")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()
        repo = cls(engine)
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        return repo

    async def close(self) -> None:
        await self.engine.dispose()
