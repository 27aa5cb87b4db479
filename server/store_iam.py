"""Identities: users, groups, access keys, custom policies and their versions, roles,
policy attachments, instance tags and request nonces.

Access key secrets are stored sealed under the master key (server.secrets); console
passwords as Argon2id hashes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from server.db import StoreBase, clean_text, insert_ignore, metadata, upsert, write_lock
from server.secrets import Keyring, SecretError, is_sealed, repo_keyring

users = sa.Table(
    "users", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("display_name", sa.String(128), nullable=False, default=""),
    sa.Column("password_hash", sa.String(256), nullable=True),
    sa.Column("password_set_at", sa.Float, nullable=True),
)
access_keys = sa.Table(
    "access_keys", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("user_name", sa.String(64), sa.ForeignKey("users.name"), nullable=False,
              index=True),
    sa.Column("secret", sa.String(256), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, default="Active"),
    sa.Column("created_at", sa.Float, nullable=False),
)
user_policies = sa.Table(
    "user_policies", metadata,
    sa.Column("user_name", sa.String(64), sa.ForeignKey("users.name"), primary_key=True),
    sa.Column("policy_name", sa.String(128), primary_key=True),
)
groups = sa.Table(
    "groups", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("description", sa.String(1024), nullable=False, default=""),
    sa.Column("created_at", sa.Float, nullable=False),
)
group_members = sa.Table(
    "group_members", metadata,
    sa.Column("group_name", sa.String(64), sa.ForeignKey("groups.name"), primary_key=True),
    sa.Column("user_name", sa.String(64), sa.ForeignKey("users.name"), primary_key=True),
)
group_policies = sa.Table(
    "group_policies", metadata,
    sa.Column("group_name", sa.String(64), sa.ForeignKey("groups.name"), primary_key=True),
    sa.Column("policy_name", sa.String(128), primary_key=True),
)
policies = sa.Table(
    "policies", metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("description", sa.String(1024), nullable=False, default=""),
    sa.Column("default_version", sa.String(16), nullable=False),
    sa.Column("next_version", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
policy_versions = sa.Table(
    "policy_versions", metadata,
    sa.Column("policy_name", sa.String(128), sa.ForeignKey("policies.name"), primary_key=True),
    sa.Column("version_id", sa.String(16), primary_key=True),
    sa.Column("document", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
roles = sa.Table(
    "roles", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("description", sa.String(1024), nullable=False, default=""),
    sa.Column("trust_policy", sa.Text, nullable=False),
    sa.Column("max_session_duration", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
role_policies = sa.Table(
    "role_policies", metadata,
    sa.Column("role_name", sa.String(64), sa.ForeignKey("roles.name"), primary_key=True),
    sa.Column("policy_name", sa.String(128), primary_key=True),
)
instance_tags = sa.Table(
    "instance_tags", metadata,
    sa.Column("instance_id", sa.String(32), primary_key=True),
    sa.Column("key", sa.String(128), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
)
iam_meta = sa.Table(
    "iam_meta", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Integer, nullable=False),
)
request_nonces = sa.Table(
    "request_nonces", metadata,
    sa.Column("key_id", sa.String(64), primary_key=True),
    sa.Column("nonce", sa.String(128), primary_key=True),
    sa.Column("seen_at", sa.Float, nullable=False, index=True),
)

def _opens(keyring: Keyring, sealed: str, key_id: str) -> bool:
    try:
        keyring.open(sealed, key_id)
    except SecretError:
        return False
    return True


_ATTACH = {"user": (user_policies, "user_name"), "group": (group_policies, "group_name"),
           "role": (role_policies, "role_name")}


class IamStore(StoreBase):
    # --- users ---------------------------------------------------------------------------

    async def create_user(self, name: str, policies: Sequence[str] = (),
                          display_name: str = "") -> None:
        async with self.engine.begin() as conn:
            await conn.execute(users.insert().values(
                name=name, created_at=time.time(), display_name=display_name))
            for p in policies:
                await conn.execute(user_policies.insert().values(user_name=name, policy_name=p))

    async def user(self, name: str) -> dict[str, Any] | None:
        return await self._one(sa.select(users).where(users.c.name == name))

    async def list_users(self) -> list[dict[str, Any]]:
        return await self._all(sa.select(users).order_by(users.c.name))

    async def delete_user(self, name: str) -> None:
        async with self.engine.begin() as conn:
            for table in (access_keys, user_policies, group_members):
                await conn.execute(table.delete().where(table.c.user_name == name))
            await conn.execute(users.delete().where(users.c.name == name))

    async def set_password_hash(self, name: str, password_hash: str | None) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(users.update().where(users.c.name == name).values(
                password_hash=password_hash,
                password_set_at=time.time() if password_hash else None))

    # --- access keys ---------------------------------------------------------------------

    async def create_access_key(self, user: str, key_id: str, secret: str) -> None:
        sealed = repo_keyring(self).seal(secret, key_id)
        async with self.engine.begin() as conn:
            await conn.execute(access_keys.insert().values(
                id=key_id, user_name=user, secret=sealed, status="Active", created_at=time.time()
            ))

    async def access_key(self, key_id: str) -> dict[str, Any] | None:
        """The key with its secret opened; None if unknown or its secret does not open."""
        row = await self._one(sa.select(access_keys).where(access_keys.c.id == key_id))
        if row is None:
            return None
        try:
            row["secret"] = repo_keyring(self).open(row["secret"], key_id)
        except SecretError:
            return None
        return row

    async def list_access_keys(self, user: str | None = None) -> list[dict[str, Any]]:
        stmt = sa.select(access_keys.c.id, access_keys.c.user_name, access_keys.c.status,
                         access_keys.c.created_at).order_by(access_keys.c.created_at,
                                                            access_keys.c.id)
        if user is not None:
            stmt = stmt.where(access_keys.c.user_name == user)
        return await self._all(stmt)

    async def set_access_key_status(self, key_id: str, status: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(access_keys.update().where(access_keys.c.id == key_id)
                               .values(status=status))

    async def delete_access_key(self, key_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(access_keys.delete().where(access_keys.c.id == key_id))

    async def seal_plaintext_secrets(self) -> int:
        """Seal secrets stored in the clear (databases from before sealing); returns how many.

        Raises SecretError if secrets are sealed but none opens with this master key: a server
        sharing the database with others was started with another (or a new) master key, and
        would lock every user out and write an audit chain that does not verify."""
        keyring = repo_keyring(self)
        rows = await self._all(sa.select(access_keys.c.id, access_keys.c.secret))
        sealed = [r for r in rows if is_sealed(r["secret"])]
        if sealed and not any(_opens(keyring, r["secret"], r["id"]) for r in sealed):
            raise SecretError("the access key secrets in the database are sealed under another "
                              "master key; give this server the deployment's master.key "
                              "(copy it into the data dir, or set PORTHOLE_MASTER_KEY_FILE)")
        plain = [r for r in rows if not is_sealed(r["secret"])]
        async with self.engine.begin() as conn:
            for r in plain:
                await conn.execute(access_keys.update().where(access_keys.c.id == r["id"])
                                   .values(secret=keyring.seal(r["secret"], r["id"])))
        return len(plain)

    # --- groups --------------------------------------------------------------------------

    async def create_group(self, name: str, description: str = "") -> None:
        async with self.engine.begin() as conn:
            await conn.execute(groups.insert().values(
                name=name, description=description, created_at=time.time()))

    async def group(self, name: str) -> dict[str, Any] | None:
        return await self._one(sa.select(groups).where(groups.c.name == name))

    async def list_groups(self) -> list[dict[str, Any]]:
        return await self._all(sa.select(groups).order_by(groups.c.name))

    async def delete_group(self, name: str) -> None:
        async with self.engine.begin() as conn:
            for table in (group_members, group_policies):
                await conn.execute(table.delete().where(table.c.group_name == name))
            await conn.execute(groups.delete().where(groups.c.name == name))

    async def add_user_to_group(self, group: str, user: str) -> bool:
        """False if the user was already a member."""
        try:
            async with self.engine.begin() as conn:
                await conn.execute(group_members.insert().values(group_name=group,
                                                                 user_name=user))
        except sa.exc.IntegrityError:
            return False
        return True

    async def remove_user_from_group(self, group: str, user: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(group_members.delete().where(
                (group_members.c.group_name == group) & (group_members.c.user_name == user)))
        return bool(result.rowcount)

    async def group_members(self, group: str) -> list[str]:
        rows = await self._all(sa.select(group_members.c.user_name)
                               .where(group_members.c.group_name == group)
                               .order_by(group_members.c.user_name))
        return [r["user_name"] for r in rows]

    async def groups_of_user(self, user: str) -> list[str]:
        rows = await self._all(sa.select(group_members.c.group_name)
                               .where(group_members.c.user_name == user)
                               .order_by(group_members.c.group_name))
        return [r["group_name"] for r in rows]

    # --- custom policies -----------------------------------------------------------------

    async def create_policy(self, name: str, document: str, description: str = "") -> None:
        now = time.time()
        async with self.engine.begin() as conn:
            await conn.execute(policies.insert().values(
                name=name, description=description, default_version="v1", next_version=2,
                created_at=now, updated_at=now))
            await conn.execute(policy_versions.insert().values(
                policy_name=name, version_id="v1", document=document, created_at=now))

    async def policy(self, name: str) -> dict[str, Any] | None:
        return await self._one(sa.select(policies).where(policies.c.name == name))

    async def list_policies(self) -> list[dict[str, Any]]:
        return await self._all(sa.select(policies).order_by(policies.c.name))

    async def delete_policy(self, name: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(policy_versions.delete()
                               .where(policy_versions.c.policy_name == name))
            await conn.execute(policies.delete().where(policies.c.name == name))

    async def add_policy_version(self, name: str, document: str, set_default: bool) -> str:
        now = time.time()
        async with self.engine.begin() as conn:
            await write_lock(conn)  # versions added at once get distinct numbers
            number: int = (await conn.execute(sa.select(policies.c.next_version)
                                              .where(policies.c.name == name)
                                              .with_for_update())).scalar_one()
            version = f"v{number}"
            await conn.execute(policy_versions.insert().values(
                policy_name=name, version_id=version, document=document, created_at=now))
            values: dict[str, Any] = {"next_version": number + 1, "updated_at": now}
            if set_default:
                values["default_version"] = version
            await conn.execute(policies.update().where(policies.c.name == name).values(**values))
        return version

    async def policy_versions(self, name: str) -> list[dict[str, Any]]:
        return await self._all(sa.select(policy_versions)
                               .where(policy_versions.c.policy_name == name)
                               .order_by(policy_versions.c.created_at,
                                         policy_versions.c.version_id))

    async def policy_version(self, name: str, version: str) -> dict[str, Any] | None:
        return await self._one(sa.select(policy_versions).where(
            (policy_versions.c.policy_name == name) & (policy_versions.c.version_id == version)))

    async def set_default_policy_version(self, name: str, version: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(policies.update().where(policies.c.name == name).values(
                default_version=version, updated_at=time.time()))

    async def delete_policy_version(self, name: str, version: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(policy_versions.delete().where(
                (policy_versions.c.policy_name == name)
                & (policy_versions.c.version_id == version)))

    async def default_documents(self, names: Sequence[str]) -> dict[str, tuple[str, str]]:
        """name -> (default version id, document) for the custom policies among names."""
        if not names:
            return {}
        rows = await self._all(
            sa.select(policies.c.name, policy_versions.c.version_id, policy_versions.c.document)
            .join(policy_versions, (policy_versions.c.policy_name == policies.c.name)
                  & (policy_versions.c.version_id == policies.c.default_version))
            .where(policies.c.name.in_(list(names))))
        return {r["name"]: (r["version_id"], r["document"]) for r in rows}

    # --- attachments ---------------------------------------------------------------------

    async def attach_policy(self, kind: str, target: str, policy_name: str) -> bool:
        table, column = _ATTACH[kind]
        try:
            async with self.engine.begin() as conn:
                await conn.execute(table.insert().values(
                    **{column: target, "policy_name": policy_name}))
        except sa.exc.IntegrityError:
            return False
        return True

    async def detach_policy(self, kind: str, target: str, policy_name: str) -> bool:
        table, column = _ATTACH[kind]
        async with self.engine.begin() as conn:
            result = await conn.execute(table.delete().where(
                (table.c[column] == target) & (table.c.policy_name == policy_name)))
        return bool(result.rowcount)

    async def attached_policies(self, kind: str, target: str) -> list[str]:
        table, column = _ATTACH[kind]
        rows = await self._all(sa.select(table.c.policy_name).where(table.c[column] == target)
                               .order_by(table.c.policy_name))
        return [r["policy_name"] for r in rows]

    async def policy_attachments(self, policy_name: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for kind, (table, column) in _ATTACH.items():
            rows = await self._all(sa.select(table.c[column])
                                   .where(table.c.policy_name == policy_name))
            out += [(kind, r[column]) for r in rows]
        return out

    async def user_policy_names(self, user: str) -> list[str]:
        """Policies attached to the user directly or through its groups."""
        direct = sa.select(user_policies.c.policy_name).where(user_policies.c.user_name == user)
        via_groups = (sa.select(group_policies.c.policy_name)
                      .join(group_members,
                            group_members.c.group_name == group_policies.c.group_name)
                      .where(group_members.c.user_name == user))
        rows = await self._all(sa.union(direct, via_groups))
        return sorted({r["policy_name"] for r in rows})

    # --- roles ---------------------------------------------------------------------------

    async def create_role(self, name: str, trust_policy: str, max_session_duration: int,
                          description: str = "") -> None:
        async with self.engine.begin() as conn:
            await conn.execute(roles.insert().values(
                name=name, trust_policy=trust_policy, max_session_duration=max_session_duration,
                description=description, created_at=time.time()))

    async def role(self, name: str) -> dict[str, Any] | None:
        return await self._one(sa.select(roles).where(roles.c.name == name))

    async def list_roles(self) -> list[dict[str, Any]]:
        return await self._all(sa.select(roles).order_by(roles.c.name))

    async def update_role(self, name: str, **values: Any) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(roles.update().where(roles.c.name == name).values(**values))

    async def delete_role(self, name: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(role_policies.delete().where(role_policies.c.role_name == name))
            await conn.execute(roles.delete().where(roles.c.name == name))

    # --- instance tags -------------------------------------------------------------------

    async def all_instance_tags(self) -> tuple[int, dict[str, dict[str, str]]]:
        """(generation, instance id -> {key: value})."""
        async with self.engine.connect() as conn:
            gen = (await conn.execute(sa.select(iam_meta.c.value)
                                      .where(iam_meta.c.name == "tags"))).scalar() or 0
            rows = (await conn.execute(sa.select(instance_tags))).all()
        tags: dict[str, dict[str, str]] = {}
        for r in rows:
            tags.setdefault(r.instance_id, {})[r.key] = r.value
        return gen, tags

    async def tags_generation(self) -> int:
        rows = await self._all(sa.select(iam_meta.c.value).where(iam_meta.c.name == "tags"))
        return rows[0]["value"] if rows else 0

    async def change_instance_tags(self, instance_id: str, put: dict[str, str],
                                   remove: Sequence[str]) -> None:
        async with self.engine.begin() as conn:
            gone = [k for k in remove if k not in put]
            if gone:
                await conn.execute(instance_tags.delete().where(
                    (instance_tags.c.instance_id == instance_id)
                    & instance_tags.c.key.in_(gone)))
            for k, v in put.items():
                await upsert(conn, instance_tags, {"instance_id": instance_id, "key": k,
                                                   "value": clean_text(v)},
                             {"value": clean_text(v)})
            await upsert(conn, iam_meta, {"name": "tags", "value": 1},
                         {"value": iam_meta.c.value + 1})

    async def instance_tags(self, instance_id: str) -> dict[str, str]:
        rows = await self._all(sa.select(instance_tags)
                               .where(instance_tags.c.instance_id == instance_id)
                               .order_by(instance_tags.c.key))
        return {r["key"]: r["value"] for r in rows}

    # --- request nonces ------------------------------------------------------------------

    _nonces_pruned_at = 0.0

    async def remember_nonce(self, key_id: str, nonce: str, max_age: float) -> bool:
        """Record a request nonce; False if it was seen before (a replay). Nonces older than
        ``max_age`` are pruned every few seconds, not on every request: concurrent requests
        deleting the same rows would wait on each other's row locks (PostgreSQL)."""
        now = time.time()
        async with self.engine.begin() as conn:
            if now - self._nonces_pruned_at > 5.0:
                self._nonces_pruned_at = now
                await conn.execute(
                    request_nonces.delete().where(request_nonces.c.seen_at < now - max_age))
            added = await insert_ignore(conn, request_nonces, [
                {"key_id": key_id, "nonce": clean_text(nonce), "seen_at": now}])
        return added == 1
