"""The storage base: one SQLAlchemy MetaData and the helpers every store mixin shares.

State sits behind one narrow repository (server.storage.Repository), composed of a mixin per
area (fleet, IAM, audit, commands), each owning its tables. SQLAlchemy Core (async) lets the
same queries run on SQLite (default) and PostgreSQL. Times are float seconds since the epoch.

What differs between the two engines is kept here: inserts that ignore or update an existing
row (``ON CONFLICT``, which both speak with their own dialect's construct), taking the write
lock before a read that decides a write, and making values that an agent or an operator sent
fit the column they go into (PostgreSQL refuses what SQLite would store: strings over their
length, NUL characters, integers beyond 32 or 64 bits).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

metadata = sa.MetaData()

BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
"""A 64-bit integer: BIGINT on PostgreSQL, INTEGER (always 64-bit) on SQLite."""

SUPPORTED_DIALECTS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
_INT_RANGES = {sa.SmallInteger: 2**15, sa.BigInteger: 2**63, sa.Integer: 2**31}


class StorageError(Exception):
    """The database cannot be used; str() is one line saying what to do."""


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def driver_url(url: str) -> sa.URL:
    """The async driver URL for ``url``: ``postgresql://`` and ``postgres://`` mean asyncpg,
    ``sqlite://`` means aiosqlite; other engines are refused with a StorageError."""
    try:
        parsed = sa.make_url(url.replace("postgres://", "postgresql://", 1)
                             if url.startswith("postgres://") else url)
    except sa.exc.ArgumentError:
        raise StorageError(f"database URL {url!r} is not a SQLAlchemy URL; use "
                           "postgresql://USER[:PASSWORD]@HOST[:PORT]/DB or "
                           "sqlite:///PATH") from None
    driver = SUPPORTED_DIALECTS.get(parsed.get_backend_name())
    if driver is None:
        raise StorageError(f"database {parsed.get_backend_name()!r} is not supported; "
                           "use PostgreSQL or SQLite")
    if parsed.drivername != driver:
        if "+" in parsed.drivername:
            raise StorageError(f"database driver {parsed.drivername!r} is not supported; "
                               f"use {driver}")
        parsed = parsed.set(drivername=driver)
    return parsed


def safe_url(url: sa.URL | str) -> str:
    """The URL with any password hidden, for messages and logs."""
    return sa.make_url(url).render_as_string(hide_password=True)


def clean_text(value: str) -> str:
    """Text both engines store as given: NUL (refused by PostgreSQL) becomes U+FFFD, and
    lone surrogates (not UTF-8) are escaped."""
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode()
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode()
    return value


def fit(table: sa.Table, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` made to fit ``table``'s columns, for data from outside (agents' reports):
    strings cleaned and cut to the column's length, integers clamped to its range, floats
    that are not finite dropped to NULL where the column allows it."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        column = table.c[name]
        kind = column.type
        if isinstance(value, str):
            value = clean_text(value)
            length = getattr(kind, "length", None)
            if length:
                value = value[:length]
        elif isinstance(value, int) and not isinstance(value, bool):
            for cls, limit in _INT_RANGES.items():
                if isinstance(kind, cls):
                    value = max(-limit, min(limit - 1, value))
                    break
        elif isinstance(value, float) and not math.isfinite(value) and column.nullable:
            value = None
        out[name] = value
    return out


def dialect_insert(conn: AsyncConnection, table: sa.Table) -> Any:
    """An INSERT of the connection's dialect, which knows ``ON CONFLICT``."""
    module = postgresql if conn.dialect.name == "postgresql" else sqlite
    return module.insert(table)


async def insert_ignore(conn: AsyncConnection, table: sa.Table,
                        rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert rows, skipping any whose primary key is taken; returns how many went in."""
    if not rows:
        return 0
    stmt = dialect_insert(conn, table).on_conflict_do_nothing()
    if len(rows) == 1:
        return (await conn.execute(stmt.values(**rows[0]))).rowcount
    return (await conn.execute(stmt, list(rows))).rowcount


async def upsert(conn: AsyncConnection, table: sa.Table, values: Mapping[str, Any],
                 update: Mapping[str, Any]) -> None:
    """Insert ``values``, or, if the primary key is taken, set ``update`` on that row."""
    keys = [c.name for c in table.primary_key.columns]
    await conn.execute(dialect_insert(conn, table).values(**values)
                       .on_conflict_do_update(index_elements=keys, set_=dict(update)))


async def write_lock(conn: AsyncConnection) -> None:
    """On SQLite, take the database's write lock now, as the transaction's first statement,
    so that what it reads next cannot change before it writes (other processes wait, up to
    the busy timeout). PostgreSQL takes row locks instead (``SELECT … FOR UPDATE``)."""
    if conn.dialect.name == "sqlite":
        await conn.exec_driver_sql("BEGIN IMMEDIATE")


class StoreBase:
    engine: AsyncEngine

    async def _all(self, stmt: Any) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            result = await conn.execute(stmt)
            keys = list(result.keys())  # once: a row's _mapping builds them again each time
            return [dict(zip(keys, row, strict=True)) for row in result]

    async def _one(self, stmt: Any) -> dict[str, Any] | None:
        rows = await self._all(stmt)
        return rows[0] if rows else None
