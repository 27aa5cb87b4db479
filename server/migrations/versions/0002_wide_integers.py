"""64-bit exit codes and dropped-byte counts.

Windows exit codes are unsigned 32-bit (0xC0000005 is 3221225477) and a task that writes
without end drops more than 2**31 bytes: both overflow PostgreSQL's INTEGER. SQLite's INTEGER
is always 64-bit, so only PostgreSQL changes.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

COLUMNS = (("sessions", "exit_code", True), ("invocation_results", "exit_code", True),
           ("invocation_results", "dropped", False))


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    for table, column, nullable in COLUMNS:
        op.alter_column(table, column, type_=sa.BigInteger(), existing_type=sa.Integer(),
                        existing_nullable=nullable)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    for table, column, nullable in COLUMNS:
        op.alter_column(table, column, type_=sa.Integer(), existing_type=sa.BigInteger(),
                        existing_nullable=nullable)
