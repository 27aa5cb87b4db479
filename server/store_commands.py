"""Command invocations and their per-instance results."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from server.db import StoreBase, metadata

invocations = sa.Table(
    "invocations", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("command_type", sa.String(32), nullable=False),
    sa.Column("command_content", sa.Text, nullable=False),
    sa.Column("username", sa.String(64), nullable=False),
    sa.Column("timeout", sa.Integer, nullable=False),
    sa.Column("working_dir", sa.String(1024), nullable=False, default=""),
    sa.Column("created_by", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
invocation_results = sa.Table(
    "invocation_results", metadata,
    sa.Column("invocation_id", sa.String(64), sa.ForeignKey("invocations.id"), primary_key=True),
    sa.Column("instance_id", sa.String(32), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("exit_code", sa.Integer),
    sa.Column("error_code", sa.String(64), nullable=False, default=""),
    sa.Column("error_info", sa.Text, nullable=False, default=""),
    sa.Column("output", sa.LargeBinary, nullable=False, default=b""),
    sa.Column("dropped", sa.Integer, nullable=False, default=0),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
)

FINAL_STATUSES = frozenset(
    {"Success", "Failed", "Error", "Timeout", "Cancelled", "Terminated", "Invalid"}
)


class CommandStore(StoreBase):
    async def create_invocation(
        self, invocation: dict[str, Any], targets: Sequence[tuple[str, str, str]]
    ) -> None:
        """``targets``: (instance_id, initial status, error code) per instance."""
        now = time.time()
        async with self.engine.begin() as conn:
            await conn.execute(invocations.insert().values(created_at=now, **invocation))
            for instance_id, status, error_code in targets:
                final = status in FINAL_STATUSES
                await conn.execute(invocation_results.insert().values(
                    invocation_id=invocation["id"], instance_id=instance_id, status=status,
                    error_code=error_code, output=b"", dropped=0,
                    finished_at=now if final else None,
                ))

    async def invocation(self, invocation_id: str) -> dict[str, Any] | None:
        return await self._one(sa.select(invocations).where(invocations.c.id == invocation_id))

    async def set_result_status(self, invocation_id: str, instance_id: str, status: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                invocation_results.update()
                .where(invocation_results.c.invocation_id == invocation_id)
                .where(invocation_results.c.instance_id == instance_id)
                .where(invocation_results.c.status.not_in(list(FINAL_STATUSES)))
                .values(status=status, started_at=time.time())
            )

    async def store_result(self, instance_id: str, result: dict[str, Any]) -> bool:
        """Store an agent's final result once; False if it was already final (a resend)."""
        async with self.engine.begin() as conn:
            updated = await conn.execute(
                invocation_results.update()
                .where(invocation_results.c.invocation_id == result["invocation_id"])
                .where(invocation_results.c.instance_id == instance_id)
                .where(invocation_results.c.status.not_in(list(FINAL_STATUSES)))
                .values(**{k: v for k, v in result.items() if k != "invocation_id"})
            )
            return updated.rowcount == 1

    async def invocation_results_for(self, invocation_id: str) -> list[dict[str, Any]]:
        return await self._all(
            sa.select(invocation_results)
            .where(invocation_results.c.invocation_id == invocation_id)
            .order_by(invocation_results.c.instance_id)
        )
