"""Terminal sessions: the relay between an operator's stream and an agent's shell channel.

The server does not buffer session data: operator and agent run the channel state machine
end to end (sequence numbers, acks, credit, replay), and the server forwards frames between
them, records output, and enforces policy, timeouts and the region gate. A session's routing
lives in the database, so a restarted server picks its open sessions up again and both ends
resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from proto import ProtocolError
from proto.ids import new_session_id
from proto.messages import (
    MAX_FRAME_SIZE,
    ChannelAccept,
    ChannelAck,
    ChannelClose,
    ChannelData,
    ChannelOpen,
    ChannelResume,
    Error,
    Message,
    TerminalResize,
    decode,
    encode,
)
from server.config import ServerConfig
from server.errors import ApiError
from server.gateway import AgentLink, Gateway, Link
from server.metrics import FRAME_ERRORS, RELAYED_BYTES
from server.recording import NullRecorder, Recorder
from server.storage import Repository

log = logging.getLogger("porthole.sessions")

CHANNEL_MESSAGES = (ChannelAccept, ChannelData, ChannelAck, ChannelResume, ChannelClose,
                    TerminalResize)
OPEN_TIMEOUT = 15.0
TERMINATE_GRACE = 5.0
SWEEP_INTERVAL = 1.0


@dataclass
class Session:
    id: str
    instance_id: str
    region: str
    channel: int
    owner: str
    run_as: str
    recorder: Recorder | NullRecorder
    idle_timeout: float  # seconds
    max_duration: float | None
    started: float = field(default_factory=time.time)
    last_input: float = field(default_factory=time.time)
    client: web.WebSocketResponse | None = None
    client_out: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    client_gone_since: float | None = field(default_factory=time.time)
    agent_gone_since: float | None = None
    recorded_seq: int = 0
    accepted: asyncio.Future[Message] | None = None
    end_reason: str = ""  # why the server ended it, shown to the operator
    closed: ChannelClose | None = None  # the agent's final close
    closed_at: float | None = None
    terminate_sent_at: float | None = None
    kind: str = "shell"  # "port" and "file" are not recorded; any traffic is activity


class SessionManager:
    def __init__(self, config: ServerConfig, repo: Repository, gateway: Gateway) -> None:
        self.config = config
        self.repo = repo
        self.gateway = gateway
        self.sessions: dict[str, Session] = {}
        self._by_channel: dict[tuple[str, int], Session] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._routes: dict[tuple[str, int], str] = {}
        """(instance, channel) -> the replica homing that session, for our agents' frames."""
        for kind in CHANNEL_MESSAGES:
            gateway.handlers[kind] = self.from_agent
        gateway.disconnect_handlers.append(self.agent_down)
        if gateway.bus is not None:
            gateway.bus.on_up = self._from_bus
            gateway.bus.on_gone = self.agent_down
            gateway.bus.on_end = self._end_from_bus

    async def start(self) -> None:
        """Pick up sessions a previous run of this server left open."""
        for row in await self.repo.list_sessions(active=True):
            if row["replica"] != (self.gateway.replica if self.gateway.bus else row["replica"]):
                continue  # homed by another replica
            if row["status"] != "Active":
                await self.repo.update_session(row["id"], status="Failed", ended_at=time.time(),
                                               end_reason="server restarted while connecting")
                continue
            region = await self._region(row["region"])
            session = self._make(row["id"], row["instance_id"], row["region"], row["channel"],
                                 row["owner"], row["run_as"], region, {}, row["recording"],
                                 row["kind"])
            session.agent_gone_since = time.time()
            session.started = row["started_at"]
            self._add(session)
        self._sweeper = asyncio.create_task(self._sweep())

    def count_by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for session in self.sessions.values():
            if session.closed is None:
                counts[session.kind] = counts.get(session.kind, 0) + 1
        return counts

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for session in list(self.sessions.values()):
            if session.client is not None:
                await session.client.close(code=1012, message=b"server restarting")
            session.recorder.close()

    def _make(self, session_id: str, instance_id: str, region: str, channel: int, owner: str,
              run_as: str, region_row: dict[str, Any], meta: dict[str, Any],
              recording: str = "", kind: str = "shell") -> Session:
        recorder: Recorder | NullRecorder = NullRecorder()
        if kind == "shell":
            path = self.config.path(recording or f"recordings/{session_id}.cast")
            recorder = Recorder(path, int(meta.get("cols", 80)), int(meta.get("rows", 24)),
                                meta, self.config.record_input)
        max_minutes = region_row.get("max_session_duration")
        return Session(session_id, instance_id, region, channel, owner, run_as, recorder,
                       float(region_row.get("idle_timeout") or 20) * 60,
                       float(max_minutes) * 60 if max_minutes else None, kind=kind)

    def _add(self, session: Session) -> None:
        self.sessions[session.id] = session
        self._by_channel[(session.instance_id, session.channel)] = session

    def _remove(self, session: Session) -> None:
        self.sessions.pop(session.id, None)
        self._by_channel.pop((session.instance_id, session.channel), None)
        session.recorder.close()

    async def _region(self, name: str) -> dict[str, Any]:
        rows = await self.repo.regions(name)
        return rows[0] if rows else {}

    # --- opening ------------------------------------------------------------------------

    async def check_open(self, instance: dict[str, Any]) -> tuple[Link, dict[str, Any]]:
        """Refuse a new session into a disabled region or to an agent that is away."""
        region = await self._region(instance["region"])
        if not region.get("session_manager_enabled", False):
            raise ApiError(
                403, "SessionManager.Disabled",
                f"Session Manager is disabled in region {instance['region']}; enable it with "
                f"`porthole settings session-manager --region {instance['region']} --enable`",
            )
        link = await self.gateway.route(instance["id"])
        if link is None:
            raise ApiError(409, "InstanceNotConnected",
                           f"the agent of {instance['id']} is not connected; check "
                           "`porthole instances` and the agent's service")
        return link, region

    async def open(self, owner: str, instance: dict[str, Any], kind: str,
                   params: dict[str, Any], reason: str, source_ip: str) -> Session:
        """Open a channel of ``kind`` on the instance: "shell" (params: user, command, cols,
        rows, term), "port" (host, port) or "file" (op, path, user, mode, mtime)."""
        link, region = await self.check_open(instance)
        channel = secrets.randbelow(2**31 - 1) + 1
        while (instance["id"], channel) in self._by_channel:
            channel = secrets.randbelow(2**31 - 1) + 1
        session_id = new_session_id()
        run_as = str(params.get("user") or "")
        meta = {**params, "title": f"{owner} on {instance['id']} as {run_as or 'default user'}"}
        session = self._make(session_id, instance["id"], instance["region"], channel, owner,
                             run_as, region, meta, kind=kind)
        session.accepted = asyncio.get_running_loop().create_future()
        self._add(session)
        await self.repo.create_session(
            id=session_id, instance_id=instance["id"], region=instance["region"],
            channel=channel, owner=owner, run_as=run_as,
            command=str(params.get("command") or params.get("path") or ""), reason=reason,
            source_ip=source_ip, status="Connecting", kind=kind, replica=self.gateway.replica,
            port_number=params.get("port"), remote_host=str(params.get("host") or ""),
            recording=session.recorder.name(self.config.data_dir),
        )
        try:  # no credit yet: the agent sends nothing until the operator's end resumes
            await link.send(ChannelOpen(channel, kind, 0, {"session_id": session_id, **params}))
            answer = await asyncio.wait_for(session.accepted, OPEN_TIMEOUT)
        except (TimeoutError, ConnectionError, RuntimeError) as exc:
            answer = ChannelClose(channel, f"the agent did not answer ({str(exc) or 'timeout'})")
        if isinstance(answer, ChannelClose):
            self._remove(session)
            await self.repo.update_session(session_id, status="Failed", ended_at=time.time(),
                                           end_reason=answer.reason)
            raise ApiError(400, "SessionRefused",
                           f"the agent refused the session: {answer.reason}")
        await self.repo.update_session(session_id, status="Active")
        log.info("session %s: %s opened a %s channel on %s", session_id, owner, kind,
                 instance["id"])
        return session

    # --- agent side ---------------------------------------------------------------------

    async def from_agent(self, link: AgentLink, message: Message, raw: bytes) -> None:
        channel: int = message.channel  # type: ignore[attr-defined]
        session = self._by_channel.get((link.instance_id, channel))
        if session is None:
            home = await self._home(link.instance_id, channel)
            if home is not None and self.gateway.bus is not None:
                with contextlib.suppress(ConnectionError):
                    await self.gateway.bus.to_session(home, link.instance_id, raw)
            elif not isinstance(message, ChannelClose):
                await link.send(ChannelClose(channel, "no such session on the server"))
            return
        await self._relay(session, message, raw)

    async def _home(self, instance_id: str, channel: int) -> str | None:
        """The replica homing the session of one of our agents' channels, if another."""
        if self.gateway.bus is None:
            return None
        key = (instance_id, channel)
        if key not in self._routes:
            row = await self.repo.session_by_channel(instance_id, channel)
            if row is None or row["replica"] == self.gateway.replica:
                return None
            if len(self._routes) > 100_000:
                self._routes.clear()
            self._routes[key] = row["replica"]
        return self._routes[key]

    async def _from_bus(self, instance_id: str, raw: bytes) -> None:
        """A frame from an agent held by another replica, for a session homed here."""
        try:
            message = decode(raw)
        except ProtocolError as exc:
            log.warning("bus: undecodable frame from %s: %s", instance_id, exc)
            return
        if not isinstance(message, CHANNEL_MESSAGES):
            return
        session = self._by_channel.get((instance_id, message.channel))
        if session is not None:
            await self._relay(session, message, raw)
        elif not isinstance(message, ChannelClose):
            await self._to_instance(instance_id, encode(
                ChannelClose(message.channel, "no such session on the server")))

    async def _relay(self, session: Session, message: Message, raw: bytes) -> None:
        session.agent_gone_since = None
        if isinstance(message, ChannelAccept):
            if session.accepted is not None and not session.accepted.done():
                session.accepted.set_result(message)
            return
        if isinstance(message, ChannelClose) and session.accepted is not None \
                and not session.accepted.done():
            session.accepted.set_result(message)
            return
        if isinstance(message, ChannelData) and message.seq > session.recorded_seq:
            RELAYED_BYTES.labels("to_operator").inc(len(message.data))
            session.recorded_seq = message.seq
            session.recorder.output(message.data)
            if session.kind != "shell":
                session.last_input = time.time()
        if isinstance(message, ChannelClose):
            if session.end_reason:
                raw = encode(ChannelClose(message.channel, session.end_reason,
                                          message.exit_code, message.last_seq, message.detail))
            if session.closed is None:  # a replayed close is forwarded, not ended again
                await self._ended(session, message)
                session.closed = message
        self._to_client(session, raw)

    async def _ended(self, session: Session, close: ChannelClose) -> None:
        session.closed_at = time.time()
        reason = session.end_reason or close.reason
        await self.repo.update_session(session.id, status="Terminated", ended_at=time.time(),
                                       exit_code=close.exit_code, end_reason=reason)
        await self.repo.audit(principal=f"user/{session.owner}", action="SessionEnd",
                              resource=self._arn(session), outcome="Allowed",
                              detail=json.dumps({"SessionId": session.id,
                                                 "ExitCode": close.exit_code,
                                                 "Reason": reason}))
        log.info("session %s ended: %s (exit %s)", session.id, reason, close.exit_code)

    def _arn(self, session: Session) -> str:
        return self.gateway.instance_arn(session.region, session.instance_id)

    def _to_client(self, session: Session, raw: bytes) -> None:
        if session.client is not None:
            session.client_out.put_nowait(raw)  # bounded: the agent sends within its credit

    async def agent_down(self, instance_id: str) -> None:
        self.gateway.forget_route(instance_id)
        for key in [k for k in self._routes if k[0] == instance_id]:
            del self._routes[key]
        now = time.time()
        for session in self.sessions.values():
            if session.instance_id == instance_id and session.agent_gone_since is None:
                session.agent_gone_since = now

    async def _to_agent(self, session: Session, raw: bytes) -> None:
        await self._to_instance(session.instance_id, raw)

    async def _to_instance(self, instance_id: str, raw: bytes) -> None:
        link = await self.gateway.route(instance_id)
        if link is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await link.send_raw(raw)

    # --- operator side ------------------------------------------------------------------

    async def stream(self, request: web.Request, session: Session) -> web.WebSocketResponse:
        """The operator's WebSocket for one session (replaces an earlier one)."""
        ws = web.WebSocketResponse(heartbeat=self.config.heartbeat_interval, compress=False,
                                   max_msg_size=MAX_FRAME_SIZE)
        await ws.prepare(request)
        if session.client is not None:
            await session.client.close(code=1008, message=b"replaced by a newer connection")
        session.client = ws
        session.client_out = queue = asyncio.Queue()
        session.client_gone_since = None
        writer = asyncio.create_task(self._client_writer(ws, queue))
        if session.closed is not None:  # ended while the operator was away
            queue.put_nowait(encode(session.closed))
        try:
            async for msg in ws:
                if msg.type != WSMsgType.BINARY:
                    raise ProtocolError("expected binary frames", "MalformedFrame")
                message = decode(msg.data)
                if not isinstance(message, CHANNEL_MESSAGES) or \
                        message.channel != session.channel:
                    raise ProtocolError(f"unexpected {message.TYPE} on session stream",
                                        "UnexpectedMessage")
                await self._from_client(session, message, msg.data)
        except ProtocolError as exc:
            log.warning("session %s: operator protocol error: %s", session.id, exc)
            FRAME_ERRORS.labels("operator", exc.code).inc()
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_bytes(encode(Error(exc.code, str(exc))))
            await ws.close(code=1002, message=exc.code.encode())
        finally:
            writer.cancel()
            if session.client is ws:
                session.client = None
                session.client_gone_since = time.time()
        return ws

    async def _client_writer(self, ws: web.WebSocketResponse, queue: asyncio.Queue[bytes]
                             ) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            while True:
                await ws.send_bytes(await queue.get())

    async def _from_client(self, session: Session, message: Message, raw: bytes) -> None:
        if isinstance(message, ChannelData):
            RELAYED_BYTES.labels("to_instance").inc(len(message.data))
            session.last_input = time.time()
            session.recorder.input(message.data)
        elif isinstance(message, TerminalResize):
            session.recorder.resize(message.cols, message.rows)
        elif isinstance(message, ChannelAck) and session.closed is not None \
                and message.ack >= session.closed.last_seq:
            self._remove(session)  # the operator has everything; forward the final ack
        elif isinstance(message, ChannelClose) and not session.end_reason:
            session.end_reason = message.reason or "closed by the operator"
            session.terminate_sent_at = time.time()
        await self._to_agent(session, raw)

    # --- ending -------------------------------------------------------------------------

    async def terminate(self, session: Session, reason: str) -> None:
        """End a session for a reason the operator will read."""
        if session.closed is not None:
            return
        session.end_reason = reason
        session.terminate_sent_at = time.time()
        await self._to_agent(session, encode(ChannelClose(session.channel, reason)))

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            for session in list(self.sessions.values()):
                try:
                    await self._check(session, time.time())
                except Exception:
                    log.exception("session %s: sweep failed", session.id)

    async def terminate_anywhere(self, row: dict[str, Any], reason: str) -> bool:
        """End an open session wherever it is homed; False if it is not open."""
        session = self.sessions.get(row["id"])
        if session is not None:
            if session.closed is not None:
                return False
            await self.terminate(session, reason)
            return True
        bus = self.gateway.bus
        if bus is None or row["status"] != "Active" or not self.gateway.live_other(row["replica"]):
            return False
        await bus.end_session(row["replica"], row["id"], reason)
        return True

    async def _end_from_bus(self, session_id: str, reason: str) -> None:
        session = self.sessions.get(session_id)
        if session is not None:
            await self.terminate(session, reason[:512])

    async def _check(self, session: Session, now: float) -> None:
        grace = self.config.session_resume_timeout
        if session.closed is not None:
            if session.closed_at and now - session.closed_at > grace:
                self._remove(session)  # the operator never came back for the rest
            return
        if session.accepted is not None and not session.accepted.done():
            return
        if session.terminate_sent_at is not None:
            if now - session.terminate_sent_at > TERMINATE_GRACE:
                await self._abandon(session, session.end_reason)
            return
        if session.agent_gone_since is None and self.gateway.bus is not None \
                and await self.gateway.route(session.instance_id) is None:
            session.agent_gone_since = now  # held by no live replica
        if session.agent_gone_since is not None and now - session.agent_gone_since > grace:
            await self._abandon(session, f"the agent was unreachable for {grace:.0f} s")
        elif session.client_gone_since is not None and now - session.client_gone_since > grace:
            await self.terminate(session, f"the operator was disconnected for {grace:.0f} s")
        elif now - session.last_input > session.idle_timeout:
            await self.terminate(
                session, f"idle for {session.idle_timeout / 60:.0f} min (the idle timeout of "
                f"region {session.region})")
        elif session.max_duration and now - session.started > session.max_duration:
            await self.terminate(
                session, f"the maximum session duration of {session.max_duration / 60:.0f} min "
                f"in region {session.region} was reached")

    async def _abandon(self, session: Session, reason: str) -> None:
        """The agent cannot confirm the end: end the session on the server's word."""
        close = ChannelClose(session.channel, reason, None, 0)
        session.end_reason = reason
        await self._ended(session, close)
        session.closed = close
        self._to_client(session, encode(close))
