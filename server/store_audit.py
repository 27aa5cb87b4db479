"""The audit log."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from server.db import StoreBase, metadata

audit_log = sa.Table(
    "audit_log", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("request_id", sa.String(64), nullable=False, default=""),
    sa.Column("principal", sa.String(128), nullable=False),
    sa.Column("action", sa.String(128), nullable=False),
    sa.Column("resource", sa.String(512), nullable=False, default=""),
    sa.Column("source_ip", sa.String(64), nullable=False, default=""),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("detail", sa.Text, nullable=False, default=""),
)


class AuditStore(StoreBase):
    async def audit(self, **entry: Any) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(audit_log.insert().values(at=time.time(), **entry))
