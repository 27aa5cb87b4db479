"""Regions, activations, managed instances and terminal sessions."""

from __future__ import annotations

import hmac
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from server.db import BigInt, StoreBase, fit, hash_secret, insert_ignore, metadata

regions = sa.Table(
    "regions", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("session_manager_enabled", sa.Boolean, nullable=False, default=True),
    sa.Column("idle_timeout", sa.Integer, nullable=False, default=20),  # minutes
    sa.Column("max_session_duration", sa.Integer),  # minutes; NULL: no limit
)
sessions = sa.Table(
    "sessions", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("instance_id", sa.String(32), nullable=False, index=True),
    sa.Column("region", sa.String(64), nullable=False),
    sa.Column("channel", sa.Integer, nullable=False),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("run_as", sa.String(64), nullable=False),
    sa.Column("command", sa.Text, nullable=False, default=""),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("source_ip", sa.String(64), nullable=False, default=""),
    sa.Column("status", sa.String(16), nullable=False),  # Connecting, Active, Terminated, Failed
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float),
    sa.Column("exit_code", BigInt),
    sa.Column("end_reason", sa.Text, nullable=False, default=""),
    sa.Column("recording", sa.String(1024), nullable=False, default=""),
    sa.Column("kind", sa.String(16), nullable=False, default="shell"),
    sa.Column("port_number", sa.Integer),
    sa.Column("remote_host", sa.String(256), nullable=False, default=""),
    sa.Column("replica", sa.String(64), nullable=False, server_default=""),
)
activations = sa.Table(
    "activations", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("code_hash", sa.String(64), nullable=False),
    sa.Column("region", sa.String(64), nullable=False),
    sa.Column("description", sa.String(256), nullable=False, default=""),
    sa.Column("usage_limit", sa.Integer, nullable=False),
    sa.Column("usage_count", sa.Integer, nullable=False, default=0),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("created_by", sa.String(64), nullable=False),
)
instances = sa.Table(
    "instances", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("public_key", sa.LargeBinary, nullable=False),
    sa.Column("region", sa.String(64), nullable=False, index=True),
    sa.Column("hostname", sa.String(256), nullable=False, default=""),
    sa.Column("platform", sa.String(64), nullable=False, default=""),
    sa.Column("os_name", sa.String(256), nullable=False, default=""),
    sa.Column("agent_version", sa.String(64), nullable=False, default=""),
    sa.Column("activation_id", sa.String(64), nullable=False),
    sa.Column("registered_at", sa.Float, nullable=False),
    sa.Column("last_heartbeat", sa.Float),
    sa.Column("connected", sa.Boolean, nullable=False, default=False),
    sa.Column("deregistered_at", sa.Float),
    sa.Column("replica", sa.String(64), nullable=False, server_default=""),
)


