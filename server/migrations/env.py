"""Alembic's environment: migrations run on the connection that server.migrations hands
over (``config.attributes["connection"]``), inside the transaction it holds."""

from __future__ import annotations

from alembic import context

import server.storage  # noqa: F401  (every store's tables onto server.db.metadata)
from server.db import metadata
from server.migrations import COMPARE_OPTIONS

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("migrations run through server.migrations: porthole-server migrate, "
                       "or python -m server.migrations revision")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True,
                  **COMPARE_OPTIONS)
with context.begin_transaction():
    context.run_migrations()
