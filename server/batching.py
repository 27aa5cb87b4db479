"""Database work for many agents, done in batches.

One write per event would make ten thousand agents a storm of small transactions (each a
commit, on SQLite each an fsync under one write lock), and one query per agent saying hello
a queue of database round trips: a connect storm or the heartbeats of a large fleet would
wait behind each other and starve everything else of the database. Instead, connections and
disconnections are group-committed (everything that arrived while the previous transaction
was being written goes into the next one, so a quiet server still writes at once) and an
agent is welcomed without waiting for it (so a slow database cannot time handshakes out),
heartbeats are written together every few seconds, and lookups by instance id coalesce
into one query per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar

from server.storage import Repository

log = logging.getLogger("porthole.batching")

T = TypeVar("T")

HEARTBEAT_FLUSH_SECONDS = 5.0
RETRY_SECONDS = 1.0


class PresenceWriter:
    """The agents' connections, disconnections and heartbeats as this server (replica)
    sees them, written to the instances table by one background task."""

    def __init__(self, repo: Repository, replica: str = "",
                 heartbeat_every: float = HEARTBEAT_FLUSH_SECONDS) -> None:
        self.repo = repo
        self.replica = replica
        self.heartbeat_every = heartbeat_every
        self._states: dict[str, dict[str, str] | None] = {}
        """Latest state of each agent not yet written: its changed report if connected, else
        None."""
        self._heartbeats: set[str] = set()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._last_heartbeats = time.monotonic()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def connected(self, instance_id: str, report: dict[str, str]) -> None:
        """Mark the agent connected here (written soon), with what changed in its report
        (hostname, platform, os_name, agent_version)."""
        self._states[instance_id] = report
        self._heartbeats.discard(instance_id)  # connecting sets the time of its heartbeat
        self._wake.set()

    def disconnected(self, instance_id: str) -> None:
        """Mark the agent disconnected from here (written soon)."""
        self._states[instance_id] = None
        self._wake.set()

    def heartbeat(self, instance_id: str) -> None:
        """The agent's last heartbeat is now (written within ``heartbeat_every`` seconds)."""
        self._heartbeats.add(instance_id)

    async def _run(self) -> None:
        while not self._closing:
            due = self._last_heartbeats + self.heartbeat_every - time.monotonic()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, due)):
                    await self._wake.wait()
            self._wake.clear()
            if not await self.flush(heartbeats=due <= 0) and not self._closing:
                await asyncio.sleep(RETRY_SECONDS)

    async def flush(self, heartbeats: bool = True) -> bool:
        """Write what is pending now; returns False if the database refused (kept for the
        next attempt)."""
        async with self._lock:
            states, self._states = self._states, {}
            beats: set[str] = set()
            if heartbeats:
                beats, self._heartbeats = self._heartbeats, set()
                self._last_heartbeats = time.monotonic()
            if not states and not beats:
                return True
            try:
                await self.repo.mark_presence(
                    {iid: info for iid, info in states.items() if info is not None},
                    [iid for iid, info in states.items() if info is None],
                    beats - states.keys(), self.replica)
            except Exception as exc:
                log.warning("could not record %d agents' connections and %d heartbeats: %s",
                            len(states), len(beats), exc)
                for iid, info in states.items():
                    self._states.setdefault(iid, info)
                self._heartbeats |= beats
                return False
            return True

    async def close(self) -> None:
        """Stop the background writer after writing what is pending."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.flush()


def _fail(waiters: list[asyncio.Future[Any]], exc: Exception) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_exception(exc)


class Coalesced(Generic[T]):
    """Lookups by key, many per query: the keys asked for while one query runs are all
    answered by the next, so a connect storm costs a few queries instead of one database
    round trip per agent, and a quiet server still asks at once."""

    def __init__(self, fetch: Callable[[list[str]], Awaitable[Mapping[str, T]]],
                 default: T) -> None:
        self.fetch = fetch
        self.default = default
        self._wanted: dict[str, list[asyncio.Future[T]]] = {}
        self._fetcher: asyncio.Task[None] | None = None

    async def get(self, key: str) -> T:
        waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._wanted.setdefault(key, []).append(waiter)
        if self._fetcher is None:
            self._fetcher = asyncio.create_task(self._run())
        return await waiter

    async def _run(self) -> None:
        try:
            while self._wanted:
                wanted, self._wanted = self._wanted, {}
                try:
                    found = await self.fetch(list(wanted))
                except Exception as exc:
                    for waiters in wanted.values():
                        _fail(waiters, exc)
                    continue
                for key, waiters in wanted.items():
                    value = found.get(key, self.default)
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_result(value)
        finally:
            self._fetcher = None


def instance_lookup(repo: Repository) -> Coalesced[dict[str, Any] | None]:
    """Instance rows by id (deregistered ones too; None for an unknown id)."""

    async def fetch(ids: list[str]) -> dict[str, dict[str, Any] | None]:
        rows: dict[str, dict[str, Any] | None] = {
            r["id"]: r for r in await repo.list_instances(ids=ids)}
        for iid in set(ids) - rows.keys():  # deregistered (or unknown): not listed
            rows[iid] = await repo.instance(iid)
        return rows

    return Coalesced(fetch, None)
