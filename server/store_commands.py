"""Saved commands, invocations, their tasks (one run on one instance) and task output.

An invocation targets instances; each run of it on one instance is a task, numbered by
``repeat`` (1 for a one-off invocation, 1, 2, 3... for schedules and reboots). Output is kept in
chunks of up to 64 KiB so that 16 MiB results stream in and out without large rows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from server.db import BigInt, StoreBase, fit, insert_ignore, metadata, upsert, write_lock

commands = sa.Table(
    "commands", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("region", sa.String(64), nullable=False, index=True),
    sa.Column("name", sa.String(128), nullable=False, index=True),
    sa.Column("description", sa.String(512), nullable=False, default=""),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("working_dir", sa.String(1024), nullable=False, default=""),
    sa.Column("timeout", sa.Integer, nullable=False),
    sa.Column("enable_parameter", sa.Boolean, nullable=False, default=False),
    sa.Column("parameter_names", sa.Text, nullable=False, default="[]"),
    sa.Column("default_parameters", sa.Text, nullable=False, default="{}"),
    sa.Column("created_by", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("modified_at", sa.Float, nullable=False),
)
invocations = sa.Table(
    "invocations", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("region", sa.String(64), nullable=False, default=""),
    sa.Column("kind", sa.String(16), nullable=False, default="command"),  # command | file
    sa.Column("command_id", sa.String(64), nullable=False, default="", index=True),
    sa.Column("command_name", sa.String(128), nullable=False, default=""),
    sa.Column("command_type", sa.String(32), nullable=False),
    sa.Column("command_content", sa.Text, nullable=False),
    sa.Column("parameters", sa.Text, nullable=False, default="{}"),
    sa.Column("file", sa.Text, nullable=False, default="{}"),  # SendFile: where and how
    sa.Column("username", sa.String(64), nullable=False),
    sa.Column("timeout", sa.Integer, nullable=False),
    sa.Column("working_dir", sa.String(1024), nullable=False, default=""),
    sa.Column("repeat_mode", sa.String(16), nullable=False, default="Once"),
    sa.Column("frequency", sa.String(256), nullable=False, default=""),
    sa.Column("next_run_at", sa.Float, index=True),
    sa.Column("repeats", sa.Integer, nullable=False, default=0),
    sa.Column("max_concurrency", sa.Integer, nullable=False, default=0),  # 0: no limit
    sa.Column("max_errors", sa.Integer, nullable=False, default=-1),  # -1: no limit
    sa.Column("delivery_timeout", sa.Float, nullable=False, default=600.0),
    sa.Column("stop_requested_at", sa.Float),
    sa.Column("created_by", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False, index=True),
)
invocation_targets = sa.Table(
    "invocation_targets", metadata,
    sa.Column("invocation_id", sa.String(64), sa.ForeignKey("invocations.id"), primary_key=True),
    sa.Column("instance_id", sa.String(32), primary_key=True, index=True),
    sa.Column("boot_id", sa.String(64), nullable=False, default=""),
    sa.Column("done", sa.Boolean, nullable=False, default=False),
)
invocation_results = sa.Table(
    "invocation_results", metadata,
    sa.Column("invocation_id", sa.String(64), sa.ForeignKey("invocations.id"), primary_key=True),
    sa.Column("instance_id", sa.String(32), primary_key=True, index=True),
    sa.Column("repeat", sa.Integer, primary_key=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("exit_code", BigInt),
    sa.Column("error_code", sa.String(64), nullable=False, default=""),
    sa.Column("error_info", sa.Text, nullable=False, default=""),
    sa.Column("output_size", sa.Integer, nullable=False, default=0),
    sa.Column("dropped", BigInt, nullable=False, default=0),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("dispatched_at", sa.Float),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
)
invocation_outputs = sa.Table(
    "invocation_outputs", metadata,
    sa.Column("invocation_id", sa.String(64), primary_key=True),
    sa.Column("instance_id", sa.String(32), primary_key=True),
    sa.Column("repeat", sa.Integer, primary_key=True),
    sa.Column("offset", sa.Integer, primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
)
instance_boots = sa.Table(
    "instance_boots", metadata,
    sa.Column("instance_id", sa.String(32), primary_key=True),
    sa.Column("boot_id", sa.String(64), nullable=False),
    sa.Column("reported_at", sa.Float, nullable=False),
)

FINAL_STATUSES = frozenset(
    {"Success", "Failed", "Error", "Timeout", "Cancelled", "Terminated", "Invalid"}
)
ACTIVE_STATUSES = ("Pending", "Running", "Stopping")
REBOOT_MODES = ("EveryReboot", "NextRebootOnly")

TaskKey = tuple[str, str, int]
"""(invocation id, instance id, repeat)"""


def _key_clause(keys: Sequence[TaskKey]) -> Any:
    t = invocation_results.c
    return sa.or_(*[sa.and_(t.invocation_id == i, t.instance_id == n, t.repeat == r)
                    for i, n, r in keys])


def _chunks(seq: Sequence[Any], size: int = 200) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


class CommandStore(StoreBase):
    # --- saved commands ------------------------------------------------------------------

    async def create_command(self, **values: Any) -> None:
        now = time.time()
        async with self.engine.begin() as conn:
            await conn.execute(commands.insert().values(created_at=now, modified_at=now,
                                                        **values))

    async def command(self, command_id: str) -> dict[str, Any] | None:
        return await self._one(sa.select(commands).where(commands.c.id == command_id))

    async def list_commands(self, *, region: str = "", command_id: str = "", name: str = "",
                            command_type: str = "", offset: int = 0, limit: int = 10
                            ) -> tuple[list[dict[str, Any]], int]:
        where = []
        if region:
            where.append(commands.c.region == region)
        if command_id:
            where.append(commands.c.id == command_id)
        if name:  # a trailing * matches a prefix (case-sensitive, like the whole name)
            prefix = name[:-1]
            where.append(sa.func.substr(commands.c.name, 1, len(prefix)) == prefix
                         if name.endswith("*") else commands.c.name == name)
        if command_type:
            where.append(commands.c.type == command_type)
        total = await self._one(sa.select(sa.func.count()).select_from(commands).where(*where))
        rows = await self._all(sa.select(commands).where(*where)
                               .order_by(commands.c.created_at.desc(), commands.c.id)
                               .offset(offset).limit(limit))
        return rows, int(next(iter(total.values()))) if total else 0

    async def update_command(self, command_id: str, **values: Any) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(commands.update().where(commands.c.id == command_id)
                               .values(modified_at=time.time(), **values))

    async def delete_command(self, command_id: str) -> bool:
        async with self.engine.begin() as conn:
            done = await conn.execute(commands.delete().where(commands.c.id == command_id))
            return done.rowcount == 1

    async def command_invoke_counts(self, command_ids: Sequence[str]) -> dict[str, int]:
        if not command_ids:
            return {}
        rows = await self._all(
            sa.select(invocations.c.command_id, sa.func.count().label("n"))
            .where(invocations.c.command_id.in_(list(command_ids)))
            .group_by(invocations.c.command_id))
        return {r["command_id"]: r["n"] for r in rows}

    # --- invocations ---------------------------------------------------------------------

    async def create_invocation(self, invocation: dict[str, Any],
                                targets: Sequence[tuple[str, str]],
                                tasks: Sequence[dict[str, Any]]) -> None:
        """``targets``: (instance id, its boot id); ``tasks``: first-run task rows."""
        now = time.time()
        async with self.engine.begin() as conn:
            await conn.execute(invocations.insert().values(created_at=now, **invocation))
            if targets:
                await conn.execute(invocation_targets.insert(), [
                    {"invocation_id": invocation["id"], "instance_id": iid, "boot_id": boot,
                     "done": False} for iid, boot in targets])
            if tasks:
                await conn.execute(invocation_results.insert(), [
                    {"invocation_id": invocation["id"], "created_at": now, "error_code": "",
                     "error_info": "", "output_size": 0, "dropped": 0,
                     "finished_at": now if t["status"] in FINAL_STATUSES else None, **t}
                    for t in tasks])

    async def invocation(self, invocation_id: str) -> dict[str, Any] | None:
        return await self._one(sa.select(invocations).where(invocations.c.id == invocation_id))

    async def update_invocation(self, invocation_id: str, **values: Any) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(invocations.update().where(invocations.c.id == invocation_id)
                               .values(**values))

    async def list_invocations(
        self, *, invocation_id: str = "", command_id: str = "", instance_id: str = "",
        repeat_modes: Sequence[str] = (), scheduled: bool = False, kind: str = "",
        offset: int = 0, limit: int = 10,
    ) -> tuple[list[dict[str, Any]], int]:
        i = invocations.c
        where: list[Any] = []
        if invocation_id:
            where.append(i.id == invocation_id)
        if command_id:
            where.append(i.command_id == command_id)
        if kind:
            where.append(i.kind == kind)
        if repeat_modes:
            where.append(i.repeat_mode.in_(list(repeat_modes)))
        if scheduled:
            where += [i.stop_requested_at.is_(None),
                      sa.or_(i.next_run_at.is_not(None), i.repeat_mode.in_(list(REBOOT_MODES)))]
        if instance_id:
            where.append(i.id.in_(sa.select(invocation_targets.c.invocation_id)
                                  .where(invocation_targets.c.instance_id == instance_id)))
        total = await self._one(sa.select(sa.func.count()).select_from(invocations)
                                .where(*where))
        rows = await self._all(sa.select(invocations).where(*where)
                               .order_by(i.created_at.desc(), i.id).offset(offset).limit(limit))
        return rows, int(next(iter(total.values()))) if total else 0

    async def invocation_targets_of(self, invocation_id: str) -> list[dict[str, Any]]:
        return await self._all(sa.select(invocation_targets)
                               .where(invocation_targets.c.invocation_id == invocation_id)
                               .order_by(invocation_targets.c.instance_id))

    async def latest_status_counts(self, invocation_ids: Sequence[str]
                                   ) -> dict[str, dict[str, int]]:
        """Per invocation: how many instances are in each status (latest run of each)."""
        counts: dict[str, dict[str, int]] = {i: {} for i in invocation_ids}
        if not invocation_ids:
            return counts
        t = invocation_results.c
        latest = (sa.select(t.invocation_id, t.instance_id, sa.func.max(t.repeat).label("r"))
                  .where(t.invocation_id.in_(list(invocation_ids)))
                  .group_by(t.invocation_id, t.instance_id).subquery())
        rows = await self._all(
            sa.select(t.invocation_id, t.status, sa.func.count().label("n"))
            .join(latest, sa.and_(t.invocation_id == latest.c.invocation_id,
                                  t.instance_id == latest.c.instance_id,
                                  t.repeat == latest.c.r))
            .group_by(t.invocation_id, t.status))
        for r in rows:
            counts[r["invocation_id"]][r["status"]] = r["n"]
        return counts

    async def invocation_status_counts(self, invocation_id: str) -> dict[str, int]:
        """Status counts over every task of the invocation (for concurrency and errors)."""
        t = invocation_results.c
        rows = await self._all(sa.select(t.status, sa.func.count().label("n"))
                               .where(t.invocation_id == invocation_id).group_by(t.status))
        return {r["status"]: r["n"] for r in rows}

    # --- tasks ---------------------------------------------------------------------------

    async def task(self, key: TaskKey) -> dict[str, Any] | None:
        return await self._one(sa.select(invocation_results).where(_key_clause([key])))

    async def results_of(self, invocation_id: str, *, instance_id: str = "",
                         include_history: bool = False, offset: int = 0, limit: int = 1000
                         ) -> tuple[list[dict[str, Any]], int]:
        t = invocation_results.c
        where = [t.invocation_id == invocation_id]
        if instance_id:
            where.append(t.instance_id == instance_id)
        if not include_history:
            inner = invocation_results.alias("latest")
            latest = (sa.select(sa.func.max(inner.c.repeat))
                      .where(inner.c.invocation_id == t.invocation_id)
                      .where(inner.c.instance_id == t.instance_id).scalar_subquery())
            where.append(t.repeat == latest)
        total = await self._one(sa.select(sa.func.count()).select_from(invocation_results)
                                .where(*where))
        rows = await self._all(sa.select(invocation_results).where(*where)
                               .order_by(t.instance_id, t.repeat).offset(offset).limit(limit))
        return rows, int(next(iter(total.values()))) if total else 0

    async def pending_tasks(self, limit: int = 5000) -> list[dict[str, Any]]:
        """Tasks waiting for delivery, with what their invocation needs to deliver them."""
        t = invocation_results.c
        return await self._all(
            sa.select(t.invocation_id, t.instance_id, t.repeat, t.created_at)
            .where(t.status == "Pending").order_by(t.created_at).limit(limit))

    async def active_tasks_of_instance(self, instance_id: str) -> list[dict[str, Any]]:
        t = invocation_results.c
        return await self._all(sa.select(t.invocation_id, t.instance_id, t.repeat, t.status)
                               .where(t.instance_id == instance_id)
                               .where(t.status.in_(["Running", "Stopping"])))

    async def active_tasks_of_instances(self, instance_ids: Sequence[str]
                                        ) -> dict[str, list[dict[str, Any]]]:
        """active_tasks_of_instance for many instances (those with none are left out)."""
        t = invocation_results.c
        tasks: dict[str, list[dict[str, Any]]] = {}
        for part in _chunks(sorted(set(instance_ids)), 500):
            for row in await self._all(
                    sa.select(t.invocation_id, t.instance_id, t.repeat, t.status)
                    .where(t.instance_id.in_(list(part)))
                    .where(t.status.in_(["Running", "Stopping"]))):
                tasks.setdefault(row["instance_id"], []).append(row)
        return tasks

    async def overdue_running_tasks(self, now: float) -> list[dict[str, Any]]:
        """Running tasks whose result is overdue by more than their delivery timeout."""
        t, i = invocation_results.c, invocations.c
        return await self._all(
            sa.select(t.invocation_id, t.instance_id, t.repeat)
            .join(invocations, i.id == t.invocation_id)
            .where(t.status.in_(["Running", "Stopping"]))
            .where(t.dispatched_at + i.timeout + i.delivery_timeout + 30 < now))

    async def set_tasks(self, keys: Sequence[TaskKey], only_from: Sequence[str] = ACTIVE_STATUSES,
                        **values: Any) -> int:
        """Update tasks still in one of ``only_from``; a final status also sets finished_at."""
        if "status" in values and values["status"] in FINAL_STATUSES:
            values.setdefault("finished_at", time.time())
        values = fit(invocation_results, values)
        changed = 0
        async with self.engine.begin() as conn:
            for part in _chunks(list(keys)):
                done = await conn.execute(
                    invocation_results.update().where(_key_clause(part))
                    .where(invocation_results.c.status.in_(list(only_from))).values(**values))
                changed += done.rowcount
        return changed

    async def add_tasks(self, invocation_id: str, rows: Sequence[dict[str, Any]],
                        after_repeat: int | None = None, **invocation_values: Any) -> bool:
        """Add tasks (and update the invocation) in one transaction. With ``after_repeat``,
        only if the invocation's run count still is that: of several replicas firing the
        same schedule at once, one wins (True) and the others add nothing (False)."""
        now = time.time()
        async with self.engine.begin() as conn:
            if after_repeat is not None:
                claimed = await conn.execute(
                    invocations.update().where(invocations.c.id == invocation_id)
                    .where(invocations.c.repeats == after_repeat)
                    .values(**invocation_values))
                if claimed.rowcount != 1:
                    return False
                invocation_values = {}
            if rows:
                await conn.execute(invocation_results.insert(), [
                    {"invocation_id": invocation_id, "status": "Pending", "error_code": "",
                     "error_info": "", "output_size": 0, "dropped": 0, "created_at": now, **r}
                    for r in rows])
            if invocation_values:
                await conn.execute(invocations.update()
                                   .where(invocations.c.id == invocation_id)
                                   .values(**invocation_values))
        return True

    async def store_result(self, key: TaskKey, result: dict[str, Any]) -> bool:
        """Store a task's final result once; False if it was already final (a resend)."""
        return await self.set_tasks([key], only_from=ACTIVE_STATUSES, **result) == 1

    async def store_results(self, items: Sequence[tuple[TaskKey, bytes, dict[str, Any]]]
                            ) -> list[bool]:
        """Store many final results (key, whole output, values) in one transaction with one
        statement of each kind: many agents answering at once cost one commit. A result whose
        task is already final is left as it was (False), as is a second copy of one result in
        the same batch."""
        t, o = invocation_results.c, invocation_outputs.c
        by_invocation: dict[str, list[TaskKey]] = {}
        for key, _, _ in items:
            by_invocation.setdefault(key[0], []).append(key)
        async with self.engine.begin() as conn:
            # Another server storing the same result (an agent that resent it after moving
            # to another replica) waits here, then finds it final: stored once, fresh once.
            await write_lock(conn)
            active: set[TaskKey] = set()
            for invocation_id, keys in sorted(by_invocation.items()):  # one lock order
                for part in _chunks(sorted(keys), 500):
                    rows = await conn.execute(
                        sa.select(t.instance_id, t.repeat)
                        .where(t.invocation_id == invocation_id)
                        .where(t.instance_id.in_(sorted({k[1] for k in part})))
                        .where(t.status.in_(list(ACTIVE_STATUSES)))
                        .order_by(t.instance_id, t.repeat).with_for_update())
                    active.update((invocation_id, r.instance_id, r.repeat) for r in rows)
            fresh: list[tuple[TaskKey, bytes, dict[str, Any]]] = []
            stored: list[bool] = []
            for key, out, values in items:
                stored.append(key in active)
                if key in active:
                    active.discard(key)
                    fresh.append((key, out, fit(invocation_results, values)))
            if fresh:
                names = sorted({n for _, _, values in fresh for n in values})
                await conn.execute(
                    invocation_results.update()
                    .where(t.invocation_id == sa.bindparam("k_inv"))
                    .where(t.instance_id == sa.bindparam("k_inst"))
                    .where(t.repeat == sa.bindparam("k_rep"))
                    .where(sa.or_(*[t.status == sa.literal_column(f"'{s}'")
                                    for s in ACTIVE_STATUSES]))  # executemany: no IN (…)
                    .values({n: sa.bindparam(f"v_{n}") for n in names}),
                    [{"k_inv": k[0], "k_inst": k[1], "k_rep": k[2],
                      **{f"v_{n}": values.get(n) for n in names}} for k, _, values in fresh])
                outputs = [(k, out) for k, out, _ in fresh if out]
                if outputs:
                    await conn.execute(
                        invocation_outputs.delete()
                        .where(o.invocation_id == sa.bindparam("k_inv"))
                        .where(o.instance_id == sa.bindparam("k_inst"))
                        .where(o.repeat == sa.bindparam("k_rep")),
                        [{"k_inv": k[0], "k_inst": k[1], "k_rep": k[2]} for k, _ in outputs])
                    await conn.execute(invocation_outputs.insert(), [
                        {"invocation_id": k[0], "instance_id": k[1], "repeat": k[2],
                         "offset": 0, "data": out} for k, out in outputs])
        return stored

    # --- output --------------------------------------------------------------------------

    async def add_output(self, key: TaskKey, offset: int, data: bytes) -> None:
        """Store one chunk; a chunk already stored at that offset is kept as it is."""
        if not data:
            return
        async with self.engine.begin() as conn:
            await insert_ignore(conn, invocation_outputs, [{
                "invocation_id": key[0], "instance_id": key[1], "repeat": key[2],
                "offset": offset, "data": data}])

    async def output_received(self, key: TaskKey) -> int:
        row = await self._one(
            sa.select(sa.func.max(invocation_outputs.c.offset
                                  + sa.func.length(invocation_outputs.c.data)).label("end"))
            .where(*self._out_where(key)))
        return int(row["end"] or 0) if row else 0

    async def read_output(self, key: TaskKey, offset: int, length: int) -> bytes:
        o = invocation_outputs.c
        rows = await self._all(
            sa.select(o.offset, o.data).where(*self._out_where(key))
            .where(o.offset + sa.func.length(o.data) > offset).where(o.offset < offset + length)
            .order_by(o.offset))
        out = bytearray()
        for r in rows:
            start = max(0, offset - r["offset"])
            out += r["data"][start:]
        return bytes(out[:length])

    async def heads(self, keys: Sequence[TaskKey], length: int) -> dict[TaskKey, bytes]:
        """The first ``length`` bytes of each task's output (chunks start at offset 0)."""
        out: dict[TaskKey, bytes] = {}
        o = invocation_outputs.c
        for part in _chunks(list(keys)):
            rows = await self._all(
                sa.select(o.invocation_id, o.instance_id, o.repeat, o.data)
                .where(o.offset == 0)
                .where(sa.or_(*[sa.and_(o.invocation_id == i, o.instance_id == n,
                                        o.repeat == r) for i, n, r in part])))
            for r in rows:
                out[(r["invocation_id"], r["instance_id"], r["repeat"])] = r["data"][:length]
        return out

    @staticmethod
    def _out_where(key: TaskKey) -> list[Any]:
        o = invocation_outputs.c
        return [o.invocation_id == key[0], o.instance_id == key[1], o.repeat == key[2]]

    # --- reboots -------------------------------------------------------------------------

    async def instance_boot_ids(self, instance_ids: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for part in _chunks(list(instance_ids), 500):
            rows = await self._all(sa.select(instance_boots)
                                   .where(instance_boots.c.instance_id.in_(list(part))))
            out.update({r["instance_id"]: r["boot_id"] for r in rows})
        return out

    async def record_boot(self, instance_id: str, boot_id: str) -> None:
        now = time.time()
        async with self.engine.begin() as conn:
            await upsert(conn, instance_boots,
                         {"instance_id": instance_id, "boot_id": boot_id, "reported_at": now},
                         {"boot_id": boot_id, "reported_at": now})

    async def record_boots(self, boots: Mapping[str, str]) -> None:
        """record_boot for many instances (id: boot id) in one transaction, a few
        statements for hundreds of rows."""
        now = time.time()
        rows = [{"instance_id": iid, "boot_id": boot, "reported_at": now}
                for iid, boot in sorted(boots.items())]
        async with self.engine.begin() as conn:
            for part in _chunks(rows, 300):
                await conn.execute(instance_boots.delete().where(
                    instance_boots.c.instance_id.in_([r["instance_id"] for r in part])))
                await conn.execute(instance_boots.insert().values(list(part)))

    async def reboot_targets_of(self, instance_ids: Sequence[str]
                                ) -> dict[str, list[dict[str, Any]]]:
        """reboot_targets for many instances (those with none are left out)."""
        g, i = invocation_targets.c, invocations.c
        targets: dict[str, list[dict[str, Any]]] = {}
        for part in _chunks(sorted(set(instance_ids)), 500):
            for row in await self._all(
                    sa.select(g.instance_id, g.invocation_id, g.boot_id, i.repeat_mode)
                    .join(invocations, i.id == g.invocation_id)
                    .where(g.instance_id.in_(list(part))).where(g.done.is_(False))
                    .where(i.repeat_mode.in_(list(REBOOT_MODES)))
                    .where(i.stop_requested_at.is_(None))):
                iid = row.pop("instance_id")
                targets.setdefault(iid, []).append(row)
        return targets

    async def reboot_targets(self, instance_id: str) -> list[dict[str, Any]]:
        """Reboot-triggered invocations still waiting on this instance."""
        g, i = invocation_targets.c, invocations.c
        return await self._all(
            sa.select(g.invocation_id, g.boot_id, i.repeat_mode)
            .join(invocations, i.id == g.invocation_id)
            .where(g.instance_id == instance_id).where(g.done.is_(False))
            .where(i.repeat_mode.in_(list(REBOOT_MODES)))
            .where(i.stop_requested_at.is_(None)))

    async def update_target(self, invocation_id: str, instance_id: str, **values: Any) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(invocation_targets.update()
                               .where(invocation_targets.c.invocation_id == invocation_id)
                               .where(invocation_targets.c.instance_id == instance_id)
                               .values(**values))

    async def next_repeat(self, invocation_id: str, instance_id: str) -> int:
        t = invocation_results.c
        row = await self._one(sa.select(sa.func.max(t.repeat).label("r"))
                              .where(t.invocation_id == invocation_id)
                              .where(t.instance_id == instance_id))
        return int(row["r"] or 0) + 1 if row else 1

    # --- schedules -----------------------------------------------------------------------

    async def due_schedules(self, now: float) -> list[dict[str, Any]]:
        i = invocations.c
        return await self._all(sa.select(invocations).where(i.next_run_at.is_not(None))
                               .where(i.next_run_at <= now)
                               .where(i.stop_requested_at.is_(None)))

    async def next_schedule_time(self) -> float | None:
        i = invocations.c
        row = await self._one(sa.select(sa.func.min(i.next_run_at).label("t"))
                              .where(i.stop_requested_at.is_(None)))
        return row["t"] if row else None


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
