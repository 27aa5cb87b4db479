"""The replica bus: how several ``porthole-server`` processes reach each other's agents.

Each replica holds the WebSockets of the agents that dialled it. The database says which
replica holds which agent (``instances.replica``) and which replica holds the operator's end
of each session (``sessions.replica``). Frames for an agent held elsewhere travel over NATS
to that replica's own subject; frames from an agent for a session homed elsewhere travel
back the same way. NATS core (no persistence) is enough: every channel replays what was
lost when its ends resume, and command results are acknowledged end to end.

Subjects, under ``{prefix}`` (``nats_subject_prefix``)::

    {prefix}.r.{replica}.down.{instance}   a frame for an agent that {replica} holds
    {prefix}.r.{replica}.up.{instance}     a frame from an agent for a session {replica} homes
    {prefix}.r.{replica}.end.{session}     end a session that {replica} homes (data: why)
    {prefix}.wake                           invocations changed: dispatch what is pending
    {prefix}.gone.{instance}                that agent's connection ended on some replica
    {prefix}.alive                          each replica, every ALIVE_INTERVAL seconds

A replica that stops announcing itself for ``DEAD_AFTER`` seconds is taken for dead: the
agents the database still shows on it are marked offline, so presence stays right until
they dial in again elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

log = logging.getLogger("porthole.bus")

ALIVE_INTERVAL = 2.0
DEAD_AFTER = 10.0
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

FrameHandler = Callable[[str, bytes], Awaitable[None]]
"""(instance id, raw frame)."""


class BusError(Exception):
    """The bus cannot be used; str() is one line."""


class Bus:
    """A NATS connection with this replica's subscriptions."""

    def __init__(self, url: str, prefix: str, replica: str) -> None:
        for name, value in (("nats_subject_prefix", prefix), ("replica_id", replica)):
            if not all(TOKEN_RE.match(part) for part in value.split(".")):
                raise BusError(f"{name} {value!r} may hold only letters, digits, '-' and '_'")
        self.url = url
        self.prefix = prefix
        self.replica = replica
        self.on_down: FrameHandler | None = None
        self.on_up: FrameHandler | None = None
        self.on_wake: Callable[[], None] | None = None
        self.on_gone: Callable[[str], Awaitable[None]] | None = None
        self.on_end: Callable[[str, str], Awaitable[None]] | None = None
        self.alive: dict[str, float] = {}
        """Replica id -> when it last announced itself (this replica included)."""
        self.started_at = time.time()
        self._nc: Client | None = None
        self._announcer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        import nats  # the optional "scale" extra: imported only when a bus is configured
        from nats.errors import NoServersError

        try:
            self._nc = nc = await nats.connect(
                self.url, name=f"porthole-server {self.replica}", connect_timeout=5,
                reconnect_time_wait=0.5, max_reconnect_attempts=1,
                error_cb=self._error, disconnected_cb=self._disconnected,
                reconnected_cb=self._reconnected)
        except (NoServersError, OSError, TimeoutError) as exc:
            raise BusError(f"cannot reach NATS at {self.url} ({exc or type(exc).__name__}); "
                           "check nats_url in server.yaml") from None
        nc.options["max_reconnect_attempts"] = -1  # once up, ride out NATS restarts
        own = f"{self.prefix}.r.{self.replica}"
        await nc.subscribe(f"{own}.down.*", cb=self._on_down, pending_bytes_limit=256 << 20)
        await nc.subscribe(f"{own}.up.*", cb=self._on_up, pending_bytes_limit=256 << 20)
        await nc.subscribe(f"{own}.end.*", cb=self._on_end)
        await nc.subscribe(f"{self.prefix}.wake", cb=self._on_wake)
        await nc.subscribe(f"{self.prefix}.gone.*", cb=self._on_gone)
        await nc.subscribe(f"{self.prefix}.alive", cb=self._on_alive)
        await nc.flush()
        self.started_at = time.time()
        self._announcer = asyncio.create_task(self._announce())
        log.info("replica %s on the bus at %s (subjects %s.*)", self.replica, self.url,
                 self.prefix)

    async def stop(self) -> None:
        if self._announcer is not None:
            self._announcer.cancel()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()

    # --- sending ---------------------------------------------------------------------------

    async def _publish(self, subject: str, data: bytes = b"") -> None:
        if self._nc is None:
            raise ConnectionError("the bus is not connected")
        await self._nc.publish(subject, data)

    async def to_agent(self, replica: str, instance_id: str, frame: bytes) -> None:
        await self._publish(f"{self.prefix}.r.{replica}.down.{instance_id}", frame)

    async def to_session(self, replica: str, instance_id: str, frame: bytes) -> None:
        await self._publish(f"{self.prefix}.r.{replica}.up.{instance_id}", frame)

    async def end_session(self, replica: str, session_id: str, reason: str) -> None:
        await self._publish(f"{self.prefix}.r.{replica}.end.{session_id}", reason.encode())

    async def wake(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self._publish(f"{self.prefix}.wake")

    async def gone(self, instance_id: str) -> None:
        with contextlib.suppress(ConnectionError):
            await self._publish(f"{self.prefix}.gone.{instance_id}", self.replica.encode())

    def dead_replicas(self, known: set[str]) -> set[str]:
        """Replicas among ``known`` that stopped announcing themselves (none until this
        replica has listened long enough to tell)."""
        now = time.time()
        if now - self.started_at < DEAD_AFTER:
            return set()
        return {r for r in known if r != self.replica and now - self.alive.get(r, 0) > DEAD_AFTER}

    # --- receiving -------------------------------------------------------------------------

    async def _announce(self) -> None:
        while True:
            with contextlib.suppress(ConnectionError, Exception):
                await self._publish(f"{self.prefix}.alive", self.replica.encode())
            await asyncio.sleep(ALIVE_INTERVAL)

    @staticmethod
    def _instance(subject: str) -> str:
        """The last token: an instance id, or a session id."""
        return subject.rsplit(".", 1)[1]

    async def _on_down(self, msg: Msg) -> None:
        if self.on_down is not None:
            await self.on_down(self._instance(msg.subject), msg.data)

    async def _on_up(self, msg: Msg) -> None:
        if self.on_up is not None:
            await self.on_up(self._instance(msg.subject), msg.data)

    async def _on_end(self, msg: Msg) -> None:
        if self.on_end is not None:
            await self.on_end(self._instance(msg.subject), msg.data.decode(errors="replace"))

    async def _on_wake(self, _msg: Msg) -> None:
        if self.on_wake is not None:
            self.on_wake()

    async def _on_gone(self, msg: Msg) -> None:
        if self.on_gone is not None and msg.data != self.replica.encode():
            await self.on_gone(self._instance(msg.subject))

    async def _on_alive(self, msg: Msg) -> None:
        self.alive[msg.data.decode(errors="replace")[:64]] = time.time()

    async def _error(self, exc: Exception) -> None:
        if self._announcer is not None:  # before that, start() reports in one line
            log.warning("bus: %s", exc)

    async def _disconnected(self) -> None:
        log.warning("bus: disconnected from NATS; reconnecting")

    async def _reconnected(self) -> None:
        log.info("bus: reconnected to NATS")
