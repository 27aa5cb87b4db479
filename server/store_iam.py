"""Users, access keys, attached policies and request nonces."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from server.db import StoreBase, metadata

users = sa.Table(
    "users", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
)
access_keys = sa.Table(
    "access_keys", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("user_name", sa.String(64), sa.ForeignKey("users.name"), nullable=False),
    sa.Column("secret", sa.String(128), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, default="Active"),
    sa.Column("created_at", sa.Float, nullable=False),
)
user_policies = sa.Table(
    "user_policies", metadata,
    sa.Column("user_name", sa.String(64), sa.ForeignKey("users.name"), primary_key=True),
    sa.Column("policy_name", sa.String(128), primary_key=True),
)
request_nonces = sa.Table(
    "request_nonces", metadata,
    sa.Column("key_id", sa.String(64), primary_key=True),
    sa.Column("nonce", sa.String(128), primary_key=True),
    sa.Column("seen_at", sa.Float, nullable=False, index=True),
)


class IamStore(StoreBase):
    async def create_user(self, name: str, policies: Sequence[str] = ()) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(users.insert().values(name=name, created_at=time.time()))
            for p in policies:
                await conn.execute(user_policies.insert().values(user_name=name, policy_name=p))

    async def create_access_key(self, user: str, key_id: str, secret: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(access_keys.insert().values(
                id=key_id, user_name=user, secret=secret, status="Active", created_at=time.time()
            ))

    async def access_key(self, key_id: str) -> dict[str, Any] | None:
        return await self._one(sa.select(access_keys).where(access_keys.c.id == key_id))

    async def user_policy_names(self, user: str) -> list[str]:
        rows = await self._all(
            sa.select(user_policies.c.policy_name).where(user_policies.c.user_name == user)
        )
        return [r["policy_name"] for r in rows]

    async def remember_nonce(self, key_id: str, nonce: str, max_age: float) -> bool:
        """Record a request nonce; False if it was seen before (a replay)."""
        now = time.time()
        async with self.engine.begin() as conn:
            await conn.execute(
                request_nonces.delete().where(request_nonces.c.seen_at < now - max_age)
            )
            try:
                async with conn.begin_nested():
                    await conn.execute(
                        request_nonces.insert().values(key_id=key_id, nonce=nonce, seen_at=now)
                    )
            except sa.exc.IntegrityError:
                return False
        return True
