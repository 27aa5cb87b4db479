"""The repository: the one narrow interface to persistent state (see server.db)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from server.db import StorageError, driver_url, hash_secret, metadata, safe_url
from server.store_audit import AuditStore
from server.store_commands import FINAL_STATUSES, CommandStore
from server.store_fleet import ActivationError, FleetStore
from server.store_iam import IamStore

__all__ = ["FINAL_STATUSES", "ActivationError", "Repository", "StorageError", "hash_secret",
           "metadata"]


def create_engine(url: str) -> AsyncEngine:
    """An async engine for ``url`` (PostgreSQL through asyncpg, or SQLite through aiosqlite)
    with pool settings that suit it."""
    parsed = driver_url(url)
    if parsed.get_backend_name() == "postgresql":
        # Each replica holds at most pool_size + max_overflow connections: 30 per replica
        # stays within PostgreSQL's default max_connections (100) for three replicas.
        # Bursts (fifty sessions opened at once) queue for a connection rather than fail.
        # Pre-ping replaces connections that a database restart or failover closed.
        return create_async_engine(
            parsed, pool_size=10, max_overflow=20, pool_timeout=120, pool_pre_ping=True,
            pool_recycle=1800,
            connect_args={"server_settings": {"application_name": "porthole-server"}})
    engine = create_async_engine(parsed, pool_size=10, max_overflow=30, pool_timeout=120)

    @sa.event.listens_for(engine.sync_engine, "connect")
    def _pragmas(conn: Any, _record: Any) -> None:
        cur = conn.cursor()
        cur.execute("PRAGMA busy_timeout=10000")  # first: switching to WAL may have to wait
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return engine


class Repository(FleetStore, IamStore, AuditStore, CommandStore):
    schema_revision = ""
    """The migration revision the database was at when opened ("" if not migrated)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @classmethod
    async def open(cls, url: str, migrate: bool = True) -> Repository:
        """Open the database at ``url`` and (unless ``migrate`` is false) bring its schema to
        the newest revision. Raises StorageError, one line, if that cannot be done."""
        from server.migrations import upgrade

        engine = create_engine(url)
        revision = ""
        try:
            if migrate:
                revision = await upgrade(engine)
            else:
                async with engine.connect() as conn:
                    await conn.execute(sa.text("SELECT 1"))
        except (OSError, sa.exc.DBAPIError) as exc:
            await engine.dispose()
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            raise StorageError(f"cannot use the database {safe_url(engine.url)}: "
                               f"{reason[0] if reason else type(exc).__name__}") from exc
        except BaseException:
            await engine.dispose()
            raise
        repo = cls(engine)
        repo.schema_revision = revision
        return repo

    async def close(self) -> None:
        await self.engine.dispose()
