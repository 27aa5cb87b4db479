"""When tasks run: schedule expressions, and the dispatcher that delivers pending tasks.

Frequencies follow Cloud Assistant:

* ``rate(30s)``, ``rate(5m)``, ``rate(2h)``, ``rate(1d)``: every interval, first one interval
  after the invocation;
* ``at(2030-01-01 12:30:00 Asia/Shanghai)``: once at that time (zone optional, UTC default);
* a cron expression with an optional time zone last: five fields (minute first) or Cloud
  Assistant's six or seven (seconds first, optional year), e.g. ``0 */20 * * * ? Asia/Shanghai``.

The dispatcher is the only place that sends tasks: it wakes when something changes (a new
invocation, an agent connecting, a result arriving) and at least once a second, and works only
from the database, so a restarted server carries on where the last one stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import re
import time
import zoneinfo
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

from server.storage import Repository
from server.store_commands import TaskKey

log = logging.getLogger("porthole.scheduler")

MIN_RATE = 1.0
"""Shortest rate() interval in seconds."""
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_GMT = re.compile(r"^(?:GMT|UTC)([+-])(\d{1,2})(?::?(\d{2}))?$")
_ERRORS = ("Failed", "Error", "Timeout")
OVERDUE_CHECK_EVERY = 10.0


class FrequencyError(ValueError):
    """The frequency expression is invalid; str() says why."""


def _zone(name: str) -> datetime.tzinfo | None:
    m = _GMT.match(name)
    if m:
        minutes = int(m.group(2)) * 60 + int(m.group(3) or 0)
        return datetime.timezone(datetime.timedelta(minutes=minutes if m.group(1) == "+"
                                                    else -minutes))
    if "/" not in name and name not in ("UTC", "GMT"):
        return None
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return None


@dataclass(frozen=True)
class Frequency:
    kind: str  # rate | at | cron
    seconds: float = 0.0
    at: float = 0.0
    cron: str = ""
    zone: datetime.tzinfo = datetime.UTC

    def next_after(self, previous: float, now: float) -> float | None:
        """The next run after ``previous`` (the last planned run) that is later than ``now``;
        runs missed while the server was down are not made up. None: no more runs."""
        if self.kind == "rate":
            steps = max(1, int((now - previous) // self.seconds) + 1)
            return previous + steps * self.seconds
        if self.kind == "at":
            return self.at if self.at > previous else None
        base = datetime.datetime.fromtimestamp(max(previous, now), self.zone)
        try:
            return float(croniter(self.cron, base, second_at_beginning=len(
                self.cron.split()) > 5).get_next(float))
        except CroniterBadDateError:
            return None


def parse_frequency(text: str) -> Frequency:
    text = text.strip()
    m = re.fullmatch(r"rate\(\s*(\d+)\s*([smhd])\s*\)", text)
    if m:
        seconds = int(m.group(1)) * _UNITS[m.group(2)]
        if seconds < MIN_RATE:
            raise FrequencyError(f"rate must be at least {MIN_RATE:g} s")
        return Frequency("rate", seconds=float(seconds))
    m = re.fullmatch(r"at\(\s*(\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2})\s*([^)]*)\)", text)
    if m:
        zone = _zone(m.group(2).strip() or "UTC")
        if zone is None:
            raise FrequencyError(f"unknown time zone {m.group(2).strip()!r}")
        when = datetime.datetime.fromisoformat(m.group(1).replace(" ", "T"))
        return Frequency("at", at=when.replace(tzinfo=zone).timestamp(), zone=zone)
    if text.startswith(("rate", "at")):
        raise FrequencyError(f"{text!r} is not rate(<n><s|m|h|d>) or "
                             "at(YYYY-MM-DD HH:MM:SS [zone])")
    fields = text.split()
    zone: datetime.tzinfo | None = datetime.UTC
    if fields and (z := _zone(fields[-1])) is not None:
        zone = z
        fields = fields[:-1]
    if len(fields) not in (5, 6, 7):
        raise FrequencyError(f"{text!r} is not rate(…), at(…) or a cron expression of 5 "
                             "fields (minute first) or 6–7 (seconds first), then a time zone")
    cron = " ".join(fields)
    try:
        croniter(cron, datetime.datetime.now(zone), second_at_beginning=len(fields) > 5)
    except (CroniterBadCronError, ValueError, KeyError) as exc:
        raise FrequencyError(f"invalid cron expression {cron!r}: {exc}") from None
    return Frequency("cron", cron=cron, zone=zone)


def parse_limit(text: str, total: int, name: str, none: int) -> int:
    """'10' or '10%' of ``total`` targets (at least 1 for a non-zero percentage); '' gives
    ``none`` (no limit)."""
    text = text.strip()
    if not text:
        return none
    m = re.fullmatch(r"(\d{1,7})(%?)", text)
    if not m or (m.group(2) and int(m.group(1)) > 100):
        raise ValueError(f"{name} must be a count like 10 or a percentage like 10%")
    if m.group(2):
        return max(1, -(-total * int(m.group(1)) // 100)) if int(m.group(1)) else 0
    return int(m.group(1))


Deliver = Callable[[dict[str, Any], list[TaskKey]], Awaitable[None]]
Elsewhere = Callable[[list[str]], Awaitable[set[str]]]
"""Of these instances, those connected to another replica (which delivers their tasks)."""


async def _nowhere(_ids: list[str]) -> set[str]:
    return set()


class Dispatcher:
    """Delivers pending tasks (within each invocation's limits), expires undeliverable ones
    and starts scheduled runs."""

    def __init__(self, repo: Repository, online: Callable[[str], bool],
                 deliver: Deliver, elsewhere: Elsewhere = _nowhere) -> None:
        self.repo = repo
        self.online = online
        self.elsewhere = elsewhere
        self.deliver = deliver
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_overdue_check = 0.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def wake(self) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.tick()
            except Exception:  # keep dispatching; the next tick retries from the database
                log.exception("dispatcher tick failed")
            wait = 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def tick(self) -> None:
        now = time.time()
        await self._fire_schedules(now)
        await self._deliver_pending(now)
        if now - self._last_overdue_check >= OVERDUE_CHECK_EVERY:
            self._last_overdue_check = now
            await self._expire_overdue(now)

    async def _fire_schedules(self, now: float) -> None:
        for inv in await self.repo.due_schedules(now):
            repeat = inv["repeats"] + 1
            targets = [t["instance_id"] for t in await self.repo.invocation_targets_of(inv["id"])
                       if not t["done"]]
            try:
                following = parse_frequency(inv["frequency"]).next_after(inv["next_run_at"],
                                                                         now)
            except FrequencyError:
                following = None
            if not await self.repo.add_tasks(inv["id"], [{"instance_id": iid, "repeat": repeat}
                                                         for iid in targets],
                                             after_repeat=inv["repeats"], repeats=repeat,
                                             next_run_at=following):
                continue  # another replica fired this run
            log.info("scheduled run %d of %s on %d instances; next %s", repeat, inv["id"],
                     len(targets), following)
            await self.repo.audit(principal="system/scheduler", action="ecs:InvokeCommand",
                                  resource=inv["id"], outcome="Allowed",
                                  detail=f"scheduled run {repeat} on {len(targets)} instances "
                                         f"({inv['frequency']})")

    async def _deliver_pending(self, now: float) -> None:
        pending = await self.repo.pending_tasks()
        by_invocation: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for task in pending:
            by_invocation[task["invocation_id"]].append(task)
        for invocation_id, tasks in by_invocation.items():
            inv = await self.repo.invocation(invocation_id)
            if inv is None:
                continue
            keys = [(t["invocation_id"], t["instance_id"], t["repeat"]) for t in tasks]
            if inv["stop_requested_at"] is not None:
                await self.repo.set_tasks(keys, only_from=("Pending",), status="Cancelled",
                                          error_info="the invocation was stopped")
                continue
            budget = len(tasks)
            if inv["max_concurrency"] > 0 or inv["max_errors"] >= 0:
                counts = await self.repo.invocation_status_counts(invocation_id)
                errors = sum(counts.get(s, 0) for s in _ERRORS)
                if 0 <= inv["max_errors"] < errors:
                    await self.repo.set_tasks(
                        keys, only_from=("Pending",), status="Cancelled",
                        error_code="MaxErrorsExceeded",
                        error_info=f"{errors} instances failed, more than MaxErrors "
                                   f"({inv['max_errors']}); not sent")
                    continue
                if inv["max_concurrency"] > 0:
                    running = counts.get("Running", 0) + counts.get("Stopping", 0)
                    budget = max(0, inv["max_concurrency"] - running)
            send: list[TaskKey] = []
            late: list[TaskKey] = []
            offline_now: list[TaskKey] = []
            remote = await self.elsewhere([k[1] for k in keys if not self.online(k[1])])
            for key, task in zip(keys, tasks, strict=True):
                if self.online(key[1]):
                    if len(send) < budget:
                        send.append(key)
                elif key[1] in remote:
                    continue  # its replica sends it
                elif inv["delivery_timeout"] <= 0:
                    offline_now.append(key)
                elif now > task["created_at"] + inv["delivery_timeout"]:
                    late.append(key)
            if offline_now:
                await self.repo.set_tasks(
                    offline_now, only_from=("Pending",), status="Failed",
                    error_code="ClientNotRunning",
                    error_info="the instance's agent is not connected")
            if late:
                await self.repo.set_tasks(
                    late, only_from=("Pending",), status="Failed", error_code="DeliveryTimeout",
                    error_info=f"the instance stayed offline for the {inv['delivery_timeout']:g}"
                               " s delivery timeout")
            if send:
                t0 = time.perf_counter()
                await self.repo.set_tasks(send, only_from=("Pending",), status="Running",
                                          dispatched_at=now)
                t1 = time.perf_counter()
                await self.deliver(inv, send)
                log.log(logging.INFO if len(send) >= 100 else logging.DEBUG,
                        "sent %d tasks of %s (marking %.3f s, sending %.3f s)", len(send),
                        invocation_id, t1 - t0, time.perf_counter() - t1)

    async def _expire_overdue(self, now: float) -> None:
        overdue = [(t["invocation_id"], t["instance_id"], t["repeat"])
                   for t in await self.repo.overdue_running_tasks(now)]
        remote = await self.elsewhere([k[1] for k in overdue if not self.online(k[1])])
        lost = [k for k in overdue if not self.online(k[1]) and k[1] not in remote]
        if lost:
            await self.repo.set_tasks(
                lost, only_from=("Running", "Stopping"), status="Error",
                error_code="ClientNotResponding",
                error_info="the instance went offline and sent no result within the task's "
                           "timeout plus its delivery timeout")