class ActivationError(Exception):
    """Registration refused; str() says why in one line."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class FleetStore(StoreBase):
    async def ensure_regions(self, names: Sequence[str]) -> None:
        """Add the regions not yet known (replicas starting together may race: no error)."""
        async with self.engine.begin() as conn:
            await insert_ignore(conn, regions, [{"name": name} for name in dict.fromkeys(names)])

    async def region_names(self) -> list[str]:
        return [r["name"] for r in await self._all(sa.select(regions.c.name)
                                                   .order_by(regions.c.name))]

    async def regions(self, name: str | None = None) -> list[dict[str, Any]]:
        stmt = sa.select(regions).order_by(regions.c.name)
        if name:
            stmt = stmt.where(regions.c.name == name)
        return await self._all(stmt)

    async def update_region(self, name: str, **values: Any) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(regions.update().where(regions.c.name == name).values(**values))

    async def create_activation(
        self, activation_id: str, code: str, region: str, usage_limit: int, expires_at: float,
        description: str, created_by: str,
    ) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(activations.insert().values(
                id=activation_id, code_hash=hash_secret(code), region=region,
                description=description, usage_limit=usage_limit, usage_count=0,
                expires_at=expires_at, created_at=time.time(), created_by=created_by,
            ))

    async def list_activations(self) -> list[dict[str, Any]]:
        return await self._all(sa.select(activations).order_by(activations.c.created_at,
                                                                activations.c.id))

    async def register_instance(
        self, activation_id: str, code: str, region: str, instance_id: str, public_key: bytes,
        info: dict[str, str],
    ) -> None:
        """Use one registration of an activation; raises ActivationError if it is not valid."""
        async with self.engine.begin() as conn:
            row = (await conn.execute(
                sa.select(activations).where(activations.c.id == activation_id)
            )).first()
            if row is None or not hmac.compare_digest(row.code_hash, hash_secret(code)):
                raise ActivationError(
                    "InvalidActivation", "activation id or code is wrong; check both values"
                )
            if row.region != region:
                raise ActivationError(
                    "InvalidActivation.Region",
                    f"activation {activation_id} is for region {row.region}, not {region}",
                )
            if row.expires_at < time.time():
                raise ActivationError(
                    "InvalidActivation.Expired",
                    f"activation {activation_id} has expired; create a new one",
                )
            used = await conn.execute(
                activations.update()
                .where(activations.c.id == activation_id)
                .where(activations.c.usage_count < activations.c.usage_limit)
                .values(usage_count=activations.c.usage_count + 1)
            )
            if used.rowcount != 1:
                raise ActivationError(
                    "InvalidActivation.LimitExceeded",
                    f"activation {activation_id} has been used {row.usage_limit} time(s), "
                    "its limit; create a new one",
                )
            await conn.execute(instances.insert().values(
                id=instance_id, public_key=public_key, region=region,
                activation_id=activation_id, registered_at=time.time(), connected=False,
                **fit(instances, {k: info.get(k, "") for k in
                                  ("hostname", "platform", "os_name", "agent_version")}),
            ))

    async def instance(self, instance_id: str) -> dict[str, Any] | None:
        return await self._one(sa.select(instances).where(instances.c.id == instance_id))

    async def list_instances(
        self, region: str | None = None, ids: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        stmt = sa.select(instances).where(instances.c.deregistered_at.is_(None))
        if region:
            stmt = stmt.where(instances.c.region == region)
        if not ids:
            return await self._all(stmt.order_by(instances.c.registered_at, instances.c.id))
        wanted, rows = sorted(set(ids)), []
        for start in range(0, len(wanted), 500):  # bound parameters per statement are limited
            rows += await self._all(stmt.where(instances.c.id.in_(wanted[start:start + 500])))
        return sorted(rows, key=lambda r: (r["registered_at"], r["id"]))

    async def mark_connected(self, instance_id: str, info: dict[str, str],
                             replica: str = "") -> None:
        async with self.engine.begin() as conn:
            await conn.execute(instances.update().where(instances.c.id == instance_id).values(
                connected=True, last_heartbeat=time.time(), replica=replica,
                **fit(instances, info)))

    async def mark_heartbeat(self, instance_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(instances.update().where(instances.c.id == instance_id).values(
                last_heartbeat=time.time()
            ))

    async def mark_disconnected(self, instance_id: str, replica: str = "") -> None:
        """The agent left ``replica`` (unless it has dialled another replica meanwhile)."""
        async with self.engine.begin() as conn:
            await conn.execute(instances.update().where(instances.c.id == instance_id)
                               .where(instances.c.replica == replica).values(connected=False))

    async def mark_presence(self, connected: Mapping[str, Mapping[str, str]],
                            disconnected: Collection[str], heartbeats: Collection[str],
                            replica: str = "") -> None:
        """Many agents at once, in one transaction: ``connected`` (id: what changed in its
        report, often nothing) as mark_connected, ``disconnected`` as mark_disconnected,
        ``heartbeats`` as mark_heartbeat. An id belongs in at most one of connected and
        disconnected."""
        now = time.time()
        c = instances.c
        async with self.engine.begin() as conn:
            same = sorted(iid for iid, info in connected.items() if not info)
            for start in range(0, len(same), 500):  # one statement for many rows
                await conn.execute(instances.update().where(c.id.in_(same[start:start + 500]))
                                   .values(connected=True, last_heartbeat=now, replica=replica))
            by_keys: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for iid, info in connected.items():
                if info:
                    report = fit(instances, info)
                    by_keys.setdefault(tuple(sorted(report)), []).append(
                        {"b_id": iid, **{f"b_{k}": v for k, v in report.items()}})
            for keys, rows in by_keys.items():
                stmt = instances.update().where(c.id == sa.bindparam("b_id")).values(
                    connected=True, last_heartbeat=now, replica=replica,
                    **{k: sa.bindparam(f"b_{k}") for k in keys})
                await conn.execute(stmt, rows)
            gone, beats = sorted(disconnected), sorted(heartbeats)
            for start in range(0, len(gone), 500):
                await conn.execute(instances.update().where(c.id.in_(gone[start:start + 500]))
                                   .where(c.replica == replica).values(connected=False))
            for start in range(0, len(beats), 500):
                await conn.execute(instances.update().where(c.id.in_(beats[start:start + 500]))
                                   .values(last_heartbeat=now))

    async def deregister_instance(self, instance_id: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                instances.update()
                .where(instances.c.id == instance_id)
                .where(instances.c.deregistered_at.is_(None))
                .values(deregistered_at=time.time(), connected=False)
            )
            return result.rowcount == 1

    async def reset_connections(self, replica: str = "") -> None:
        """At start-up no agent is connected to this server (or replica) yet."""
        async with self.engine.begin() as conn:
            await conn.execute(instances.update().where(instances.c.replica == replica)
                               .values(connected=False))

    async def connected_replicas(self) -> set[str]:
        """Replicas that hold at least one agent, as the database says."""
        rows = await self._all(sa.select(instances.c.replica).distinct()
                               .where(instances.c.connected.is_(True)))
        return {r["replica"] for r in rows}

    async def disconnect_replicas(self, replicas: set[str]) -> None:
        """Mark offline every agent that dead replicas held."""
        async with self.engine.begin() as conn:
            await conn.execute(instances.update().where(instances.c.replica.in_(sorted(replicas)))
                               .where(instances.c.connected.is_(True)).values(connected=False))

    async def instance_replicas(self, instance_ids: Sequence[str]) -> dict[str, str]:
        """Which replica holds each of these instances, for those that are connected."""
        held: dict[str, str] = {}
        ids = sorted(set(instance_ids))
        for start in range(0, len(ids), 500):
            rows = await self._all(sa.select(instances.c.id, instances.c.replica)
                                   .where(instances.c.id.in_(ids[start:start + 500]))
                                   .where(instances.c.connected.is_(True)))
            held.update((r["id"], r["replica"]) for r in rows)
        return held

    async def create_session(self, **values: Any) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sessions.insert().values(started_at=time.time(),
                                                        **fit(sessions, values)))

    async def update_session(self, session_id: str, **values: Any) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sessions.update().where(sessions.c.id == session_id)
                               .values(**fit(sessions, values)))

    async def session(self, session_id: str) -> dict[str, Any] | None:
        return await self._one(sa.select(sessions).where(sessions.c.id == session_id))

    async def session_by_channel(self, instance_id: str, channel: int) -> dict[str, Any] | None:
        """The open session on this channel of the instance, if any."""
        return await self._one(sa.select(sessions).where(sessions.c.instance_id == instance_id)
                               .where(sessions.c.channel == channel)
                               .where(sessions.c.status.in_(["Connecting", "Active"])))

    async def list_sessions(self, active: bool = False) -> list[dict[str, Any]]:
        stmt = sa.select(sessions).order_by(sessions.c.started_at, sessions.c.id)
        if active:
            stmt = stmt.where(sessions.c.status.in_(["Connecting", "Active"]))
        return await self._all(stmt)
