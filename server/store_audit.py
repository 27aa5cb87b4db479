"""The audit log: an append-only, hash-chained trail.

Each entry carries the hash of the one before it and its own hash, an HMAC-SHA256 (under a
key derived from the master key) over its sequence number, its fields and the previous hash.
Editing an entry breaks its hash; removing or reordering entries breaks the sequence or the
chain; rewriting the whole chain needs the master key, which the database does not hold.
Removing entries from the end is caught by comparing with the last entry this server wrote,
and with anchors (sequence number and hash) that a verifier remembered from earlier.

Appends from several server processes (replicas on one database) are serialised: each
appending transaction first takes a lock (a PostgreSQL advisory lock, SQLite's write lock),
so the head it reads is still the head when it commits. A writer that does not take it (a
server of an older version during an upgrade) loses at worst a race: its sequence number is
taken (the primary key), and it tries again on the new head.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import sqlalchemy as sa

from server.db import StoreBase, clean_text, metadata, write_lock
from server.secrets import constant_time_equal, repo_keyring

GENESIS = "0" * 64
APPEND_LOCK = 0x706F7274686F6C66
"""PostgreSQL advisory lock key held by a transaction that appends to the audit log."""
_FIELDS = ("at", "request_id", "principal", "action", "resource", "source_ip", "outcome",
           "detail")
_LIMITS = {"request_id": 64, "principal": 128, "action": 128, "resource": 512,
           "source_ip": 64, "outcome": 32, "detail": 4000}

audit_log = sa.Table(
    "audit_log", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("at", sa.Float, nullable=False, index=True),
    sa.Column("request_id", sa.String(64), nullable=False, default=""),
    sa.Column("principal", sa.String(128), nullable=False),
    sa.Column("action", sa.String(128), nullable=False),
    sa.Column("resource", sa.String(512), nullable=False, default=""),
    sa.Column("source_ip", sa.String(64), nullable=False, default=""),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("detail", sa.Text, nullable=False, default=""),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)


def entry_hash(key_mac: Any, seq: int, prev_hash: str, entry: dict[str, Any]) -> str:
    body = json.dumps([seq, prev_hash, *(entry[f] for f in _FIELDS)], ensure_ascii=True,
                      separators=(",", ":"))
    return key_mac("audit-chain", body.encode()).hex()


class AuditStore(StoreBase):
    _audit_lock: asyncio.Lock | None = None
    audit_written: tuple[int, str] | None = None
    """The last entry this process wrote (sequence number, hash)."""

    async def audit(self, **fields: Any) -> None:
        await self.audit_many([fields])

    async def audit_many(self, items: list[dict[str, Any]]) -> None:
        """Append entries in order, in one transaction."""
        entries = []
        for fields in items:
            entry = {f: fields.get(f) or "" for f in _FIELDS}
            entry["at"] = float(fields.get("at") or time.time())
            for name, limit in _LIMITS.items():
                entry[name] = clean_text(str(entry[name]))[:limit]
            entries.append(entry)
        if not entries:
            return
        mac = repo_keyring(self).mac
        if self._audit_lock is None:
            self._audit_lock = asyncio.Lock()
        async with self._audit_lock:
            for _attempt in range(50):  # another server writing at the same moment: retry
                try:
                    async with self.engine.begin() as conn:
                        await write_lock(conn)
                        if conn.dialect.name == "postgresql":
                            await conn.execute(sa.select(
                                sa.func.pg_advisory_xact_lock(APPEND_LOCK)))
                        last = (await conn.execute(
                            sa.select(audit_log.c.seq, audit_log.c.hash)
                            .order_by(audit_log.c.seq.desc()).limit(1))).first()
                        seq, prev = (last.seq, last.hash) if last else (0, GENESIS)
                        rows = []
                        for entry in entries:
                            seq += 1
                            digest = entry_hash(mac, seq, prev, entry)
                            rows.append({"seq": seq, "prev_hash": prev, "hash": digest,
                                         **entry})
                            prev = digest
                        await conn.execute(audit_log.insert(), rows)
                    self.audit_written = (seq, prev)
                    return
                except sa.exc.IntegrityError:
                    await asyncio.sleep(random.uniform(0.005, 0.02))
            raise RuntimeError("could not append to the audit log")

    async def audit_entries(self, since: float | None = None, principal: str | None = None,
                            action: str | None = None, outcome: str | None = None,
                            limit: int = 100, before_seq: int | None = None
                            ) -> list[dict[str, Any]]:
        stmt = sa.select(audit_log).order_by(audit_log.c.seq.desc()).limit(limit)
        if since is not None:
            stmt = stmt.where(audit_log.c.at >= since)
        if principal:
            stmt = stmt.where(audit_log.c.principal.in_([principal, f"user/{principal}"]))
        if action:
            stmt = stmt.where(sa.func.lower(audit_log.c.action) == action.lower())
        if outcome:
            stmt = stmt.where(audit_log.c.outcome == outcome)
        if before_seq is not None:
            stmt = stmt.where(audit_log.c.seq < before_seq)
        return await self._all(stmt)

    async def _audit_scan(self, batch: int = 2000) -> AsyncIterator[dict[str, Any]]:
        after = 0
        while True:
            rows = await self._all(sa.select(audit_log).where(audit_log.c.seq > after)
                                   .order_by(audit_log.c.seq).limit(batch))
            if not rows:
                return
            for row in rows:
                yield row
            after = rows[-1]["seq"]

    async def verify_audit(self, anchors: dict[int, str] | None = None,
                           max_problems: int = 20) -> dict[str, Any]:
        """Walk the whole chain; report every break (up to max_problems)."""
        mac = repo_keyring(self).mac
        problems: list[dict[str, Any]] = []
        expected_seq, prev, count = 1, GENESIS, 0
        hashes_at: dict[int, str] = {}
        wanted = set(anchors or {})

        def problem(seq: int, what: str) -> None:
            if len(problems) < max_problems:
                problems.append({"Seq": seq, "Problem": what})

        async for row in self._audit_scan():
            count += 1
            seq = row["seq"]
            if seq != expected_seq:
                problem(seq, f"entries {expected_seq}..{seq - 1} are missing"
                        if seq > expected_seq else f"entry {seq} is out of order")
            if not constant_time_equal(row["prev_hash"], prev):
                problem(seq, "does not follow the entry before it (removed or reordered)")
            if not constant_time_equal(row["hash"], entry_hash(mac, seq, row["prev_hash"], row)):
                problem(seq, "was altered: its hash does not match its content")
            if seq in wanted:
                hashes_at[seq] = row["hash"]
            prev, expected_seq = row["hash"], seq + 1
        head_seq = expected_seq - 1
        written = self.audit_written
        if written and (head_seq < written[0]):
            problem(written[0], f"entries after {head_seq} were removed (this server wrote "
                                f"entry {written[0]})")
        for seq, digest in sorted((anchors or {}).items()):
            if seq not in hashes_at:
                problem(seq, "a previously verified entry is gone")
            elif not constant_time_equal(hashes_at[seq], digest):
                problem(seq, "differs from when it was verified before")
        return {"Valid": not problems, "Count": count, "HeadSeq": head_seq,
                "HeadHash": prev if count else GENESIS, "Problems": problems}
