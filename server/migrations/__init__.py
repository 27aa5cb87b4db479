"""Schema migrations (Alembic), configured here rather than by an alembic.ini.

:func:`upgrade` brings a database to the newest revision inside one transaction that first
takes a lock, so that replicas starting together against one database take turns: a
PostgreSQL advisory lock, or SQLite's write lock (``BEGIN IMMEDIATE``). A database made before
migrations existed (Porthole's tables, no ``alembic_version``) is first completed to the
baseline (tables, nullable or defaulted columns and indexes it may lack are added) and
stamped at it, then upgraded like any other.

A schema change is a new file in ``versions/``; ``python -m server.migrations revision -m
"what changes"`` writes one from the difference between the metadata and the migrations.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.operations import Operations
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from server.db import StorageError

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
BASELINE = "0001"
ADVISORY_LOCK = 0x706F7274686F6C65
"""PostgreSQL advisory lock key held while migrating (the bytes of "porthole")."""


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """Alembic's configuration for our scripts, bound to ``connection``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: sa.Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


_in_process: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary())


async def upgrade(engine: AsyncEngine) -> str:
    """Migrate the database to the newest revision; returns it."""
    # Alembic's environment is process-global (alembic.context), so migrations in one
    # process run one at a time; the database lock orders them across processes.
    lock = _in_process.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with lock, engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(ADVISORY_LOCK)))
        revision = await conn.run_sync(_upgrade)
        await conn.commit()
    return revision


def _upgrade(connection: sa.Connection) -> str:
    cfg = alembic_config(connection)
    tables = set(sa.inspect(connection).get_table_names())
    before = current_revision(connection) if "alembic_version" in tables else None
    scripts = ScriptDirectory.from_config(cfg)
    if before is not None and before not in {s.revision for s in scripts.walk_revisions()}:
        raise StorageError(f"the database schema is at revision {before}, which this "
                           f"porthole-server does not know (it knows up to "
                           f"{scripts.get_current_head()}); run a newer porthole-server")
    if before is None and tables & set(_baseline_schema().tables):
        log.info("database from before migrations: completing and stamping it at %s",
                 BASELINE)
        _complete_to_baseline(connection)
        command.stamp(cfg, BASELINE)
        before = BASELINE
    command.upgrade(cfg, "head")
    after = current_revision(connection) or ""
    if after != before:
        log.info("database migrated from %s to %s", before or "empty", after)
    return after


def _baseline_schema() -> sa.MetaData:
    script = ScriptDirectory.from_config(alembic_config()).get_revision(BASELINE)
    assert script is not None
    schema: sa.MetaData = script.module.schema
    return schema


def _complete_to_baseline(connection: sa.Connection) -> None:
    """Add what an older pre-migration database lacks of the baseline: missing tables, and
    columns that can be added to existing rows (nullable or with a server default)."""
    schema = _baseline_schema()
    schema.create_all(connection)
    inspector = sa.inspect(connection)
    ops = Operations(MigrationContext.configure(connection))
    for table in schema.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not (column.nullable or column.server_default is not None):
                raise StorageError(f"table {table.name} lacks column {column.name}, which "
                                   "cannot be added to existing rows; the database is not "
                                   "one porthole-server made")
            ops.add_column(table.name, column._copy())
        indexes = {i["name"] for i in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexes:
                index.create(connection)


def compare_server_default(_context: Any, _inspected: Any, _column: Any,
                           inspected_default: str | None, _metadata_default: Any,
                           rendered_metadata_default: str | None) -> bool | None:
    """Alembic's server default comparison, except that SQLite's reflected ``('')`` equals
    an empty string default (Alembic's SQLite rule sees them as different)."""
    if inspected_default is not None and rendered_metadata_default is not None:
        unwrapped = inspected_default.strip("()")
        if unwrapped == "''" and rendered_metadata_default in ("", "''"):
            return False
    return None


COMPARE_OPTIONS: dict[str, Any] = {"compare_type": True,
                                   "compare_server_default": compare_server_default}


def schema_differences(connection: sa.Connection, metadata: sa.MetaData) -> list[Any]:
    """Alembic's differences between the database and ``metadata`` (empty: they agree)."""
    from alembic.autogenerate import compare_metadata

    context = MigrationContext.configure(connection, opts=COMPARE_OPTIONS)
    return list(compare_metadata(context, metadata))
